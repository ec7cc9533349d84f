-- Job registry, schema version 7: what a job costs on its way through the registry.
--
-- Measured on version 6 (PostgreSQL 15, 2 cores, perf): a submission (pgbg.enqueue) cost about
-- 3 ms of server CPU and the launcher about 4 ms per job, two thirds of it in fmgr_sql. In
-- PostgreSQL 15 a SQL-language function that cannot be inlined (it has a SET clause or is
-- SECURITY DEFINER) is parsed, analysed and planned again on every call; a PL/pgSQL function
-- keeps its plans for the session. So the helpers on the submission and launch paths become
-- PL/pgSQL (same names, arguments, results and rights), the small pure ones become inlinable
-- (no SET clause, every operator and type schema-qualified), and:
--
--  - pgbg.enqueue looks at its login's launcher once when one is alive (it used to look three
--    times);
--  - the launcher commits once per batch of launches (up to 8, or after a failed launch)
--    instead of once per job, and a launch whose job has the same owner and settings as the
--    previous launch of the same transaction skips the scan of pg_settings that puts every
--    other setting back to its built-in default (the SET LOCALs of that scan are still in
--    force: they end with the transaction).
--
-- Nothing about what a job is, who may do what, or how it ends changes here.
-- Released: never edit this file; change the registry with a new numbered migration.

-- ---------------------------------------------------------------------------------------
-- Small pure helpers: inlinable
-- ---------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgbg._setting_is_captured(p_name text) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $fn$
  SELECT NOT (p_name OPERATOR(pg_catalog.=) ANY (ARRAY[
                'role', 'session_authorization', 'client_encoding', 'statement_timeout',
                'default_transaction_read_only', 'default_transaction_isolation',
                'default_transaction_deferrable', 'transaction_isolation', 'transaction_read_only',
                'transaction_deferrable', 'idle_in_transaction_session_timeout', 'idle_session_timeout',
                'client_min_messages']::pg_catalog.text[]))
     -- E'' literals: a session with standard_conforming_strings = off reads them the same
     AND NOT (p_name OPERATOR(pg_catalog.~~) E'pg\\_background.%')
     AND NOT (p_name OPERATOR(pg_catalog.~~) E'pgbg\\_standin.%')
$fn$;

CREATE OR REPLACE FUNCTION pgbg._run_sql(p_job_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
AS $fn$
  SELECT 'SELECT pgbg.run_job(' OPERATOR(pg_catalog.||) p_job_id::pg_catalog.text OPERATOR(pg_catalog.||) ')'
$fn$;

-- ---------------------------------------------------------------------------------------
-- Helpers with catalog or table reads: PL/pgSQL, so their plans are kept
-- ---------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgbg._launcher_key(p_login name) RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  -- The role's oid (a login that does not exist has no key)
  RETURN (to_regrole(quote_ident(p_login))::oid::bigint % 2147483647)::integer;
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._launcher_alive(p_login name) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.locktype = 'advisory' AND l.granted
                    AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                    AND l.classid = 1885825635::oid AND l.objsubid = 2
                    AND l.objid = pgbg._launcher_key(p_login)::oid)
      OR EXISTS (SELECT 1 FROM pgbg.launcher x
                  WHERE x.login = p_login
                    AND x.starting_at > clock_timestamp() - interval '2 seconds');
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._is_live_launcher() RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.locktype = 'advisory' AND l.granted AND l.pid = pg_backend_pid()
                    AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                    AND l.classid = 1885825635::oid AND l.objsubid = 2
                    AND l.objid = pgbg._launcher_key(session_user)::oid);
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._launcher_has_work() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN EXISTS (SELECT 1 FROM pgbg.job j WHERE j.login = session_user AND j.state IN ('queued', 'running'));
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._may_manage(p_owner name) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  -- (to_regrole, not the pg_roles view: a worker plans every query cold)
  RETURN pg_has_role(session_user, 'pgbg_admin', 'MEMBER')
      OR COALESCE(pg_has_role(session_user, to_regrole(quote_ident(p_owner))::oid, 'MEMBER'), false);
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._queue_length() RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (SELECT count(*) FROM pgbg.job WHERE state = 'queued');
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._command_tag(p_kind text, p_rows bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN CASE
           WHEN p_kind IS NULL THEN NULL
           WHEN upper(p_kind) = 'INSERT' THEN 'INSERT 0 ' || COALESCE(p_rows, 0)
           WHEN upper(p_kind) IN ('UPDATE', 'DELETE', 'SELECT', 'MERGE', 'FETCH', 'MOVE', 'COPY')
             THEN upper(p_kind) || ' ' || COALESCE(p_rows, 0)
           WHEN upper(p_kind) IN ('CREATE TABLE AS', 'SELECT INTO', 'CREATE MATERIALIZED VIEW')
             THEN 'SELECT ' || COALESCE(p_rows, 0)
           ELSE p_kind
         END;
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._record_attempt(p_job_id bigint, p_outcome text, p_sqlstate text, p_error text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  INSERT INTO pgbg.job_attempt (job_id, attempt, worker_pid, started_at, outcome, sqlstate, error)
  SELECT j.id, GREATEST(j.attempts, 1), j.worker_pid, COALESCE(j.launched_at, j.started_at), p_outcome, p_sqlstate, p_error
    FROM pgbg.job j WHERE j.id = p_job_id
  ON CONFLICT (job_id, attempt) DO NOTHING;
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._channel_for(p_role oid) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN (SELECT 'pgbg_jobs_' || left(encode(sha256(convert_to(s.secret || ':' || p_role::text, 'UTF8')), 'hex'), 32)
            FROM pgbg.notify_secret s);
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._notify(p_job_id bigint, p_state text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  PERFORM pg_notify(pgbg._channel_for(to_regrole(quote_ident(j.owner))::oid), json_build_object('id', p_job_id)::text)
     FROM pgbg.job j
    WHERE j.id = p_job_id AND to_regrole(quote_ident(j.owner)) IS NOT NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg.session_settings(p_names text[] DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY INVOKER
AS $fn$
BEGIN
  RETURN (
  SELECT COALESCE(pg_catalog.jsonb_object_agg(x.name, x.value), pg_catalog.jsonb_build_object())
    FROM (SELECT s.name, pg_catalog.current_setting(s.name) AS value
            FROM pg_catalog.pg_settings s
           WHERE NOT (s.source OPERATOR(pg_catalog.=) ANY (ARRAY['default', 'override']::pg_catalog.text[]))
             AND s.context OPERATOR(pg_catalog.=) ANY (ARRAY['user', 'superuser']::pg_catalog.text[])
             AND pgbg._setting_is_captured(s.name)
          UNION
          SELECT n.name, pg_catalog.current_setting(n.name, true)
            FROM pg_catalog.unnest(p_names) AS n(name)
           WHERE n.name OPERATOR(pg_catalog.~) E'^[A-Za-z_][A-Za-z0-9_$]*\\.[A-Za-z0-9_.$]+$'
             AND pgbg._setting_is_captured(n.name)
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) n.name)) x);
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._launcher_candidates(p_limit integer)
RETURNS TABLE (job_id bigint, limits jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN QUERY
  SELECT j.id, pgbg._job_limits(j) FROM pgbg.job j
   WHERE j.state = 'queued' AND j.login = session_user AND NOT j.cancel_requested
     AND (j.not_before IS NULL OR j.not_before <= clock_timestamp())
   ORDER BY j.priority DESC, j.queued_at, j.id
   LIMIT p_limit;
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg._launcher_job(p_job_id bigint)
RETURNS TABLE (owner name, transactional boolean, options jsonb, settings jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN QUERY
  SELECT j.owner, j.transactional, j.options, j.settings FROM pgbg.job j
   WHERE j.id = p_job_id AND j.login = session_user AND j.state = 'queued';
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Submission: the login's launcher is looked at once when it is alive
-- ---------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgbg.enqueue(
  statement text,
  kind text,
  transactional boolean,
  rule text DEFAULT NULL,
  options jsonb DEFAULT NULL,
  priority integer DEFAULT NULL,
  idem_key text DEFAULT NULL,
  session_id text DEFAULT NULL,
  limits jsonb DEFAULT NULL,
  launcher_idle_ms integer DEFAULT 10000,
  carry_settings text[] DEFAULT NULL,
  OUT job_id bigint,
  OUT state text,
  OUT existing boolean,
  OUT launcher_started integer,
  OUT launcher_alive boolean)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v_transactional boolean := COALESCE(enqueue.transactional, true);
  v_limits pg_catalog.jsonb := COALESCE(enqueue.limits, pg_catalog.jsonb_build_object());
  v_mine pg_catalog.int8;
BEGIN
  existing := false;
  PERFORM pgbg._check_options(enqueue.options, enqueue.priority);
  IF pg_catalog.jsonb_typeof(v_limits) IS NULL OR NOT (pg_catalog.jsonb_typeof(v_limits) OPERATOR(pg_catalog.=) 'object') THEN
    RAISE EXCEPTION 'limits must be a JSON object' USING ERRCODE = '22023';
  END IF;
  PERFORM pgbg._check_launch_rights(v_transactional);
  -- Held until this transaction commits: the login's launcher cannot exit meanwhile, so it
  -- either sees this job or is seen to be gone (then a new one is started below).
  PERFORM pg_catalog.pg_advisory_xact_lock_shared(1885825636, pgbg._launcher_key(session_user));
  BEGIN
    job_id := pgbg._enqueue_job(current_user, enqueue.statement, enqueue.kind, v_transactional, enqueue.rule,
                                enqueue.options, enqueue.priority, enqueue.idem_key, enqueue.session_id,
                                pgbg.session_settings(enqueue.carry_settings), v_limits);
  EXCEPTION WHEN unique_violation THEN
    SELECT j.id, j.state INTO job_id, state FROM pgbg.job j
     WHERE j.owner OPERATOR(pg_catalog.=) current_user AND j.idem_key OPERATOR(pg_catalog.=) enqueue.idem_key
       AND (j.state OPERATOR(pg_catalog.=) 'queued' OR j.state OPERATOR(pg_catalog.=) 'running')
     ORDER BY j.id DESC LIMIT 1;
    IF NOT FOUND THEN
      RAISE;
    END IF;
    existing := true;
    launcher_alive := pgbg._launcher_alive(session_user);
    RETURN;
  END;
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
  launcher_alive := pgbg._launcher_alive(session_user);
  IF NOT launcher_alive THEN
    -- A launcher that cannot start now (no free worker slot) does not undo the submission: the
    -- job waits, visibly (pgbg.jobs.waiting_for_launcher), for the next submission or session
    -- of this login to start one.
    BEGIN
      launcher_started := pgbg.start_launcher(enqueue.launcher_idle_ms);
    EXCEPTION WHEN OTHERS THEN
      launcher_started := NULL;
    END;
    launcher_alive := pgbg._launcher_alive(session_user);
  END IF;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Launch: the settings scan once per owner and settings per transaction
-- ---------------------------------------------------------------------------------------

-- As version 6's pgbg._launcher_launch, except that the scan of pg_settings that puts every
-- setting the job does not carry back to its built-in default runs only when the same
-- transaction has not just done it for the same owner and settings. The caller hands back the
-- note the previous launch returned (what its scan set, for which owner and settings, in which
-- transaction); a note of another transaction or of other settings is ignored, so a wrong note
-- costs a scan, never a job's settings. With a matching note only the settings this function
-- puts back to the launcher's own after each launch are set again.
-- SECURITY INVOKER and unpinned: the worker copies this session's settings at launch.
CREATE FUNCTION pgbg._launcher_launch_next(
  p_job_id bigint,
  p_note jsonb,
  OUT worker_pid integer,
  OUT cookie bigint,
  OUT api integer,
  OUT transactional boolean,
  OUT note jsonb)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v record;
  s record;
  v_sql pg_catalog.text;
  v_timeout pg_catalog.text;
  v_other_role boolean;
  v_for pg_catalog.text;
  v_resets pg_catalog.jsonb;
BEGIN
  SELECT * INTO v FROM pgbg._launcher_job(p_job_id);
  IF NOT FOUND THEN
    RAISE EXCEPTION 'job % is not a queued job of login %', p_job_id, session_user USING ERRCODE = '55000';
  END IF;
  transactional := v.transactional;
  note := p_note;
  v_other_role := v.owner OPERATOR(pg_catalog.<>) session_user;
  v_timeout := COALESCE(v.options OPERATOR(pg_catalog.->>) 'timeout_ms', '0');
  IF v_timeout OPERATOR(pg_catalog.!~) '^[0-9]+$' THEN
    RAISE EXCEPTION 'options.timeout_ms must be a whole number of milliseconds, not %', v_timeout USING ERRCODE = '22023';
  END IF;
  IF v.transactional THEN
    -- The worker's pgbg.run_job waits for this lock, i.e. for the commit that marks it launched.
    PERFORM pg_catalog.pg_advisory_xact_lock(1885825634, (p_job_id OPERATOR(pg_catalog.%) 2147483647)::pg_catalog.int4);
  END IF;
  IF v_other_role THEN
    PERFORM pg_catalog.set_config('role', v.owner, true);
  END IF;
  v_sql := pgbg.launch_sql(p_job_id);

  -- From here to the launch, only local settings: every setting this launcher has from
  -- elsewhere (its own, or copied from the session that started it) back to the built-in
  -- default unless the job has it, then the job's own (its session's, see
  -- pgbg.session_settings), then what every job gets. RESET would not do: in a pg_background
  -- worker the reset values are those of the session it was copied from.
  -- Only what differs is set (a superuser-only setting from postgresql.conf is the same here).
  -- A job recorded without settings (before version 6) keeps the launcher's.
  IF v.settings IS NOT NULL THEN
    v_for := pg_catalog.md5(pg_catalog.txid_current()::pg_catalog.text OPERATOR(pg_catalog.||) ' '
                            OPERATOR(pg_catalog.||) v.owner::pg_catalog.text OPERATOR(pg_catalog.||) ' '
                            OPERATOR(pg_catalog.||) v.settings::pg_catalog.text);
    IF p_note IS NOT NULL AND (p_note OPERATOR(pg_catalog.->>) 'for') OPERATOR(pg_catalog.=) v_for
       AND pg_catalog.jsonb_typeof(p_note OPERATOR(pg_catalog.->) 'resets') OPERATOR(pg_catalog.=) 'object' THEN
      -- Done by the previous launch of this transaction: only the settings put back after it.
      FOR s IN SELECT e.key AS name, e.value AS boot_val FROM pg_catalog.jsonb_each_text(p_note OPERATOR(pg_catalog.->) 'resets') e
                WHERE e.key OPERATOR(pg_catalog.=) ANY (ARRAY['search_path', 'client_min_messages', 'standard_conforming_strings']::pg_catalog.text[]) LOOP
        PERFORM pg_catalog.set_config(s.name, s.boot_val, true);
      END LOOP;
    ELSE
      v_resets := pg_catalog.jsonb_build_object();
      FOR s IN SELECT t.name, t.boot_val FROM pg_catalog.pg_settings t
                WHERE NOT (t.source OPERATOR(pg_catalog.=) ANY (ARRAY['default', 'override']::pg_catalog.text[]))
                  AND (t.context OPERATOR(pg_catalog.=) 'user'
                       OR (t.context OPERATOR(pg_catalog.=) 'superuser' AND pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on'))
                  AND pgbg._setting_is_captured(t.name)
                  AND NOT (v.settings OPERATOR(pg_catalog.?) t.name)
                  AND t.boot_val IS NOT NULL LOOP
        IF NOT (pg_catalog.current_setting(s.name) OPERATOR(pg_catalog.=) s.boot_val) THEN
          PERFORM pg_catalog.set_config(s.name, s.boot_val, true);
          v_resets := v_resets OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(s.name, s.boot_val);
        END IF;
      END LOOP;
      note := pg_catalog.jsonb_build_object('for', v_for, 'resets', v_resets);
    END IF;
  ELSE
    note := NULL;
  END IF;
  FOR s IN SELECT e.key, COALESCE(e.value, '') AS value FROM pg_catalog.jsonb_each_text(COALESCE(v.settings, '{}')) e LOOP
    -- (no IS DISTINCT FROM: it would take "=" from the search_path this loop may just have set)
    IF pg_catalog.current_setting(s.key, true) IS NULL
       OR NOT (pg_catalog.current_setting(s.key, true) OPERATOR(pg_catalog.=) s.value) THEN
      PERFORM pg_catalog.set_config(s.key, s.value, true);
    END IF;
  END LOOP;
  PERFORM pg_catalog.set_config('default_transaction_read_only', 'off', true);
  PERFORM pg_catalog.set_config('default_transaction_isolation', 'read committed', true);
  PERFORM pg_catalog.set_config('statement_timeout', v_timeout, true);
  -- A transactional job records its own outcome: detached, its worker is not tracked here.
  SELECT w.worker_pid, w.cookie, w.api INTO worker_pid, cookie, api FROM pgbg._launch_worker(v_sql, v.transactional) w;
  -- Back to the launcher's own settings for the rest of this transaction.
  PERFORM pg_catalog.set_config('statement_timeout', '0', true);
  PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
  PERFORM pg_catalog.set_config('client_min_messages', 'error', true);
  PERFORM pg_catalog.set_config('standard_conforming_strings', 'on', true);
  IF v_other_role THEN
    PERFORM pg_catalog.set_config('role', 'none', true);
  END IF;
  PERFORM pgbg._launcher_mark(p_job_id, worker_pid, cookie, api);
END
$fn$;

-- Version 6's single launch, for any caller of it: always with the full scan.
CREATE OR REPLACE FUNCTION pgbg._launcher_launch(
  p_job_id bigint,
  OUT worker_pid integer,
  OUT cookie bigint,
  OUT api integer,
  OUT transactional boolean)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
BEGIN
  SELECT l.worker_pid, l.cookie, l.api, l.transactional INTO worker_pid, cookie, api, transactional
    FROM pgbg._launcher_launch_next(p_job_id, NULL) l;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- The launcher: as version 6's, with launches committed in batches
-- ---------------------------------------------------------------------------------------

-- A transactional job's worker waits for the commit that marks it launched (pgbg.run_job), so a
-- batch delays a job's start by at most the batch's other launches (a few milliseconds each);
-- the lock pgbg.admit takes to serialise admission is held as long.
CREATE OR REPLACE PROCEDURE pgbg.run_launcher(idle_ms integer DEFAULT 10000)
LANGUAGE plpgsql
AS $pr$
DECLARE
  v_key pg_catalog.int4;
  h_job pg_catalog.int8[] := '{}';
  h_owner pg_catalog.name[] := '{}';
  h_pid pg_catalog.int4[] := '{}';
  h_cookie pg_catalog.int8[] := '{}';
  h_api pg_catalog.int4[] := '{}';
  c record;
  l record;
  i pg_catalog.int4;
  v_worked boolean;
  v_blocked boolean;
  v_last_work pg_catalog.timestamptz;
  v_last_reconcile pg_catalog.timestamptz := 'epoch';
  v_last_report pg_catalog.timestamptz := 'epoch';
  v_sleep pg_catalog.float8 := 0.002;
  v_sqlstate pg_catalog.text;
  v_error pg_catalog.text;
  v_stopped boolean;
  v_batch pg_catalog.int4;
  v_note pg_catalog.jsonb;
BEGIN
  -- The settings this worker copied belong to the session that started it; each launch sets
  -- its job's own (see pgbg._launcher_launch). The launcher's few of its own:
  PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false);
  PERFORM pg_catalog.set_config('client_min_messages', 'error', false);
  -- The registry's functions are written for standard_conforming_strings = on (a copied "off"
  -- would change what their backslash literals mean).
  PERFORM pg_catalog.set_config('standard_conforming_strings', 'on', false);
  PERFORM pg_catalog.set_config('statement_timeout', '0', false);
  PERFORM pg_catalog.set_config('idle_in_transaction_session_timeout', '0', false);
  PERFORM pg_catalog.set_config('application_name', 'pgbg launcher', false);
  BEGIN
    -- Supervised workers are tracked per session (pg_background's default is 16).
    PERFORM pg_catalog.set_config('pg_background.max_workers', '1000', false);
  EXCEPTION WHEN OTHERS THEN
    NULL; -- a pg_background without this setting has no such limit
  END;
  v_key := pgbg._launcher_key(session_user);
  IF NOT pg_catalog.pg_try_advisory_lock(1885825635, v_key) THEN
    RETURN; -- another launcher of this login is alive
  END IF;
  PERFORM pgbg._launcher_report('start', 0, run_launcher.idle_ms);
  COMMIT;
  v_last_work := pg_catalog.clock_timestamp();

  LOOP
    v_worked := false;
    v_blocked := false;

    -- 1. Supervised workers that have stopped: read and record their outcome.
    i := pg_catalog.cardinality(h_job);
    WHILE i > 0 LOOP
      BEGIN
        v_stopped := pgbg.worker_stopped(h_api[i], h_pid[i], h_cookie[i]);
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT;
        PERFORM pgbg.finish_supervised(h_job[i], 'lost', NULL, v_sqlstate, 'cannot supervise the worker: ' OPERATOR(pg_catalog.||) v_error);
        v_stopped := NULL;
      END;
      IF v_stopped IS NULL OR v_stopped THEN
        IF v_stopped THEN
          PERFORM pgbg._launcher_settle(h_job[i], h_owner[i], h_api[i], h_pid[i], h_cookie[i]);
        END IF;
        h_job := h_job[1:i - 1] OPERATOR(pg_catalog.||) h_job[i + 1:];
        h_owner := h_owner[1:i - 1] OPERATOR(pg_catalog.||) h_owner[i + 1:];
        h_pid := h_pid[1:i - 1] OPERATOR(pg_catalog.||) h_pid[i + 1:];
        h_cookie := h_cookie[1:i - 1] OPERATOR(pg_catalog.||) h_cookie[i + 1:];
        h_api := h_api[1:i - 1] OPERATOR(pg_catalog.||) h_api[i + 1:];
        v_worked := true;
      END IF;
      i := i OPERATOR(pg_catalog.-) 1;
    END LOOP;
    COMMIT;

    -- 2. Recovery: every 2 s (and first thing), settle jobs whose worker is provably gone.
    IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) v_last_reconcile OPERATOR(pg_catalog.>) interval '2 seconds' THEN
      BEGIN
        PERFORM pgbg.reconcile();
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
        RAISE LOG 'pgbg launcher of %: reconcile failed: %', session_user, v_error;
      END;
      v_last_reconcile := pg_catalog.clock_timestamp();
      COMMIT;
    END IF;

    -- 3. Launch what is admitted, up to 8 jobs per transaction (their settings are SET LOCAL;
    -- a launch whose job has the previous one's owner and settings reuses its reset, see
    -- pgbg._launcher_launch_next). A failed launch commits at once.
    v_batch := 0;
    v_note := NULL;
    FOR c IN SELECT * FROM pgbg._launcher_candidates(32) LOOP
      EXIT WHEN v_blocked;
      BEGIN
        IF pgbg.admit(c.job_id, c.limits) THEN
          SELECT * INTO l FROM pgbg._launcher_launch_next(c.job_id, v_note);
          v_note := l.note;
          IF NOT l.transactional THEN
            h_job := pg_catalog.array_append(h_job, c.job_id);
            h_owner := pg_catalog.array_append(h_owner, (SELECT x.owner FROM pgbg.job x WHERE x.id OPERATOR(pg_catalog.=) c.job_id));
            h_pid := pg_catalog.array_append(h_pid, l.worker_pid);
            h_cookie := pg_catalog.array_append(h_cookie, l.cookie);
            h_api := pg_catalog.array_append(h_api, l.api);
          END IF;
          v_worked := true;
          v_batch := v_batch OPERATOR(pg_catalog.+) 1;
        END IF;
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT;
        IF pgbg._launch_error_is_transient(v_sqlstate) AND c.limits OPERATOR(pg_catalog.?) 'server' THEN
          v_blocked := true; -- no free worker slot (or a lock): try again after a pause
        ELSE
          -- For good; or no server-wide limit at all (jobs.maxInFlight: unlimited), where a
          -- launch without a free worker slot fails the job instead of queueing it.
          PERFORM pgbg._launcher_fail(c.job_id, v_sqlstate, v_error);
          v_worked := true;
        END IF;
        v_batch := 8;
      END;
      IF v_batch OPERATOR(pg_catalog.>=) 8 THEN
        COMMIT;
        v_batch := 0;
        v_note := NULL;
      END IF;
    END LOOP;
    COMMIT;
    v_note := NULL;

    IF v_worked THEN
      v_last_work := pg_catalog.clock_timestamp();
      v_sleep := 0.002;
    ELSE
      v_sleep := LEAST(v_sleep OPERATOR(pg_catalog.*) 2, CASE WHEN v_blocked THEN 0.2 ELSE 0.05 END);
    END IF;

    IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) v_last_report OPERATOR(pg_catalog.>) interval '1 second' THEN
      PERFORM pgbg._launcher_report('step', pg_catalog.cardinality(h_job), run_launcher.idle_ms);
      v_last_report := pg_catalog.clock_timestamp();
      COMMIT;
    END IF;

    -- 4. Idle long enough, nothing supervised, nothing queued or running: exit, unless a
    -- submission is committing right now (it holds LAUNCHER_EXIT shared until it commits).
    IF pg_catalog.cardinality(h_job) OPERATOR(pg_catalog.=) 0
       AND (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) v_last_work)
           OPERATOR(pg_catalog.>=) (run_launcher.idle_ms OPERATOR(pg_catalog.*) interval '1 millisecond')
       AND NOT pgbg._launcher_has_work()
       AND pg_catalog.pg_try_advisory_xact_lock(1885825636, v_key) THEN
      IF NOT pgbg._launcher_has_work() THEN
        PERFORM pgbg._launcher_report('exit', 0, run_launcher.idle_ms, 'idle');
        PERFORM pg_catalog.pg_advisory_unlock(1885825635, v_key);
        COMMIT;
        RETURN;
      END IF;
    END IF;
    COMMIT;

    PERFORM pg_catalog.pg_sleep(v_sleep);
    COMMIT;
  END LOOP;
END
$pr$;

REVOKE ALL ON FUNCTION pgbg._launcher_launch_next(bigint, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbg._launcher_launch_next(bigint, jsonb) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- A job's worker: every query it runs is parsed and planned in a fresh process with cold
-- caches, so it avoids catalog views (version 6's _finish, with the same checks)
-- ---------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgbg._finish(job_id bigint, state text, command_tag text, rows bigint,
                             sqlstate text, error text, detail text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v record;
  v_state text;
  v_start timestamptz;
  v_delay_ms double precision;
BEGIN
  IF _finish.state NOT IN ('succeeded', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'invalid outcome state %', _finish.state USING ERRCODE = '22023';
  END IF;
  IF rtrim(current_query(), E' \t\r\n;') IS DISTINCT FROM 'SELECT pgbg.run_job(' || _finish.job_id::text || ')' THEN
    RAISE EXCEPTION 'pgbg._finish may only be called by pgbg.run_job(%) running as its own statement', _finish.job_id
      USING ERRCODE = '42501';
  END IF;
  SELECT j.owner, j.worker_pid, j.transactional, j.attempts, j.max_attempts, j.options, j.cancel_requested, j.state,
         j.launched_at, j.started_at
    INTO v FROM pgbg.job j WHERE j.id = _finish.job_id
     -- the latest version: a pgbg.cancel that signalled this worker before it committed its
     -- cancel_requested must be seen, or a cancelled job would be put back in the queue
     FOR UPDATE;
  IF NOT FOUND OR NOT pgbg._may_manage(v.owner) THEN
    RAISE EXCEPTION 'job % does not exist', _finish.job_id USING ERRCODE = '42704';
  END IF;
  IF v.worker_pid IS NOT NULL AND v.worker_pid <> pg_backend_pid() THEN
    RAISE EXCEPTION 'job % belongs to worker %, not to this process', _finish.job_id, v.worker_pid
      USING ERRCODE = '42501';
  END IF;
  -- (pg_stat_get_activity, not the pg_stat_activity view: a worker plans every query cold)
  SELECT a.backend_start INTO v_start FROM pg_stat_get_activity(pg_backend_pid()) a;

  -- A transient failure with attempts left: back to the queue after an exponential backoff with
  -- jitter (half the delay fixed, half random, so retries of jobs that collided spread out).
  -- The statement's effects were rolled back by run_job; this transaction commits the retry.
  IF ((_finish.state = 'failed' AND _finish.sqlstate IN ('40001', '40P01', '55P03'))
       OR (_finish.state = 'cancelled' AND _finish.sqlstate = '57014'
           -- its own timeout is a failure (the message may be in any language: look at the clock)
           AND COALESCE(_finish.error, '') NOT LIKE '%statement timeout%'
           AND NOT (COALESCE((v.options->>'timeout_ms')::bigint, 0) > 0
                    AND clock_timestamp() - COALESCE(v.launched_at, v.started_at, clock_timestamp())
                        >= (v.options->>'timeout_ms')::bigint * interval '0.95 millisecond')))
     AND v.state IN ('queued', 'running') AND v.attempts < v.max_attempts AND NOT v.cancel_requested THEN
    v_delay_ms := LEAST(COALESCE((v.options->>'retry_max_ms')::double precision, 30000),
                        COALESCE((v.options->>'retry_base_ms')::double precision, 500) * 2 ^ GREATEST(v.attempts - 1, 0));
    v_delay_ms := v_delay_ms * (0.5 + random() / 2);
    PERFORM pgbg._record_attempt(_finish.job_id, 'retried', _finish.sqlstate, _finish.error);
    UPDATE pgbg.job j
       SET state = 'queued',
           sqlstate = _finish.sqlstate,
           error = format('attempt %s of %s failed, retrying: %s', v.attempts, v.max_attempts, _finish.error),
           error_detail = _finish.detail,
           not_before = clock_timestamp() + v_delay_ms * interval '1 millisecond',
           queued_at = clock_timestamp(),
           worker_pid = NULL, worker_start = NULL, cookie = NULL, api = NULL
     WHERE j.id = _finish.job_id;
    PERFORM pgbg._notify(_finish.job_id, 'queued');
    RETURN;
  END IF;

  UPDATE pgbg.job j
     SET state = CASE WHEN _finish.state = 'cancelled' AND NOT j.cancel_requested THEN 'failed'
                      ELSE _finish.state END,
         command_tag = _finish.command_tag,
         rows = _finish.rows,
         sqlstate = _finish.sqlstate,
         error = _finish.error,
         error_detail = _finish.detail,
         started_at = COALESCE(j.started_at, now()),
         finished_at = clock_timestamp(),
         worker_pid = COALESCE(j.worker_pid, pg_backend_pid()),
         worker_start = COALESCE(j.worker_start, v_start)
   WHERE j.id = _finish.job_id AND j.state IN ('queued', 'running')
  RETURNING j.state INTO v_state;
  IF NOT FOUND THEN
    SELECT j.state INTO v_state FROM pgbg.job j WHERE j.id = _finish.job_id;
    RAISE EXCEPTION 'job % is already %; its statement''s effects are rolled back', _finish.job_id, v_state
      USING ERRCODE = '55000';
  END IF;
  PERFORM pgbg._record_attempt(_finish.job_id, v_state, _finish.sqlstate, _finish.error);
  PERFORM pgbg._notify(_finish.job_id, v_state);
END
$fn$;
