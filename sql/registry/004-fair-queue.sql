-- Job registry, schema version 4: fair sharing between roles and jobs that cannot block the queue.
--
--  * Within one priority, queued jobs are taken round-robin by role: a job's place is its turn
--    within its owner's share (the owner's running jobs plus its queued jobs ahead of it), then
--    which role was served longest ago, then its age (pgbg._ahead). One role's thousand queued jobs do not make another role's single
--    job wait behind all of them.
--  * A per-role queue bound (limits.queue_per_user, from jobs.maxQueuedPerUser): a submission
--    that would queue beyond it fails with 53400 and records nothing.
--  * A per-role in-flight default (limits.user = 'share'): one role may hold at most all but one
--    of the server-wide slots, so another role's job always finds one.
--  * Options are validated at submission (pgbg._check_options), not at launch; a launch that
--    fails for a reason that will not go away ends the job 'failed' with that error; only a
--    missing worker slot (class 53) or a transient lock/startup condition leaves it queued.
--  * Nothing here depends on the calling session's standard_conforming_strings, search_path or
--    other settings: regular-expression literals are E'' strings, and the unpinned functions
--    (they must inherit the caller's GUCs into the worker) qualify every operator and type.
--
-- Functions owned by other migrations that this file changes are named in its comments.

-- ---------------------------------------------------------------------------------------
-- Validation of what a caller hands the registry
-- ---------------------------------------------------------------------------------------

-- Raises 22023 for any option a job could not launch with. Called at submission, so a job that
-- would fail at every launch attempt is refused at once instead of blocking the queue.
CREATE FUNCTION pgbg._check_options(p_options jsonb, p_priority integer) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
SET standard_conforming_strings = on
AS $fn$
DECLARE
  v text;
BEGIN
  IF p_priority IS NOT NULL AND p_priority NOT BETWEEN -1000 AND 1000 THEN
    RAISE EXCEPTION 'priority must be between -1000 and 1000, not %', p_priority USING ERRCODE = '22023';
  END IF;
  IF p_options IS NULL THEN
    RETURN;
  END IF;
  IF jsonb_typeof(p_options) <> 'object' THEN
    RAISE EXCEPTION 'options must be a JSON object' USING ERRCODE = '22023';
  END IF;
  -- statement_timeout is an integer number of milliseconds: 0 .. 2147483647
  IF p_options ? 'timeout_ms' AND jsonb_typeof(p_options->'timeout_ms') <> 'null' THEN
    v := p_options->>'timeout_ms';
    IF jsonb_typeof(p_options->'timeout_ms') NOT IN ('number', 'string') OR v !~ '^[0-9]{1,10}$'
       OR v::bigint > 2147483647 THEN
      RAISE EXCEPTION 'timeout % is out of range: a job timeout is at most 2147483647 ms (about 24.8 days)', v
        USING ERRCODE = '22023';
    END IF;
  END IF;
  IF p_options ? 'max_attempts' AND jsonb_typeof(p_options->'max_attempts') <> 'null' THEN
    v := p_options->>'max_attempts';
    IF v !~ '^[0-9]{1,3}$' OR v::integer NOT BETWEEN 1 AND 100 THEN
      RAISE EXCEPTION 'max_attempts must be between 1 and 100, not %', v USING ERRCODE = '22023';
    END IF;
  END IF;
  FOREACH v IN ARRAY ARRAY['retry_base_ms', 'retry_max_ms'] LOOP
    IF p_options ? v AND jsonb_typeof(p_options->v) <> 'null'
       AND ((p_options->>v) !~ '^[0-9]{1,10}$' OR (p_options->>v)::bigint > 2147483647) THEN
      RAISE EXCEPTION '% must be a whole number of milliseconds up to 2147483647, not %', v, p_options->>v
        USING ERRCODE = '22023';
    END IF;
  END LOOP;
  IF p_options ? 'not_before' AND jsonb_typeof(p_options->'not_before') <> 'null' THEN
    BEGIN
      PERFORM (p_options->>'not_before')::timestamptz;
    EXCEPTION WHEN data_exception THEN
      RAISE EXCEPTION 'not_before % is not a timestamp with time zone', p_options->>'not_before' USING ERRCODE = '22023';
    END;
  END IF;
  IF p_options ? 'window' AND jsonb_typeof(p_options->'window') <> 'null' THEN
    BEGIN
      PERFORM (p_options->'window'->>'from')::time, (p_options->'window'->>'to')::time,
              now() AT TIME ZONE COALESCE(p_options->'window'->>'time_zone', 'UTC');
    EXCEPTION WHEN data_exception OR invalid_parameter_value THEN
      RAISE EXCEPTION 'window % is not valid', p_options->'window' USING ERRCODE = '22023';
    END;
    IF jsonb_typeof(p_options->'window') <> 'object' OR p_options->'window'->>'from' IS NULL OR p_options->'window'->>'to' IS NULL THEN
      RAISE EXCEPTION 'window % needs "from" and "to"', p_options->'window' USING ERRCODE = '22023';
    END IF;
  END IF;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Session settings: the regular expression in _server_busy was a plain literal, so with
-- standard_conforming_strings = off in the caller's session every load-aware admission failed
-- with 2201B. E'' literals mean the same under either setting.
-- ---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pgbg._server_busy(p_limits jsonb) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT (p_limits->'busy_active_backends' IS NOT NULL
          AND (SELECT count(*) FROM pg_stat_activity a
                WHERE a.backend_type = 'client backend' AND a.state = 'active'
                  AND a.pid <> pg_backend_pid()
                  AND a.query !~* E'pgbg\\s*\\.\\s*a?wait\\s*\\(') > (p_limits->>'busy_active_backends')::integer)
      OR (p_limits->'busy_min_free_workers' IS NOT NULL
          AND current_setting('max_worker_processes')::integer - pgbg.worker_slots_used()
              < (p_limits->>'busy_min_free_workers')::integer)
$fn$;

-- finish_supervised (owned by version 1 / the privilege migration) reads the row count with a
-- plain '(\d+)$' literal: pin the setting its body is parsed under.
ALTER FUNCTION pgbg.finish_supervised(bigint, text, text, text, text) SET standard_conforming_strings = on;

-- ---------------------------------------------------------------------------------------
-- Limits
-- ---------------------------------------------------------------------------------------

-- The per-server limit p_limits names, or NULL for none.
CREATE FUNCTION pgbg._server_limit(p_limits jsonb) RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT CASE WHEN p_limits->>'server' = 'auto' THEN pgbg.default_max_in_flight()
              WHEN jsonb_typeof(p_limits->'server') = 'number' THEN (p_limits->>'server')::integer END
$fn$;

-- The per-role limit p_limits names, or NULL. 'share': all but one of the server-wide slots
-- (at least 1), so that one role cannot hold every slot while another role's job waits.
CREATE FUNCTION pgbg._user_limit(p_limits jsonb) RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT CASE WHEN jsonb_typeof(p_limits->'user') = 'number' THEN (p_limits->>'user')::integer
              WHEN p_limits->>'user' = 'share' THEN GREATEST(1, pgbg._server_limit(p_limits) - 1) END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._scope_has_room(p_database name, p_owner name, p_rule text, p_limits jsonb) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT (p_limits->'database' IS NULL OR jsonb_typeof(p_limits->'database') <> 'number'
          OR pgbg.in_flight('database', p_database) < (p_limits->>'database')::integer)
     AND (pgbg._user_limit(p_limits) IS NULL
          OR pgbg.in_flight('user', p_owner) < pgbg._user_limit(p_limits))
     AND (p_rule IS NULL OR p_limits->'rule' IS NULL OR jsonb_typeof(p_limits->'rule') <> 'number'
          OR pgbg.in_flight('rule', p_rule) < (p_limits->>'rule')::integer)
$fn$;

-- ---------------------------------------------------------------------------------------
-- The queue: round-robin between roles within one priority
-- ---------------------------------------------------------------------------------------

-- A queued job's turn within its owner's share: 1 + the owner's running jobs + the owner's queued
-- jobs of the same priority ahead of it. Counting the running ones is what makes the order a
-- round-robin: a role that has a job running waits behind a role that has none, even if its own
-- next job was queued earlier (the rank among queued jobs alone would always favour the role
-- with the oldest queue).
CREATE FUNCTION pgbg._owner_rank(p_id bigint, p_owner name, p_priority integer, p_queued_at timestamptz) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT 1
       + (SELECT count(*) FROM pgbg.job r WHERE r.state = 'running' AND r.owner = p_owner)
       + (SELECT count(*) FROM pgbg.job q
           WHERE q.state = 'queued' AND q.owner = p_owner AND q.priority = p_priority
             AND (q.queued_at, q.id) < (p_queued_at, p_id)
             AND q.id > 0)
$fn$;

-- When a role last had a job launched ('-infinity' if never): among jobs of the same turn, the
-- role served longest ago goes first. Without it, a role whose running job just ended would
-- again be first with its next (older) queued job, and a limit of one slot would serve it alone.
-- Reads the owner's newest jobs backwards through job_owner_idx, up to its first launched one.
CREATE FUNCTION pgbg._last_served(p_owner name) RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT COALESCE((SELECT j.launched_at FROM pgbg.job j
                    WHERE j.owner = p_owner AND j.launched_at IS NOT NULL
                    ORDER BY j.id DESC LIMIT 1), '-infinity')
$fn$;

-- Queued jobs ahead of this one: higher priority; or the same priority and an earlier turn within
-- their owner's share (pgbg._owner_rank: round-robin by role); or the same turn and an owner
-- served longer ago (pgbg._last_served); or that too and queued earlier.
CREATE OR REPLACE FUNCTION pgbg._ahead(me pgbg.job) RETURNS SETOF pgbg.job
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
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
$fn$;

CREATE OR REPLACE FUNCTION pgbg.admit(job_id bigint, limits jsonb) RETURNS boolean
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
  IF jsonb_typeof(v_limits) <> 'object' THEN
    RAISE EXCEPTION 'limits must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF v.limits IS DISTINCT FROM v_limits THEN
    UPDATE pgbg.job j SET limits = v_limits WHERE j.id = admit.job_id;
  END IF;
  IF NOT pgbg._due(v.not_before, v.options) THEN
    RETURN false;
  END IF;
  IF v_limits - 'queue' - 'queue_per_user' = '{}'::jsonb THEN
    RETURN true;
  END IF;

  PERFORM pg_advisory_xact_lock(1885825634, 0);
  v_server := pgbg._server_limit(v_limits);
  IF v_server IS NOT NULL AND pgbg.in_flight() >= v_server THEN
    RETURN false;
  END IF;
  IF NOT pgbg._scope_has_room(v.database, v.owner, v.rule, v_limits) OR pgbg._server_busy(v_limits) THEN
    RETURN false;
  END IF;
  RETURN NOT EXISTS (SELECT 1 FROM pgbg._ahead(v) q WHERE pgbg._could_launch(q));
END
$fn$;

-- Why a launch failed, sorted: true when waiting may cure it (no free worker slot, a lock or a
-- server that is starting up), false when every later attempt would fail the same way.
CREATE FUNCTION pgbg._launch_error_is_transient(p_sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT left(p_sqlstate, 2) = '53'          -- insufficient resources: 53000 could not register background process, 53400
      OR p_sqlstate IN ('55P03',             -- lock_not_available
                        '57P03',             -- cannot_connect_now
                        '40001', '40P01')    -- serialization failure, deadlock
$fn$;

-- A queued job of the caller's, launched if it is admitted now, otherwise left queued. A launch
-- that fails for a transient reason leaves it queued; any other launch failure ends it 'failed'
-- with that error (pgbg.launch_failed), so it cannot hold the head of the queue for ever.
-- SECURITY INVOKER and unpinned (the worker inherits the caller's settings): every operator and
-- type is qualified.
CREATE OR REPLACE FUNCTION pgbg.launch_if_admitted(
  job_id bigint,
  limits jsonb,
  OUT state text,
  OUT worker_pid integer,
  OUT cookie bigint,
  OUT api integer)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v_sqlstate pg_catalog.text;
  v_error pg_catalog.text;
BEGIN
  SELECT j.state INTO state FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) launch_if_admitted.job_id;
  IF state IS NULL OR NOT (state OPERATOR(pg_catalog.=) 'queued') THEN
    RETURN;
  END IF;
  IF NOT pgbg.admit(launch_if_admitted.job_id, launch_if_admitted.limits) THEN
    RETURN;
  END IF;
  -- The worker copies this session's settings: a session that defaults to read-only
  -- transactions would give it one in which neither the job nor its outcome can be written, and
  -- one that defaults to REPEATABLE READ or SERIALIZABLE would give it a snapshot taken before
  -- pgbg.run_job's wait for the job row's commit (the row unseen, or its outcome refused with
  -- 40001, and the job lost). A job runs READ COMMITTED, like the statements of a procedure.
  PERFORM pg_catalog.set_config('default_transaction_read_only', 'off', true);
  PERFORM pg_catalog.set_config('default_transaction_isolation', 'read committed', true);
  BEGIN
    SELECT l.state, l.worker_pid, l.cookie, l.api INTO state, worker_pid, cookie, api FROM pgbg.launch_job(launch_if_admitted.job_id) l;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT;
    IF pgbg._launch_error_is_transient(v_sqlstate) THEN
      state := 'queued'; -- no free worker slot after all: stay queued, try again later
    ELSIF pgbg.launch_failed(launch_if_admitted.job_id, v_sqlstate, v_error) THEN
      state := 'failed';
    ELSE
      SELECT j.state INTO state FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) launch_if_admitted.job_id;
    END IF;
  END;
END
$fn$;

-- One round trip for the proxy: validates the options, records the job and launches its worker
-- as the calling role, or leaves it queued when it is not admitted (see pgbg.admit), all in the
-- caller's implicit transaction. If anything fails, nothing is left behind: the error (invalid
-- option, no pg_background, no privilege, queue full, ...) reaches the client at once.
-- limits.queue bounds the registry's queue, limits.queue_per_user the caller's own queued jobs.
-- SECURITY INVOKER and no SET clause on purpose (the worker inherits the caller's GUCs): every
-- operator and type is qualified.
CREATE OR REPLACE FUNCTION pgbg.submit_and_launch(
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
  v_limits pg_catalog.jsonb := COALESCE(submit_and_launch.limits, pg_catalog.jsonb_build_object());
  v_queue_mode boolean;
  v_sqlstate pg_catalog.text;
  v_error pg_catalog.text;
  v_mine bigint;
BEGIN
  existing := false;
  PERFORM pgbg._check_options(submit_and_launch.options, submit_and_launch.priority);
  IF pg_catalog.jsonb_typeof(v_limits) IS NULL OR NOT (pg_catalog.jsonb_typeof(v_limits) OPERATOR(pg_catalog.=) 'object') THEN
    RAISE EXCEPTION 'limits must be a JSON object' USING ERRCODE = '22023';
  END IF;
  v_queue_mode := NOT (v_limits OPERATOR(pg_catalog.-) 'queue' OPERATOR(pg_catalog.-) 'queue_per_user'
                       OPERATOR(pg_catalog.=) pg_catalog.jsonb_build_object());
  BEGIN
    job_id := pgbg.submit(submit_and_launch.statement, submit_and_launch.kind, v_transactional, NOT v_transactional,
                          submit_and_launch.rule, submit_and_launch.options, submit_and_launch.priority,
                          submit_and_launch.idem_key, submit_and_launch.session_id);
  EXCEPTION WHEN unique_violation THEN
    -- The idempotency key names a job of this role that is still queued or running: that job is the answer.
    SELECT j.id, j.state INTO job_id, state FROM pgbg.job j
     WHERE j.owner OPERATOR(pg_catalog.=) current_user AND j.idem_key OPERATOR(pg_catalog.=) submit_and_launch.idem_key
       AND (j.state OPERATOR(pg_catalog.=) 'queued' OR j.state OPERATOR(pg_catalog.=) 'running')
     ORDER BY j.id DESC LIMIT 1;
    IF NOT FOUND THEN
      RAISE;
    END IF;
    existing := true;
    RETURN;
  END;
  IF pgbg.admit(job_id, v_limits) THEN
    -- See launch_if_admitted: the worker must not inherit a read-only or snapshot-isolation default.
    PERFORM pg_catalog.set_config('default_transaction_read_only', 'off', true);
    PERFORM pg_catalog.set_config('default_transaction_isolation', 'read committed', true);
    BEGIN
      SELECT l.state, l.worker_pid, l.cookie, l.api INTO state, worker_pid, cookie, api FROM pgbg.launch_job(job_id) l;
      RETURN;
    EXCEPTION WHEN OTHERS THEN
      -- In queue mode, worker slots taken by other workers (autovacuum, parallel query,
      -- replication) make the job wait in the queue instead of failing. Anything else (and a
      -- slot shortage outside queue mode) reaches the client, and the job row is rolled back.
      GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT;
      IF NOT v_queue_mode OR NOT pgbg._launch_error_is_transient(v_sqlstate) THEN
        RAISE;
      END IF;
    END;
  END IF;
  IF pg_catalog.jsonb_typeof(v_limits OPERATOR(pg_catalog.->) 'queue_per_user') OPERATOR(pg_catalog.=) 'number' THEN
    SELECT pg_catalog.count(*) INTO v_mine FROM pgbg.job j
     WHERE j.state OPERATOR(pg_catalog.=) 'queued' AND j.owner OPERATOR(pg_catalog.=) current_user;
    IF v_mine OPERATOR(pg_catalog.>) (v_limits OPERATOR(pg_catalog.->>) 'queue_per_user')::pg_catalog.int8 THEN
      RAISE EXCEPTION 'role % already has % queued background jobs, the most jobs.maxQueuedPerUser allows',
        current_user, (v_limits OPERATOR(pg_catalog.->>) 'queue_per_user')
        USING ERRCODE = '53400',
              HINT = 'Retry later, when some of them have started, or raise jobs.maxQueuedPerUser in the pgbg-proxy configuration.';
    END IF;
  END IF;
  IF pg_catalog.jsonb_typeof(v_limits OPERATOR(pg_catalog.->) 'queue') OPERATOR(pg_catalog.=) 'number'
     AND pgbg._queue_length() OPERATOR(pg_catalog.>) (v_limits OPERATOR(pg_catalog.->>) 'queue')::pg_catalog.int8 THEN
    RAISE EXCEPTION 'the background job queue is full (% jobs queued, the most jobs.maxQueued allows)', (v_limits OPERATOR(pg_catalog.->>) 'queue')
      USING ERRCODE = '53400',
            HINT = 'Retry later, or raise jobs.maxQueued in the pgbg-proxy configuration.';
  END IF;
  state := 'queued';
END
$fn$;

-- run_job (owned by the pg_background-2.0 migration) trimmed a row-returning statement with the
-- plain literal '[\s;]+$': with standard_conforming_strings = off in the submitting session
-- (the worker copies it) that is '[s;]+$', which cut a trailing "s" off the statement. The
-- changes here are that literal, now E'[\\s;]+$', and the text comparisons, now qualified
-- (the worker also copies the caller's search_path, which may put a schema before pg_catalog).
CREATE OR REPLACE FUNCTION pgbg.run_job(job_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v pgbg.job%ROWTYPE;
  v_stmt text;
  v_rows bigint;
  v_state text := 'succeeded';
  v_tag text;
  v_sqlstate text;
  v_error text;
  v_detail text;
BEGIN
  -- Launched by pgbg.submit_and_launch? Then its transaction holds this lock until it commits
  -- the job row; wait for that (no-op otherwise). The next statement takes a new snapshot.
  PERFORM pg_catalog.pg_advisory_xact_lock_shared(1885825634, (run_job.job_id OPERATOR(pg_catalog.%) 2147483647)::integer);
  SELECT j.* INTO v FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) run_job.job_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'job % does not exist', run_job.job_id USING ERRCODE = '42704';
  END IF;
  IF v.owner OPERATOR(pg_catalog.<>) current_user THEN
    RAISE EXCEPTION 'job % must run as its owner %, not as %', v.id, v.owner, current_user
      USING ERRCODE = '42501';
  END IF;
  IF NOT v.transactional THEN
    RAISE EXCEPTION 'job % is not transactional; launch its statement directly', v.id USING ERRCODE = '55000';
  END IF;
  IF NOT (v.state OPERATOR(pg_catalog.=) 'queued' OR v.state OPERATOR(pg_catalog.=) 'running') THEN
    RETURN; -- cancelled before it started, or declared lost: do nothing
  END IF;

  BEGIN
    IF COALESCE((v.options OPERATOR(pg_catalog.->>) 'returns_rows') OPERATOR(pg_catalog.=) 'true', false) THEN
      v_stmt := pg_catalog.regexp_replace(v.statement, E'[\\s;]+$', '');
      IF COALESCE((v.options OPERATOR(pg_catalog.->>) 'rows_via') OPERATOR(pg_catalog.=) 'cte', false) THEN
        EXECUTE pg_catalog.format(
          E'WITH r AS (\n%s\n) INSERT INTO pgbg.job_result (job_id, ord, "row") SELECT %s, pg_catalog.row_number() OVER (), pg_catalog.to_jsonb(r) FROM r',
          v_stmt, v.id);
      ELSE
        EXECUTE pg_catalog.format(
          E'INSERT INTO pgbg.job_result (job_id, ord, "row") SELECT %s, pg_catalog.row_number() OVER (), pg_catalog.to_jsonb(r) FROM (\n%s\n) r',
          v.id, v_stmt);
      END IF;
    ELSE
      EXECUTE v.statement;
    END IF;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    v_tag := pgbg._command_tag(v.kind, v_rows);
  EXCEPTION
    WHEN query_canceled THEN
      GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
      v_state := 'cancelled'; -- _finish turns it into 'failed' unless a cancel was requested
      v_rows := NULL;
      v_tag := NULL;
    WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
      v_state := 'failed';
      v_rows := NULL;
      v_tag := NULL;
  END;

  PERFORM pgbg._finish(v.id, v_state, v_tag, v_rows, v_sqlstate, v_error, NULLIF(v_detail, ''));
END
$fn$;

REVOKE ALL ON FUNCTION
  pgbg._check_options(jsonb, integer),
  pgbg._server_limit(jsonb),
  pgbg._user_limit(jsonb),
  pgbg._owner_rank(bigint, name, integer, timestamptz),
  pgbg._last_served(name),
  pgbg._launch_error_is_transient(text)
FROM PUBLIC;

-- Called from the SECURITY INVOKER submit_and_launch / launch_if_admitted and from the definer
-- admit; none reveals anything (the rank counts rows through the caller's own RLS view).
GRANT EXECUTE ON FUNCTION
  pgbg._check_options(jsonb, integer),
  pgbg._server_limit(jsonb),
  pgbg._user_limit(jsonb),
  pgbg._launch_error_is_transient(text)
TO PUBLIC;
