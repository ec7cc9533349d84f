import type { Logger } from 'pino';
import type { SessionChannel } from '../upstream/channel.js';
import type { SupervisedWorker } from './submitter.js';
import { runStatement, serverError } from './upstream-sql.js';

/**
 * One look at a non-transactional job's worker from the session that launched it (DESIGN.md
 * decision 4): only that session can read the worker's result, and it must hold no transaction
 * while the worker runs (CREATE INDEX CONCURRENTLY waits for every older transaction), so each
 * look is one short statement that never blocks. Which pg_background functions serve the handle
 * (1.3's v1 API, 1.6-1.10's `_v2` names, 2.x's unsuffixed names) is decided in the registry by
 * what the database has (pgbg.worker_stopped / pgbg.worker_result, sql/registry/005), so this
 * code neither names them nor depends on the session's search_path.
 * Returns true once the outcome is recorded.
 */
export async function superviseStep(channel: SessionChannel, worker: SupervisedWorker, log: Logger): Promise<boolean> {
  const handle = [String(worker.apiVersion), String(worker.pid), worker.cookie];
  const done = await runStatement(channel, 'SELECT pgbg.worker_stopped($1::pg_catalog.int4, $2::pg_catalog.int4, $3::pg_catalog.int8)', handle);
  const waitError = serverError(done);
  if (waitError) return record(channel, worker, log, 'lost', null, waitError.code, `cannot supervise the worker: ${waitError.message}`);
  if (done.rows[0]?.[0] !== 't') return false;
  const result = await runStatement(channel, 'SELECT pgbg.worker_result($1::pg_catalog.int4, $2::pg_catalog.int4, $3::pg_catalog.int8)', handle);
  const err = serverError(result);
  if (err) return record(channel, worker, log, 'failed', null, err.code, err.message);
  return record(channel, worker, log, 'succeeded', result.rows[0]?.[0] ?? null, null, null);
}

async function record(
  channel: SessionChannel,
  worker: SupervisedWorker,
  log: Logger,
  state: string,
  tag: string | null,
  sqlstate: string | null,
  error: string | null,
): Promise<boolean> {
  const r = await runStatement(channel, 'SELECT pgbg.finish_supervised($1::int8, $2, $3, $4, $5)', [String(worker.jobId), state, tag, sqlstate, error]);
  const err = serverError(r);
  if (err) {
    log.error({ event: 'job_record_failed', job_id: String(worker.jobId), err: err.message }, 'could not record the outcome of a supervised job');
    return true; // reconciliation will mark it; polling a handle that is gone would only repeat this
  }
  log.info({ event: 'job_finished', job_id: String(worker.jobId), state, sqlstate, supervised: true }, 'job finished');
  return true;
}
