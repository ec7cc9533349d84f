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
  state: string;
  /** Attempts allowed (1 = no retry). */
  maxAttempts: number;
  transactional: boolean;
  /** An idempotency key named a job already queued or running: this is that job, watched elsewhere. */
  existing: boolean;
  /** Present when the launching session must read the worker's result itself (decision 4). */
  supervised?: SupervisedWorker;
}

/** A job the submitting session keeps an eye on: queued, or running and able to come back queued for a retry. */
export interface WatchedJob {
  jobId: bigint;
  rule: string | null;
  /** A transactional job with attempts left: a failed attempt puts it back in the queue. */
  mayRetry: boolean;
  onDisconnect: 'keep' | 'cancel';
}

/** Where a watched job stands after one look (and maybe a launch). */
export interface LaunchOutcome {
  state: string;
  /** Set when this look launched a non-transactional job that this session must supervise. */
  supervised?: SupervisedWorker;
  /** Set when the job is queued but not due yet: milliseconds until it may start. */
  dueInMs?: number;
}

export interface SupervisedWorker {
  jobId: bigint;
  pid: number;
  cookie: string | null;
  apiVersion: 1 | 2;
}

export interface JobSubmitter {
  /** Checks the statement upstream and returns its parameter types (Parse-time validation). */
  describe(channel: SessionChannel, plan: JobPlan, declaredTypes: number[]): Promise<number[]>;
  /** Records, launches and returns the job; throws PgError for anything the client must see now. */
  submit(channel: SessionChannel, plan: JobPlan, params: BoundParams | null, ctx: SubmitContext): Promise<SubmittedJob>;
  /**
   * Looks at a job this session watches and launches it if it is queued and admitted now
   * (limits, queue order, window, retry backoff); null if the look itself failed.
   */
  launchQueued(channel: SessionChannel, job: WatchedJob, ctx: SubmitContext): Promise<LaunchOutcome | null>;
  /** Cancels a queued job (disconnect policy "cancel"). */
  cancel(channel: SessionChannel, jobId: bigint): Promise<void>;
  /** Polls a supervised worker; true once its outcome is recorded. */
  poll(channel: SessionChannel, worker: SupervisedWorker): Promise<boolean>;
}

export interface SubmitContext {
  sessionId: string;
  user: string;
  database: string;
  applicationName: string;
}
