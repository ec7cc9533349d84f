-- Job registry, schema version 11: admission keeps its plans.
--
-- PostgreSQL 15 parses and plans a SQL-language function that cannot be inlined (these have a
-- SET clause) on every call. perf of the launcher (300 `SELECT 1` jobs, version 10, 2 cores):
-- 15% of its CPU, about 0.35 ms a job, went to planning the SQL helpers of admission and
-- recovery, most of it the fair-queue query in pgbg._ahead, planned anew for every candidate.
-- Version 7 moved the submission and launch helpers to PL/pgSQL (plans kept per session); these
-- follow: the same names, arguments, results, volatility, settings and bodies, each body now a
-- RETURN (or RETURN QUERY) of the same query. Nothing about who may do what, or when a job is
-- admitted, changes.
-- Released: never edit this file; change the registry with a new numbered migration.

-- As version 1's (001-registry.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._due(p_not_before timestamptz, p_options jsonb) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT (p_not_before IS NULL OR p_not_before <= clock_timestamp())
     AND pgbg.window_opens(p_options->'window', clock_timestamp()) <= clock_timestamp()
  );
END
$fn$;

-- As version 4's (004-fair-queue.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._server_limit(p_limits jsonb) RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT CASE WHEN p_limits->>'server' = 'auto' THEN pgbg.default_max_in_flight()
              WHEN jsonb_typeof(p_limits->'server') = 'number' THEN (p_limits->>'server')::integer END
  );
END
$fn$;

-- As version 4's (004-fair-queue.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._user_limit(p_limits jsonb) RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT CASE WHEN jsonb_typeof(p_limits->'user') = 'number' THEN (p_limits->>'user')::integer
              WHEN p_limits->>'user' = 'share' THEN GREATEST(1, pgbg._server_limit(p_limits) - 1) END
  );
END
$fn$;

-- As version 4's (004-fair-queue.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._scope_has_room(p_database name, p_owner name, p_rule text, p_limits jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT (p_limits->'database' IS NULL OR jsonb_typeof(p_limits->'database') <> 'number'
          OR pgbg.in_flight('database', p_database) < (p_limits->>'database')::integer)
     AND (pgbg._user_limit(p_limits) IS NULL
          OR pgbg.in_flight('user', p_owner) < pgbg._user_limit(p_limits))
     AND (p_rule IS NULL OR p_limits->'rule' IS NULL OR jsonb_typeof(p_limits->'rule') <> 'number'
          OR pgbg.in_flight('rule', p_rule) < (p_limits->>'rule')::integer)
  );
END
$fn$;

-- As version 4's (004-fair-queue.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._server_busy(p_limits jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT (p_limits->'busy_active_backends' IS NOT NULL
          AND (SELECT count(*) FROM pg_stat_activity a
                WHERE a.backend_type = 'client backend' AND a.state = 'active'
                  AND a.pid <> pg_backend_pid()
                  AND a.query !~* E'pgbg\\s*\\.\\s*a?wait\\s*\\(') > (p_limits->>'busy_active_backends')::integer)
      OR (p_limits->'busy_min_free_workers' IS NOT NULL
          AND current_setting('max_worker_processes')::integer - pgbg.worker_slots_used()
              < (p_limits->>'busy_min_free_workers')::integer)
  );
END
$fn$;

-- As version 1's (001-registry.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg.worker_slots_used() RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT count(*)::integer FROM pg_stat_activity a
   WHERE a.backend_type NOT IN ('client backend', 'autovacuum launcher', 'autovacuum worker', 'background writer',
                                'checkpointer', 'walwriter', 'walsender', 'walreceiver', 'startup', 'archiver',
                                'logger', 'standalone backend')
  );
END
$fn$;

-- As version 6's (006-launcher.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg.default_max_in_flight() RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT GREATEST(1,
           current_setting('max_worker_processes')::integer
           - LEAST(current_setting('max_parallel_workers')::integer,
                   2 * current_setting('max_parallel_workers_per_gather')::integer)
           - CASE WHEN EXISTS (SELECT 1 FROM pg_subscription)
                  THEN current_setting('max_logical_replication_workers')::integer ELSE 0 END
           - (SELECT count(*)::integer FROM pg_stat_activity a
               WHERE a.backend_type = 'pg_background' AND pgbg._is_launcher_query(a.query)))
  );
END
$fn$;

-- As version 4's (004-fair-queue.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._ahead(me pgbg.job) RETURNS SETOF pgbg.job
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN QUERY
  WITH running AS MATERIALIZED (
    SELECT r.owner, count(*) AS n FROM pgbg.job r WHERE r.state = 'running' GROUP BY r.owner
  ), owners AS MATERIALIZED (
    SELECT o.owner, pgbg._last_served(o.owner) AS served
      FROM (SELECT DISTINCT q.owner FROM pgbg.job q WHERE q.state = 'queued' AND q.priority = me.priority) o
  ), ranked AS MATERIALIZED (
    SELECT q.id, o.served,
           COALESCE(run.n, 0) + row_number() OVER (PARTITION BY q.owner ORDER BY q.queued_at, q.id) AS rk
      FROM pgbg.job q
      JOIN owners o ON o.owner = q.owner
      LEFT JOIN running run ON run.owner = q.owner
     WHERE q.state = 'queued' AND q.priority = me.priority
  ), mine AS MATERIALIZED (
    -- from ranked when me is queued (the usual case: no second count over the owner's history)
    SELECT COALESCE((SELECT r.rk FROM ranked r WHERE r.id = me.id),
                    pgbg._owner_rank(me.id, me.owner, me.priority, me.queued_at)) AS rk,
           COALESCE((SELECT r.served FROM ranked r WHERE r.id = me.id), pgbg._last_served(me.owner)) AS served
  )
  SELECT q.* FROM pgbg.job q
   WHERE q.state = 'queued' AND q.id <> me.id AND q.priority > me.priority
  UNION ALL
  SELECT q.* FROM pgbg.job q JOIN ranked r ON r.id = q.id, mine m
   WHERE q.id <> me.id
     AND (r.rk, r.served, q.queued_at, q.id) < (m.rk, m.served, me.queued_at, me.id)
  ;
END
$fn$;

-- As version 6's (006-launcher.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._could_launch(q pgbg.job) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT pgbg._due(q.not_before, q.options)
     AND pgbg._launcher_alive(q.login)
     AND pgbg._scope_has_room(q.database, q.owner, q.rule, pgbg._job_limits(q))
     AND NOT pgbg._server_busy(pgbg._job_limits(q))
  );
END
$fn$;

-- As version 4's (004-fair-queue.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._owner_rank(p_id bigint, p_owner name, p_priority integer, p_queued_at timestamptz) RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT 1
       + (SELECT count(*) FROM pgbg.job r WHERE r.state = 'running' AND r.owner = p_owner)
       + (SELECT count(*) FROM pgbg.job q
           WHERE q.state = 'queued' AND q.owner = p_owner AND q.priority = p_priority
             AND (q.queued_at, q.id) < (p_queued_at, p_id)
             AND q.id > 0)
  );
END
$fn$;

-- As version 4's (004-fair-queue.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._last_served(p_owner name) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT COALESCE((SELECT j.launched_at FROM pgbg.job j
                    WHERE j.owner = p_owner AND j.launched_at IS NOT NULL
                    ORDER BY j.id DESC LIMIT 1), '-infinity')
  );
END
$fn$;

-- As version 6's (006-launcher.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._job_limits(q pgbg.job) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT COALESCE(pgbg._limits_for(q.limits->>'config_id', q.database, q.login, q.rule), q.limits, '{}'::jsonb)
  );
END
$fn$;

-- As version 4's (004-fair-queue.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._launch_error_is_transient(p_sqlstate text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT left(p_sqlstate, 2) = '53'          -- insufficient resources: 53000 could not register background process, 53400
      OR p_sqlstate IN ('55P03',             -- lock_not_available
                        '57P03',             -- cannot_connect_now
                        '40001', '40P01')    -- serialization failure, deadlock
  );
END
$fn$;

-- As version 3's (003-privilege.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._worker_start(p_pid integer, p_users name[], p_after timestamptz, p_cookie bigint)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT a.backend_start
    FROM pg_stat_activity a
   WHERE a.pid = p_pid
     AND a.pid <> pg_backend_pid()
     AND a.usename = ANY (p_users)
     AND a.backend_start >= p_after
     AND (a.backend_type = 'pg_background'
          OR (a.backend_type = 'client backend'
              AND NOT EXISTS (SELECT 1 FROM pg_extension e WHERE e.extname = 'pg_background')
              AND EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = 'pgbg_standin')
              AND EXISTS (SELECT 1 FROM pg_locks l
                           WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                             AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                             AND (COALESCE(p_cookie, 0) = 0
                                  OR (l.classid = ((p_cookie >> 32) & 4294967295)::oid
                                      AND l.objid = (p_cookie & 4294967295)::oid)))))
   LIMIT 1
  );
END
$fn$;

-- As version 3's (003-privilege.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._is_launcher(p_launcher_pid integer, p_launcher_start timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT p_launcher_pid = pg_backend_pid()
     AND (p_launcher_start IS NULL
          OR p_launcher_start = (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()))
  );
END
$fn$;

-- As version 6's (006-launcher.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._is_launcher_query(p_query text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT p_query LIKE 'CALL pgbg.run_launcher(%'
  );
END
$fn$;

-- As version 6's (006-launcher.sql), in PL/pgSQL.
CREATE OR REPLACE FUNCTION pgbg._effect_state(p_options jsonb) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (
  SELECT CASE WHEN i.indisvalid AND i.indisready THEN 'succeeded' ELSE 'failed' END
    FROM pg_index i
   WHERE p_options ? 'index'
     AND i.indexrelid = to_regclass(p_options->>'index')
  );
END
$fn$;
