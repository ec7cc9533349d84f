import type { SessionChannel } from '../upstream/channel.js';
import type { JobPlan } from './plan.js';

/** Parameter values exactly as the client bound them. */
export interface BoundParams {
  types: number[];
  formats: number[];
  values: (Buffer | null)[];
}

export interface SubmittedJob {
  jobId: bigint;
  /** 'queued' for a new job; an idempotency key may answer an existing job in any active state. */
  state: string;
  /** An idempotency key named a job already queued or running: this is that job. */
  existing: boolean;
  /** The login's launcher is alive (or starting); false when it could not be started now. */
  launcherAlive: boolean;
  /**
   * A new job's row holds the settings its session had at submission: while the session runs
   * nothing else, a later submission may name it instead of reading them again (absent for an
   * existing job, whose settings are another submission's).
   */
  settings?: SettingsToken;
}

/** A job whose recorded settings were the session's, and the carried custom settings they cover. */
export interface SettingsToken {
  jobId: bigint;
  /** jobs.carrySettings when the job was recorded: a changed list means a fresh read. */
  carry: string;
}

/**
 * The proxy's side of jobs: it checks and records them on the client's own session and
 * answers; the database's launcher does the rest (sql/registry/006-launcher.sql).
 */
export interface JobSubmitter {
  /** Checks the statement upstream and returns its parameter types (Parse-time validation). */
  describe(channel: SessionChannel, plan: JobPlan, declaredTypes: number[]): Promise<number[]>;
  /** Records the job (its row committed) and returns it; throws PgError for anything the client must see now. */
  submit(channel: SessionChannel, plan: JobPlan, params: BoundParams | null, ctx: SubmitContext): Promise<SubmittedJob>;
  /** Cancels a job if it is still queued (disconnect policy "cancel"). */
  cancelQueued(channel: SessionChannel, jobId: bigint): Promise<void>;
  /**
   * Starts the launcher of the session's login if it has jobs waiting and none is alive (after
   * a server restart or a terminated launcher). Quiet: a database without the registry, a
   * standby, a role without pg_background rights simply start nothing.
   */
  ensureLauncher(channel: SessionChannel): Promise<void>;
  /**
   * After a submission whose launcher could not start (no free worker slot): tries again to
   * start it; true once the login's launcher is alive or it has nothing left to launch.
   */
  retryLauncher(channel: SessionChannel): Promise<boolean>;
}

export interface SubmitContext {
  sessionId: string;
  user: string;
  database: string;
  applicationName: string;
  /**
   * The session's latest new job, when the session has relayed nothing from its client since:
   * nothing can have changed its settings, so they are copied from that job's row
   * (pgbg.enqueue's settings_from, which the server checks again).
   */
  settingsFrom?: SettingsToken;
}
