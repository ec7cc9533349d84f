import { readFileSync } from 'node:fs';

/**
 * The registry's SQL lives in numbered files under sql/registry/ at the package root, so a
 * reader can open, lint and run them with psql (as graphile-worker keeps its migrations).
 * This module sits three levels below the root both as src/jobs/registry/index.ts and as
 * dist/jobs/registry/index.js, so one relative path finds them from either.
 */
const SQL_DIR = new URL('../../../sql/registry/', import.meta.url);

function migrationSql(file: string): string {
  return readFileSync(new URL(file, SQL_DIR), 'utf8');
}

/** One registry schema version: applied in its own transaction by migrate(). */
export interface RegistryMigration {
  version: number;
  description: string;
  /** File under sql/registry/ that holds this version's SQL. */
  file: string;
  sql: string;
}

function migration(version: number, file: string, description: string): RegistryMigration {
  return { version, file, description, sql: migrationSql(file) };
}

/**
 * Every registry version, in ascending order. Append; never edit a released one. Versions may
 * have gaps (numbers are reserved per change); migrate() applies each one above the installed
 * version, in this order.
 */
export const MIGRATIONS: readonly RegistryMigration[] = [
  migration(1, '001-registry.sql', 'job registry: pgbg.job, pgbg.job_result, pgbg.jobs, functions, RLS'),
  migration(2, '002-progress.sql', 'progress of running jobs in pgbg.jobs (wait event, phase, percent done)'),
  migration(3, '003-privilege.sql', 'no privilege escape: verified worker pids, per-role notification channels, private per-role counts, no direct INSERT'),
  migration(4, '004-fair-queue.sql', 'fair queue: round-robin between roles, per-role queue bound, options validated at submission, permanent launch failures end the job'),
  migration(5, '005-pg-background-api.sql', 'pg_background 1.3 (v1), 1.6-1.10 (_v2 names) and 2.x (unsuffixed handle API), chosen by which functions exist'),
  migration(6, '006-launcher.sql', 'the database owns a job once its row commits: a launcher per (database, login) launches, supervises and recovers; submission captures session settings'),
  migration(7, '007-job-path-cost.sql', 'the job path costs less: helpers keep their plans (PL/pgSQL or inlinable SQL), one launcher look per submission, launches committed in batches'),
  migration(8, '008-stopped-at-launch.sql', 'a worker that had stopped when its launch returned (pg_background then returns a pid that names no process): a supervised job is settled at once with its real outcome; a transactional one never ran and is queued again while it has attempts left'),
  migration(9, '009-lean-worker.sql', 'a job\'s worker does less: the outcome path writes out the helpers it called (each compiled once per worker process, that is once per job)'),
  migration(10, '010-lean-submission.sql', 'a submission looks at less: the launch right checked once and its function found alone, the launcher probed on its own lock instead of pg_lock_status, the session\'s settings copied from its previous job (settings_from) when nothing ran since'),
  migration(11, '011-admission-plans.sql', 'admission keeps its plans: its SQL helpers (a SET clause makes PostgreSQL 15 plan them on every call) become PL/pgSQL with the same bodies'),
];

/** The registry version this build of pgbg-proxy creates and expects. */
export const REGISTRY_VERSION: number = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** Schema that holds the registry. */
export const REGISTRY_SCHEMA = 'pgbg';

/**
 * Prefix of the per-role NOTIFY channels on which job changes are announced as {"id":N}.
 * The full name is secret-derived: a role learns its own with `SELECT pgbg.jobs_channel()`.
 * A notification is only a hint to re-read pgbg.jobs, never a source of truth.
 */
export const JOBS_CHANNEL_PREFIX = 'pgbg_jobs_';

/** Role whose members see and manage every job. */
export const ADMIN_ROLE = 'pgbg_admin';

export const TERMINAL_STATES = ['succeeded', 'failed', 'cancelled', 'lost'] as const;
export const JOB_STATES = ['queued', 'running', ...TERMINAL_STATES] as const;
export type JobState = (typeof JOB_STATES)[number];
