import { V1_SQL } from './v1.sql.js';
import { V2_SQL } from './progress.sql.js';

/** One registry schema version: applied in its own transaction by migrate(). */
export interface RegistryMigration {
  version: number;
  description: string;
  sql: string;
}

/** Every registry version, in order. Append; never edit a released one. */
export const MIGRATIONS: readonly RegistryMigration[] = [
  { version: 1, description: 'job registry: pgbg.job, pgbg.job_result, pgbg.jobs, functions, RLS', sql: V1_SQL },
  { version: 2, description: 'progress of running jobs in pgbg.jobs (wait event, phase, percent done)', sql: V2_SQL },
];

/** The registry version this build of pgbg-proxy creates and expects. */
export const REGISTRY_VERSION: number = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** Schema that holds the registry. */
export const REGISTRY_SCHEMA = 'pgbg';

/** NOTIFY channel on which every job state change is announced as {"id":N,"state":"..."}. */
export const JOBS_CHANNEL = 'pgbg_jobs';

/** Role whose members see and manage every job. */
export const ADMIN_ROLE = 'pgbg_admin';

export const TERMINAL_STATES = ['succeeded', 'failed', 'cancelled', 'lost'] as const;
export const JOB_STATES = ['queued', 'running', ...TERMINAL_STATES] as const;
export type JobState = (typeof JOB_STATES)[number];
