import type { JobSubmitter, SubmitContext, SubmittedJob, SupervisedWorker, WatchedJob } from '../jobs/submitter.js';
import type { SessionChannel } from '../upstream/channel.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'lost']);

/**
 * How often a running job that may come back for a retry is looked at: soon after its launch,
 * when transient failures (lock timeouts, deadlocks, serialization failures) mostly happen, then
 * less and less often, so a long job costs a look every few seconds at most.
 */
const RUNNING_LOOK_FIRST_MS = 100;
const RUNNING_LOOK_MAX_MS = 4000;

interface Watch extends WatchedJob {
  state: string;
  nextLookAt: number;
  runningLookMs: number;
}

/**
 * The jobs one session is responsible for (DESIGN.md decision 4): supervised workers whose
 * outcome only this session can read, and watched jobs it must launch, as the client's role,
 * when they are admitted: queued ones, and running transactional ones with attempts left, which
 * come back to the queue when an attempt fails with a transient error.
 */
export class SessionJobs {
  private readonly supervised = new Map<bigint, SupervisedWorker>();
  private readonly watched = new Map<bigint, Watch>();

  constructor(private readonly submitter: JobSubmitter) {}

  track(job: SubmittedJob, rule: string | null, onDisconnect: 'keep' | 'cancel'): void {
    if (job.existing) return; // an idempotency key answered another session's job
    if (job.supervised) this.supervised.set(job.jobId, job.supervised);
    const mayRetry = job.transactional && job.maxAttempts > 1;
    if (job.state === 'queued' || (job.state === 'running' && mayRetry)) {
      this.watched.set(job.jobId, {
        jobId: job.jobId,
        rule,
        mayRetry,
        onDisconnect,
        state: job.state,
        nextLookAt: job.state === 'queued' ? 0 : Date.now() + RUNNING_LOOK_FIRST_MS,
        runningLookMs: RUNNING_LOOK_FIRST_MS * 2,
      });
    }
  }

  /** Anything left to launch, retry or supervise: the session must outlive its client for it. */
  get pending(): boolean {
    return this.supervised.size > 0 || this.watched.size > 0;
  }

  /**
   * Work that cannot end without this session: supervised workers and queued jobs. A running job
   * that might come back for a retry does not hold up a shutdown; if it does, it ends 'lost'.
   */
  get blocking(): boolean {
    return this.supervised.size > 0 || [...this.watched.values()].some((w) => w.state === 'queued');
  }

  get ids(): string[] {
    return [...new Set([...this.supervised.keys(), ...this.watched.keys()])].map(String);
  }

  /** One look at everything due: launches admitted jobs, reads finished supervised workers. */
  async step(channel: SessionChannel, ctx: SubmitContext, pollMs: number): Promise<void> {
    const now = Date.now();
    for (const w of [...this.watched.values()]) {
      if (w.nextLookAt > now) continue;
      const out = await this.submitter.launchQueued(channel, w, ctx);
      if (!out) {
        w.nextLookAt = Date.now() + pollMs;
        continue;
      }
      w.state = out.state;
      if (out.supervised) this.supervised.set(w.jobId, out.supervised);
      if (TERMINAL.has(out.state) || out.supervised || (out.state === 'running' && !w.mayRetry)) {
        this.watched.delete(w.jobId);
        continue;
      }
      if (out.state === 'running') {
        w.nextLookAt = Date.now() + w.runningLookMs;
        w.runningLookMs = Math.min(w.runningLookMs * 2, RUNNING_LOOK_MAX_MS);
      } else {
        // Queued again (a retry waiting for its backoff) or still waiting for admission.
        w.runningLookMs = RUNNING_LOOK_FIRST_MS;
        // Not due yet: sleep until it is, but look at least once a minute (timers cannot wait
        // beyond 2^31 ms, and a far-off not_before may be cancelled or rescheduled meanwhile).
        w.nextLookAt = Date.now() + Math.min(out.dueInMs ?? pollMs, 60_000);
      }
    }
    for (const worker of [...this.supervised.values()]) {
      if (await this.submitter.poll(channel, worker)) this.supervised.delete(worker.jobId);
    }
  }

  /** Milliseconds until the next look is due; null when nothing is left to look at. */
  nextDelay(pollMs: number): number | null {
    if (!this.pending) return null;
    let soonest = this.supervised.size > 0 ? pollMs : Infinity;
    const now = Date.now();
    for (const w of this.watched.values()) soonest = Math.min(soonest, Math.max(0, w.nextLookAt - now));
    return Math.max(soonest, 5);
  }

  /** Disconnect policy "cancel": the client went away, so its queued jobs of such rules end cancelled. */
  async cancelOnDisconnect(channel: SessionChannel): Promise<void> {
    for (const w of [...this.watched.values()]) {
      if (w.onDisconnect !== 'cancel' || w.state !== 'queued') continue;
      await this.submitter.cancel(channel, w.jobId);
      this.watched.delete(w.jobId);
    }
  }

  clear(): void {
    this.supervised.clear();
    this.watched.clear();
  }
}
