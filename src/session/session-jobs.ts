import type { JobSubmitter, SubmittedJob } from '../jobs/submitter.js';
import type { SessionChannel } from '../upstream/channel.js';

/**
 * How many "cancel on disconnect" jobs one session remembers: a client that submits more before
 * it leaves has its oldest ones forgotten (they run; the bound keeps a session's memory small).
 */
const REMEMBERED_MAX = 10_000;

/**
 * What a session still owes its jobs once its client has gone. Since registry version 6 the
 * database launches, supervises and recovers every job (DESIGN.md decision 8), so the only duty
 * left is a rule's disconnect policy "cancel": the jobs this client submitted under such a rule
 * and that are still queued when it leaves end 'cancelled'. The session outlives its client
 * (adopted) just long enough to ask for that.
 */
export class SessionJobs {
  private readonly cancelOnLeave = new Set<bigint>();

  constructor(private readonly submitter: JobSubmitter) {}

  track(job: SubmittedJob, onDisconnect: 'keep' | 'cancel'): void {
    if (job.existing || onDisconnect !== 'cancel' || job.state !== 'queued') return;
    if (this.cancelOnLeave.size >= REMEMBERED_MAX) {
      const oldest = this.cancelOnLeave.values().next().value;
      if (oldest !== undefined) this.cancelOnLeave.delete(oldest);
    }
    this.cancelOnLeave.add(job.jobId);
  }

  /** Something to do once the client has gone: the session must outlive it for that. */
  get pending(): boolean {
    return this.cancelOnLeave.size > 0;
  }

  get ids(): string[] {
    return [...this.cancelOnLeave].map(String);
  }

  /** Disconnect policy "cancel": the client went away, so its still-queued jobs of such rules end cancelled. */
  async cancelOnDisconnect(channel: SessionChannel): Promise<void> {
    for (const id of [...this.cancelOnLeave]) {
      await this.submitter.cancelQueued(channel, id);
      this.cancelOnLeave.delete(id);
    }
  }

  clear(): void {
    this.cancelOnLeave.clear();
  }
}
