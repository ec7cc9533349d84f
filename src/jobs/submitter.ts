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
  /** Present when the launching session must read the worker's result itself (decision 4). */
  supervised?: SupervisedWorker;
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
   * Tries to launch a job this session left queued (the in-flight limit was reached); resolves
   * with the job once it is no longer queued (launched, or ended meanwhile), or null.
   */
  launchQueued(channel: SessionChannel, jobId: bigint): Promise<SubmittedJob | null>;
  /** Polls a supervised worker; true once its outcome is recorded. */
  poll(channel: SessionChannel, worker: SupervisedWorker): Promise<boolean>;
}

export interface SubmitContext {
  sessionId: string;
  user: string;
  database: string;
  applicationName: string;
}
