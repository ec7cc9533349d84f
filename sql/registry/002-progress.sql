-- Job registry, schema version 2: progress of running jobs in pgbg.jobs (elapsed time, wait
-- event, phase and percent done). Both views are security_invoker: a user sees the progress of
-- its own workers, pgbg_admin members with pg_read_all_stats see every worker's.
-- Released: never edit this file; change the registry with a new numbered migration.

CREATE VIEW pgbg.worker_progress WITH (security_invoker = true) AS 
  SELECT v.pid, 'vacuum: ' || v.phase AS phase,
         CASE WHEN v.heap_blks_total > 0 THEN 100.0 *
              (CASE WHEN v.phase = 'vacuuming heap' THEN v.heap_blks_vacuumed ELSE v.heap_blks_scanned END) / v.heap_blks_total END AS percent
    FROM pg_catalog.pg_stat_progress_vacuum v
  UNION ALL
  SELECT c.pid, pg_catalog.lower(c.command) || ': ' || c.phase,
         CASE WHEN c.blocks_total > 0 THEN 100.0 * c.blocks_done / c.blocks_total
              WHEN c.tuples_total > 0 THEN 100.0 * c.tuples_done / c.tuples_total
              WHEN c.lockers_total > 0 THEN 100.0 * c.lockers_done / c.lockers_total
              WHEN c.partitions_total > 0 THEN 100.0 * c.partitions_done / c.partitions_total END
    FROM pg_catalog.pg_stat_progress_create_index c
  UNION ALL
  SELECT k.pid, pg_catalog.lower(k.command) || ': ' || k.phase,
         CASE WHEN k.heap_blks_total > 0 THEN 100.0 * k.heap_blks_scanned / k.heap_blks_total END
    FROM pg_catalog.pg_stat_progress_cluster k
  UNION ALL
  SELECT a.pid, 'analyze: ' || a.phase,
         CASE WHEN a.phase = 'computing extended statistics' AND a.ext_stats_total > 0 THEN 100.0 * a.ext_stats_computed / a.ext_stats_total
              WHEN a.sample_blks_total > 0 THEN 100.0 * a.sample_blks_scanned / a.sample_blks_total END
    FROM pg_catalog.pg_stat_progress_analyze a
  UNION ALL
  SELECT p.pid, pg_catalog.lower(p.command) || ' (' || pg_catalog.lower(p.type) || ')',
         CASE WHEN p.bytes_total > 0 THEN 100.0 * p.bytes_processed / p.bytes_total END
    FROM pg_catalog.pg_stat_progress_copy p;
GRANT SELECT ON pgbg.worker_progress TO PUBLIC;

CREATE OR REPLACE VIEW pgbg.jobs WITH (security_invoker = true) AS
SELECT j.id,
       j.state,
       j.owner AS submitted_by,
       j.database,
       j.statement,
       j.rule,
       j.submitted_at,
       j.started_at,
       j.finished_at,
       j.worker_pid,
       j.command_tag,
       j.rows,
       j.sqlstate,
       j.error,
       j.kind,
       COALESCE(j.finished_at, pg_catalog.clock_timestamp()) - j.started_at AS elapsed,
       j.lost_reason,
       j.attempts,
       j.cancel_requested,
       CASE WHEN a.wait_event IS NOT NULL THEN a.wait_event_type || ':' || a.wait_event END AS wait_event,
       p.phase,
       pg_catalog.round(p.percent, 1)::float8 AS percent_done,
       j.priority,
       j.max_attempts,
       j.not_before,
       CASE WHEN j.state = 'queued' THEN pgbg.queue_position(j.id) END AS queue_position,
       CASE WHEN j.state = 'queued' THEN pg_catalog.clock_timestamp() - j.queued_at END AS queued_for
  FROM pgbg.job j
  LEFT JOIN pg_catalog.pg_stat_activity a
         ON j.state = 'running' AND a.pid = j.worker_pid
        AND (j.worker_start IS NULL OR a.backend_start = j.worker_start)
  LEFT JOIN pgbg.worker_progress p ON p.pid = a.pid;
