/**
 * Admission and the durable queue (part of registry version 1; see v1.sql.ts for the security
 * model). A job runs now only if it is due (its not_before has passed and its rule's window is
 * open), its limits have room, the server is not busy beyond what its rule tolerates, and no
 * job ahead of it in the queue could launch instead. Otherwise it is committed 'queued' and the
 * session that submitted it (the proxy keeps that session, see DESIGN.md decision 4) asks again
 * with pgbg.launch_if_admitted until it is admitted.
 *
 * Limits come from the proxy as one jsonb object per call, so a configuration reload applies to
 * jobs already queued:
 *   server   jobs in flight on the whole server, or "auto" for pgbg.default_max_in_flight()
 *   database / user / rule   jobs in flight of the job's database, owner, rule
 *   queue    queued jobs in this registry at most; a submission beyond it fails with 53400
 *   busy_active_backends     hold while more client backends than this are active
 *   busy_min_free_workers    hold while fewer background worker slots than this are free
 * A key that is absent does not limit. The call's limits are saved on the job (column limits),
 * so a job waiting behind its own per-user or per-rule limit does not block the jobs behind it.
 */
export const SCHEDULING_SQL = String.raw`
-- ---------------------------------------------------------------------------------------
-- Windows and due times
-- ---------------------------------------------------------------------------------------

-- The first moment at or after p_at when the window is open: p_at itself while it is open.
-- p_window: {"from": "01:00", "to": "05:00", "time_zone": "Europe/Berlin"}; a window whose end is
-- before its start spans midnight; NULL means always open.
CREATE FUNCTION pgbg.window_opens(p_window jsonb, p_at timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_from time;
  v_to time;
  v_tz text;
  v_local timestamp;
  v_t time;
BEGIN
  IF p_window IS NULL OR jsonb_typeof(p_window) <> 'object' THEN
    RETURN p_at;
  END IF;
  v_from := (p_window->>'from')::time;
  v_to := (p_window->>'to')::time;
  v_tz := COALESCE(p_window->>'time_zone', 'UTC');
  v_local := p_at AT TIME ZONE v_tz;
  v_t := v_local::time;
  IF v_from = v_to
     OR (v_from < v_to AND v_t >= v_from AND v_t < v_to)
     OR (v_from > v_to AND (v_t >= v_from OR v_t < v_to)) THEN
    RETURN p_at;
  END IF;
  IF v_t < v_from THEN
    RETURN (v_local::date + v_from) AT TIME ZONE v_tz;
  END IF;
  RETURN ((v_local::date + 1) + v_from) AT TIME ZONE v_tz;
END
$fn$;

-- May the job start now as far as time is concerned?
CREATE FUNCTION pgbg._due(p_not_before timestamptz, p_options jsonb) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT (p_not_before IS NULL OR p_not_before <= clock_timestamp())
     AND pgbg.window_opens(p_options->'window', clock_timestamp()) <= clock_timestamp()
$fn$;

-- ---------------------------------------------------------------------------------------
-- What is in flight
-- ---------------------------------------------------------------------------------------

-- A per-server limit that leaves room for the other users of max_worker_processes: parallel
-- query (two gathers' worth of workers) and logical replication (when subscriptions exist).
CREATE FUNCTION pgbg.default_max_in_flight() RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT GREATEST(1,
           current_setting('max_worker_processes')::integer
           - LEAST(current_setting('max_parallel_workers')::integer,
                   2 * current_setting('max_parallel_workers_per_gather')::integer)
           - CASE WHEN EXISTS (SELECT 1 FROM pg_subscription)
                  THEN current_setting('max_logical_replication_workers')::integer ELSE 0 END)
$fn$;

-- Jobs in flight as the server sees them now: pg_background workers anywhere on the server,
-- or (with a stand-in, whose workers are client backends) this registry's running jobs whose
-- worker is alive. A worker launched a moment ago may not show yet: count it for 10 s.
-- p_scope narrows it to one database, owner or rule (rules are known to this registry only).
CREATE FUNCTION pgbg.in_flight(p_scope text DEFAULT NULL, p_value text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  IF p_scope IS NOT NULL AND p_scope NOT IN ('database', 'user', 'rule') THEN
    RAISE EXCEPTION 'unknown scope %', p_scope USING ERRCODE = '22023', HINT = 'Use database, user or rule.';
  END IF;
  PERFORM pg_stat_clear_snapshot();
  RETURN GREATEST(
    CASE WHEN p_scope IS DISTINCT FROM 'rule' THEN
      (SELECT count(*) FROM pg_stat_activity a
        WHERE a.backend_type = 'pg_background'
          AND (p_scope IS NULL
               OR (p_scope = 'database' AND a.datname = p_value)
               OR (p_scope = 'user' AND a.usename = p_value)))
    ELSE 0 END,
    (SELECT count(*) FROM pgbg.job j
      WHERE j.state = 'running'
        AND (p_scope IS NULL
             OR (p_scope = 'database' AND j.database = p_value)
             OR (p_scope = 'user' AND j.owner = p_value)
             OR (p_scope = 'rule' AND j.rule = p_value))
        AND (EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = j.worker_pid)
             OR (j.worker_start IS NULL
                 AND COALESCE(j.launched_at, j.started_at) > clock_timestamp() - interval '10 seconds'))))::integer;
END
$fn$;

-- Slots of max_worker_processes in use by any background worker (pg_background, parallel query,
-- logical replication, other extensions'). The backend types listed are server processes that
-- do not take a slot. Also read by the proxy's worker-slot metric.
CREATE FUNCTION pgbg.worker_slots_used() RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT count(*)::integer FROM pg_stat_activity a
   WHERE a.backend_type NOT IN ('client backend', 'autovacuum launcher', 'autovacuum worker', 'background writer',
                                'checkpointer', 'walwriter', 'walsender', 'walreceiver', 'startup', 'archiver',
                                'logger', 'standalone backend')
$fn$;

-- Does the job's own scope (database, owner, rule) have room under p_limits?
CREATE FUNCTION pgbg._scope_has_room(p_database name, p_owner name, p_rule text, p_limits jsonb) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT (p_limits->'database' IS NULL OR jsonb_typeof(p_limits->'database') <> 'number'
          OR pgbg.in_flight('database', p_database) < (p_limits->>'database')::integer)
     AND (p_limits->'user' IS NULL OR jsonb_typeof(p_limits->'user') <> 'number'
          OR pgbg.in_flight('user', p_owner) < (p_limits->>'user')::integer)
     AND (p_rule IS NULL OR p_limits->'rule' IS NULL OR jsonb_typeof(p_limits->'rule') <> 'number'
          OR pgbg.in_flight('rule', p_rule) < (p_limits->>'rule')::integer)
$fn$;

-- Is the server too busy for a job that asked to be load-aware? Sessions waiting for jobs in
-- pgbg.wait / pgbg.await are not load: counting them would hold the very jobs they wait for.
CREATE FUNCTION pgbg._server_busy(p_limits jsonb) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT (p_limits->'busy_active_backends' IS NOT NULL
          AND (SELECT count(*) FROM pg_stat_activity a
                WHERE a.backend_type = 'client backend' AND a.state = 'active'
                  AND a.pid <> pg_backend_pid()
                  AND a.query !~* 'pgbg\s*\.\s*a?wait\s*\(') > (p_limits->>'busy_active_backends')::integer)
      OR (p_limits->'busy_min_free_workers' IS NOT NULL
          AND current_setting('max_worker_processes')::integer - pgbg.worker_slots_used()
              < (p_limits->>'busy_min_free_workers')::integer)
$fn$;

-- ---------------------------------------------------------------------------------------
-- The queue
-- ---------------------------------------------------------------------------------------

-- Is a queued job able to launch now, apart from the per-server limit? (Due, its launching
-- session alive, its own scope limits with room.) Used to decide whether it blocks jobs behind it.
CREATE FUNCTION pgbg._could_launch(q pgbg.job) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT pgbg._due(q.not_before, q.options)
     AND EXISTS (SELECT 1 FROM pg_stat_activity a
                  WHERE a.pid = q.launcher_pid AND (q.launcher_start IS NULL OR a.backend_start = q.launcher_start))
     AND pgbg._scope_has_room(q.database, q.owner, q.rule, COALESCE(q.limits, '{}'::jsonb))
     AND NOT pgbg._server_busy(COALESCE(q.limits, '{}'::jsonb))
$fn$;

-- Queued jobs ahead of this one (higher priority, or the same priority and queued earlier).
CREATE FUNCTION pgbg._ahead(me pgbg.job) RETURNS SETOF pgbg.job
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT q.* FROM pgbg.job q
   WHERE q.state = 'queued' AND q.id <> me.id
     AND (q.priority > me.priority
          OR (q.priority = me.priority AND (q.queued_at, q.id) < (me.queued_at, me.id)))
$fn$;

-- 1 for the next job to launch. Definer: the position counts every owner's jobs.
CREATE FUNCTION pgbg.queue_position(job_id bigint) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT CASE WHEN me.state = 'queued' THEN 1 + (SELECT count(*)::integer FROM pgbg._ahead(me)) END
    FROM pgbg.job me WHERE me.id = queue_position.job_id
$fn$;

CREATE FUNCTION pgbg._queue_length() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$ SELECT count(*) FROM pgbg.job WHERE state = 'queued' $fn$;

-- Whether the job may launch now. Serialised per registry by an advisory lock held to the end
-- of the caller's transaction, so two sessions cannot both take the last slot. Saves p_limits
-- on the job (definer: users cannot UPDATE pgbg.job).
CREATE FUNCTION pgbg.admit(job_id bigint, limits jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v pgbg.job%ROWTYPE;
  v_limits jsonb := COALESCE(admit.limits, '{}'::jsonb);
  v_server integer;
BEGIN
  SELECT * INTO v FROM pgbg.job j WHERE j.id = admit.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v.owner) THEN
    RAISE EXCEPTION 'job % does not exist', admit.job_id USING ERRCODE = '42704';
  END IF;
  IF v.state <> 'queued' THEN
    RETURN false;
  END IF;
  IF v.limits IS DISTINCT FROM v_limits THEN
    UPDATE pgbg.job j SET limits = v_limits WHERE j.id = admit.job_id;
  END IF;
  IF NOT pgbg._due(v.not_before, v.options) THEN
    RETURN false;
  END IF;
  IF v_limits - 'queue' = '{}'::jsonb THEN
    RETURN true;
  END IF;

  PERFORM pg_advisory_xact_lock(1885825634, 0);
  v_server := CASE WHEN v_limits->>'server' = 'auto' THEN pgbg.default_max_in_flight()
                   WHEN jsonb_typeof(v_limits->'server') = 'number' THEN (v_limits->>'server')::integer END;
  IF v_server IS NOT NULL AND pgbg.in_flight() >= v_server THEN
    RETURN false;
  END IF;
  IF NOT pgbg._scope_has_room(v.database, v.owner, v.rule, v_limits) OR pgbg._server_busy(v_limits) THEN
    RETURN false;
  END IF;
  RETURN NOT EXISTS (SELECT 1 FROM pgbg._ahead(v) q WHERE pgbg._could_launch(q));
END
$fn$;

-- A queued job of the caller's, launched if it is admitted now, otherwise left queued.
-- A job that is no longer queued (running, cancelled meanwhile, marked lost) is reported as it is.
CREATE FUNCTION pgbg.launch_if_admitted(
  job_id bigint,
  limits jsonb,
  OUT state text,
  OUT worker_pid integer,
  OUT cookie bigint,
  OUT api integer)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
BEGIN
  SELECT j.state INTO state FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) launch_if_admitted.job_id;
  IF state IS DISTINCT FROM 'queued' OR NOT pgbg.admit(launch_if_admitted.job_id, launch_if_admitted.limits) THEN
    RETURN;
  END IF;
  BEGIN
    SELECT l.state, l.worker_pid, l.cookie, l.api INTO state, worker_pid, cookie, api FROM pgbg.launch_job(launch_if_admitted.job_id) l;
  EXCEPTION WHEN insufficient_resources OR configuration_limit_exceeded THEN
    state := 'queued'; -- no free worker slot after all: stay queued, try again later
  END;
END
$fn$;

-- One round trip for the proxy: records the job and launches its worker as the calling role,
-- or leaves it queued when it is not admitted (see pgbg.admit), all in the caller's implicit
-- transaction. If anything fails, nothing is left behind: the error (no pg_background, no
-- privilege, queue full, ...) reaches the client at once. The worker of a transactional job
-- waits, in pgbg.run_job, on an advisory lock held here until this transaction commits, so it
-- sees its row; if the transaction rolls back, the worker finds no job and does nothing.
-- With limits (queue mode), a launch refused for lack of worker slots leaves the job queued;
-- without, that error reaches the client.
-- SECURITY INVOKER and no SET clause on purpose: the worker runs as the launching role and must
-- inherit the caller's search_path, not a pinned one. Every name is qualified.
CREATE FUNCTION pgbg.submit_and_launch(
  statement text,
  kind text,
  transactional boolean,
  rule text DEFAULT NULL,
  options jsonb DEFAULT NULL,
  priority integer DEFAULT NULL,
  idem_key text DEFAULT NULL,
  session_id text DEFAULT NULL,
  limits jsonb DEFAULT NULL,
  OUT job_id bigint,
  OUT state text,
  OUT worker_pid integer,
  OUT cookie bigint,
  OUT api integer,
  OUT existing boolean)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v_transactional boolean := COALESCE(submit_and_launch.transactional, true);
  v_queue_mode boolean := COALESCE(submit_and_launch.limits, '{}'::jsonb) OPERATOR(pg_catalog.-) 'queue' OPERATOR(pg_catalog.<>) '{}'::jsonb;
BEGIN
  existing := false;
  BEGIN
    job_id := pgbg.submit(submit_and_launch.statement, submit_and_launch.kind, v_transactional, NOT v_transactional,
                          submit_and_launch.rule, submit_and_launch.options, submit_and_launch.priority,
                          submit_and_launch.idem_key, submit_and_launch.session_id);
  EXCEPTION WHEN unique_violation THEN
    -- The idempotency key names a job of this role that is still queued or running: that job is the answer.
    SELECT j.id, j.state INTO job_id, state FROM pgbg.job j
     WHERE j.owner OPERATOR(pg_catalog.=) current_user AND j.idem_key OPERATOR(pg_catalog.=) submit_and_launch.idem_key
       AND j.state IN ('queued', 'running')
     ORDER BY j.id DESC LIMIT 1;
    IF NOT FOUND THEN
      RAISE;
    END IF;
    existing := true;
    RETURN;
  END;
  IF pgbg.admit(job_id, submit_and_launch.limits) THEN
    BEGIN
      SELECT l.state, l.worker_pid, l.cookie, l.api INTO state, worker_pid, cookie, api FROM pgbg.launch_job(job_id) l;
      RETURN;
    EXCEPTION WHEN insufficient_resources OR configuration_limit_exceeded THEN
      -- In queue mode, worker slots taken by other workers (autovacuum, parallel query,
      -- replication) make the job wait in the queue instead of failing.
      IF NOT v_queue_mode THEN
        RAISE;
      END IF;
    END;
  END IF;
  IF pg_catalog.jsonb_typeof(submit_and_launch.limits OPERATOR(pg_catalog.->) 'queue') = 'number'
     AND pgbg._queue_length() OPERATOR(pg_catalog.>) (submit_and_launch.limits OPERATOR(pg_catalog.->>) 'queue')::integer THEN
    RAISE EXCEPTION 'the background job queue is full (% jobs queued)', (submit_and_launch.limits OPERATOR(pg_catalog.->>) 'queue')
      USING ERRCODE = '53400',
            HINT = 'Retry later, or raise jobs.maxQueued in the pgbg-proxy configuration.';
  END IF;
  state := 'queued';
END
$fn$;

REVOKE ALL ON FUNCTION
  pgbg.window_opens(jsonb, timestamptz),
  pgbg._due(timestamptz, jsonb),
  pgbg.default_max_in_flight(),
  pgbg.in_flight(text, text),
  pgbg.worker_slots_used(),
  pgbg._scope_has_room(name, name, text, jsonb),
  pgbg._server_busy(jsonb),
  pgbg._could_launch(pgbg.job),
  pgbg._ahead(pgbg.job),
  pgbg.queue_position(bigint),
  pgbg._queue_length(),
  pgbg.admit(bigint, jsonb),
  pgbg.launch_if_admitted(bigint, jsonb),
  pgbg.submit_and_launch(text, text, boolean, text, jsonb, integer, text, text, jsonb)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
  pgbg.window_opens(jsonb, timestamptz),
  pgbg._due(timestamptz, jsonb),
  pgbg.default_max_in_flight(),
  pgbg.in_flight(text, text),
  pgbg.worker_slots_used(),
  pgbg.queue_position(bigint),
  pgbg._queue_length(),
  pgbg.admit(bigint, jsonb),
  pgbg.launch_if_admitted(bigint, jsonb),
  pgbg.submit_and_launch(text, text, boolean, text, jsonb, integer, text, text, jsonb)
TO PUBLIC;
`;
