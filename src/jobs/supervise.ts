import type { Logger } from 'pino';
import type { SessionChannel } from '../upstream/channel.js';
import type { SupervisedWorker } from './submitter.js';
import { runOrThrow, runStatement, serverError } from './upstream-sql.js';

/**
 * One look at a non-transactional job's worker from the session that launched it (DESIGN.md
 * decision 4): only that session can read the worker's result, and it must hold no transaction
 * while the worker runs (CREATE INDEX CONCURRENTLY waits for every older transaction).
 * Returns true once the outcome is recorded.
 */
export async function superviseStep(channel: SessionChannel, worker: SupervisedWorker, log: Logger): Promise<boolean> {
  const pid = String(worker.pid);
  if (worker.apiVersion === 2) {
    const done = await runStatement(channel, 'SELECT pg_background_wait_v2_timeout($1::int4, $2::int8, 0)', [pid, worker.cookie]);
    const waitError = serverError(done);
    if (waitError) return record(channel, worker, log, 'lost', null, waitError.code, `cannot supervise the worker: ${waitError.message}`);
    if (done.rows[0]?.[0] !== 't') return false;
  } else {
    const alive = await runOrThrow(channel, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int4 AND backend_type = 'pg_background'", [pid]);
    if (alive.rows[0]?.[0] !== '0') return false;
  }
  const sql =
    worker.apiVersion === 2
      ? 'SELECT * FROM pg_background_result_v2($1::int4, $2::int8) AS (command_tag text)'
      : 'SELECT * FROM pg_background_result($1::int4) AS (command_tag text)';
  const result = await runStatement(channel, sql, worker.apiVersion === 2 ? [pid, worker.cookie] : [pid]);
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
