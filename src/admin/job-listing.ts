import type { RegistryConnection } from '../jobs/registry-connection.js';
import { columns, type Cell, type ResultSet } from './result-set.js';

/** How many finished jobs SHOW JOBS lists after the active ones (most recent first). */
export const FINISHED_JOBS_SHOWN = 50;

/** Longest statement text SHOW JOBS prints; longer ones end in an ellipsis. */
export const STATEMENT_WIDTH = 80;

export const JOB_COLUMNS = columns(
  'id:int8',
  'state',
  'user',
  'database',
  'rule',
  'kind',
  'priority:int4',
  'queue_position:int4',
  'not_before',
  'attempts:int4',
  'submitted_at',
  'started_at',
  'elapsed',
  'worker_pid:int4',
  'wait_event',
  'phase',
  'percent_done:float8',
  'statement',
  'error',
  'waiting_for_launcher:bool',
);

/**
 * Active jobs (queued, running) and the last finished ones. Reads pgbg.job itself rather than
 * the pgbg.jobs view because the worker's identity (pid + backend_start) is needed to join
 * pg_stat_activity and the progress views without mistaking a reused pid for the worker.
 * Values come back as text (or numbers) so the registry session's types need no decoding here.
 * Without pg_read_all_stats the registry role sees no wait event or progress of other roles'
 * workers; those columns are then NULL.
 */
export const SHOW_JOBS_SQL = `
WITH chosen AS (
  (SELECT * FROM pgbg.job WHERE state IN ('queued', 'running'))
  UNION ALL
  (SELECT * FROM pgbg.job WHERE state NOT IN ('queued', 'running')
    ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT ${FINISHED_JOBS_SHOWN})
)
SELECT j.id::text AS id,
       j.state,
       j.owner::text AS "user",
       j.database::text AS database,
       j.rule,
       j.kind,
       j.priority,
       CASE WHEN j.state = 'queued' THEN pgbg.queue_position(j.id) END AS queue_position,
       CASE WHEN j.state = 'queued' THEN j.not_before::text END AS not_before,
       j.attempts,
       j.submitted_at::text AS submitted_at,
       j.started_at::text AS started_at,
       pg_catalog.date_trunc('millisecond', COALESCE(j.finished_at, pg_catalog.clock_timestamp()) - j.started_at)::text AS elapsed,
       j.worker_pid,
       CASE WHEN a.wait_event IS NOT NULL THEN a.wait_event_type || ':' || a.wait_event END AS wait_event,
       p.phase,
       pg_catalog.round(p.percent, 1)::float8 AS percent_done,
       CASE WHEN pg_catalog.length(s.flat) > ${STATEMENT_WIDTH} THEN pg_catalog.left(s.flat, ${STATEMENT_WIDTH - 1}) || '…' ELSE s.flat END AS statement,
       CASE WHEN j.state = 'lost' THEN j.lost_reason
            WHEN j.error IS NOT NULL THEN COALESCE(j.sqlstate || ': ', '') || j.error END AS error,
       CASE WHEN j.state = 'queued' THEN NOT pgbg._launcher_alive(j.login) END AS waiting_for_launcher
  FROM chosen j
  CROSS JOIN LATERAL (SELECT pg_catalog.regexp_replace(pg_catalog.btrim(j.statement), '\\s+', ' ', 'g') AS flat) s
  LEFT JOIN pg_catalog.pg_stat_activity a
         ON j.state = 'running' AND a.pid = j.worker_pid
        AND (j.worker_start IS NULL OR a.backend_start = j.worker_start)
  LEFT JOIN pgbg.worker_progress p ON p.pid = a.pid
 ORDER BY (j.state IN ('queued', 'running')) DESC,
          j.state = 'queued',
          CASE WHEN j.state = 'queued' THEN pgbg.queue_position(j.id) END,
          CASE WHEN j.state IN ('queued', 'running') THEN j.id END,
          j.finished_at DESC NULLS LAST, j.id DESC`;

const KEYS = ['id', 'state', 'user', 'database', 'rule', 'kind', 'priority', 'queue_position', 'not_before', 'attempts', 'submitted_at', 'started_at', 'elapsed', 'worker_pid', 'wait_event', 'phase', 'percent_done', 'statement', 'error', 'waiting_for_launcher'] as const;

/** SHOW JOBS. */
export async function listJobs(registry: RegistryConnection): Promise<ResultSet> {
  const r = await registry.query<Record<(typeof KEYS)[number], Cell>>(SHOW_JOBS_SQL);
  return { columns: JOB_COLUMNS, rows: r.rows.map((row) => KEYS.map((k) => row[k] ?? null)), tag: 'SHOW' };
}
