-- Job registry, schema version 10: a submission looks at less.
--
-- Measured on version 9 (PostgreSQL 15, 2 cores, perf of 1,000 pgbg.enqueue calls on a quiet
-- server): besides the read of pg_settings (the session's settings, which a job needs), a
-- submission read pg_background's functions from the catalog twice (pgbg.pg_background_info,
-- once for the caller's rights and again in pgbg._enqueue_job, which trusts nothing) and copied
-- the server's whole lock tables (pg_locks: regular and predicate locks) to learn whether its
-- login's launcher is alive.
--
--  - pgbg.enqueue leaves the launch right of a transactional job to pgbg._enqueue_job and asks
--    pgbg._check_launch_rights for the detailed error only when that check fails (a supervised
--    job's wait and result rights are still checked first); pgbg._enqueue_job finds the launch
--    function with pgbg._launch_function, the part of pgbg.pg_background_info it needs;
--  - the launcher's liveness is probed on its own lock: a shared try of the lock the launcher
--    holds exclusively for its life (pg_try_advisory_lock_shared), released at once when it was
--    free. A probe that finds the lock free says "not alive" and the submission starts a
--    launcher; a launcher starting at that very moment may miss its lock and exit, but the
--    prober's own launcher takes its place, so a probe never leaves a login without a launcher.
--    Only when the lock is free does the submission ask pgbg._launcher_alive, which also counts
--    a launcher being started (so a burst of submissions starts one, not one each); that
--    function now counts only the launcher's exclusive hold, never a probe's shared one.
--  - a submission may say whose settings it has: settings_from names an earlier job of the same
--    session (same owner, login and session id, submitted since this backend started and since
--    it last read its configuration files: pg_conf_load_time) whose settings are still the
--    session's, and they are copied instead of read from pg_settings, the larger part of what a
--    submission costs. The proxy passes it only when it has relayed nothing from its client
--    since that job and its jobs.carrySettings are unchanged: nothing else runs SQL in the
--    session. A caller that names a stale job gets settings its own session had, as if it had
--    SET them again: no right is gained. Any check failing means a fresh read.
-- Nothing about what a job is, who may do what, or how it ends changes here.
-- Released: never edit this file; change the registry with a new numbered migration.

-- Is the login's launcher alive? True when another session holds its launcher lock.
CREATE FUNCTION pgbg._launcher_probe(p_login name) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_key integer := pgbg._launcher_key(p_login);
BEGIN
  IF pg_try_advisory_lock_shared(1885825635, v_key) THEN
    PERFORM pg_advisory_unlock_shared(1885825635, v_key);
    RETURN false;
  END IF;
  RETURN true;
END
$fn$;

-- As version 7's, counting only the launcher's own (exclusive) hold of its lock.
CREATE OR REPLACE FUNCTION pgbg._launcher_alive(p_login name) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  RETURN EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'
                    AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                    AND l.classid = 1885825635::oid AND l.objsubid = 2
                    AND l.objid = pgbg._launcher_key(p_login)::oid)
      OR EXISTS (SELECT 1 FROM pgbg.launcher x
                  WHERE x.login = p_login
                    AND x.starting_at > clock_timestamp() - interval '2 seconds');
END
$fn$;

REVOKE ALL ON FUNCTION pgbg._launcher_probe(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbg._launcher_probe(name) TO PUBLIC;

-- The launch function pgbg.pg_background_info() would choose (its launch_function), found the
-- same way and nothing else: what pgbg._enqueue_job needs on every submission, without the
-- result/wait/detach lookups and the GRANT hint that pg_background_info also works out.
CREATE FUNCTION pgbg._launch_function() RETURNS regprocedure
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_ext_schema oid;
  v_launch oid;
BEGIN
  SELECT e.extnamespace INTO v_ext_schema FROM pg_extension e WHERE e.extname = 'pg_background';
  -- 2.x: the unsuffixed launch returns a handle (a composite type)
  SELECT p.oid INTO v_launch
    FROM pg_proc p
    JOIN pg_roles o ON o.oid = p.proowner
    JOIN pg_type t ON t.oid = p.prorettype
   WHERE p.proname = 'pg_background_launch'
     AND p.proargtypes = '25 23'::oidvector
     AND t.typtype = 'c'
     AND o.rolsuper
   ORDER BY (p.pronamespace = v_ext_schema) DESC NULLS LAST,
            (SELECT n.nspname FROM pg_namespace n WHERE n.oid = p.pronamespace)
   LIMIT 1;
  IF v_launch IS NULL THEN
    -- 1.6-1.10: the _v2 names
    SELECT p.oid INTO v_launch
      FROM pg_proc p
      JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.proname = 'pg_background_launch_v2'
       AND p.proargtypes = '25 23'::oidvector
       AND o.rolsuper
     ORDER BY (p.pronamespace = v_ext_schema) DESC NULLS LAST,
              (SELECT n.nspname FROM pg_namespace n WHERE n.oid = p.pronamespace)
     LIMIT 1;
  END IF;
  IF v_launch IS NULL THEN
    -- 1.0-1.5: the v1 API, launch returns the worker's pid
    SELECT p.oid INTO v_launch
      FROM pg_proc p
      JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.proname = 'pg_background_launch'
       AND p.proargtypes = '25 23'::oidvector
       AND p.prorettype = 'int4'::regtype
       AND o.rolsuper
     ORDER BY (p.pronamespace = v_ext_schema) DESC NULLS LAST,
              (SELECT n.nspname FROM pg_namespace n WHERE n.oid = p.pronamespace)
     LIMIT 1;
  END IF;
  RETURN v_launch::regprocedure;
END
$fn$;

REVOKE ALL ON FUNCTION pgbg._launch_function() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbg._launch_function() TO PUBLIC;

-- Records a queued job (see version 6): as version 6's, with pgbg._launch_function for the
-- launch right instead of the whole of pgbg.pg_background_info.
CREATE OR REPLACE FUNCTION pgbg._enqueue_job(
  p_owner name,
  p_statement text,
  p_kind text,
  p_transactional boolean,
  p_rule text,
  p_options jsonb,
  p_priority integer,
  p_idem_key text,
  p_session_id text,
  p_settings jsonb,
  p_limits jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_launch regprocedure;
  v_id bigint;
  v_transactional boolean := COALESCE(p_transactional, true);
  v_existing bigint;
  v_max_attempts integer;
  v_not_before timestamptz;
  v_bad text;
BEGIN
  IF p_owner IS NULL
     OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = p_owner AND pg_has_role(session_user, r.oid, 'MEMBER')) THEN
    RAISE EXCEPTION 'permission denied: role % may not submit jobs as role %', session_user, p_owner
      USING ERRCODE = '42501';
  END IF;
  IF p_statement IS NULL OR btrim(p_statement) = '' THEN
    RAISE EXCEPTION 'pgbg.submit: statement must not be empty' USING ERRCODE = '22023';
  END IF;
  IF p_options IS NOT NULL AND jsonb_typeof(p_options) <> 'object' THEN
    RAISE EXCEPTION 'pgbg.submit: options must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF p_limits IS NOT NULL AND jsonb_typeof(p_limits) <> 'object' THEN
    RAISE EXCEPTION 'limits must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF p_settings IS NOT NULL THEN
    IF jsonb_typeof(p_settings) <> 'object' THEN
      RAISE EXCEPTION 'settings must be a JSON object of setting names and values' USING ERRCODE = '22023';
    END IF;
    SELECT e.key INTO v_bad FROM jsonb_each(p_settings) e
     WHERE jsonb_typeof(e.value) NOT IN ('string', 'null') OR NOT pgbg._setting_is_captured(e.key) LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'setting "%" cannot be carried by a job', v_bad USING ERRCODE = '22023',
        HINT = 'Values must be strings; role, session_authorization, timeouts and transaction defaults are the job''s own.';
    END IF;
  END IF;

  v_launch := pgbg._launch_function();
  IF v_launch IS NULL THEN
    RAISE EXCEPTION 'pg_background is not installed in database %', current_database()
      USING ERRCODE = '42883', HINT = 'CREATE EXTENSION pg_background; as a superuser';
  END IF;
  IF NOT has_function_privilege(p_owner, v_launch::oid, 'EXECUTE')
     OR NOT has_function_privilege(session_user, v_launch::oid, 'EXECUTE') THEN
    RAISE EXCEPTION 'permission denied: role % may not launch pg_background workers in database %', p_owner, current_database()
      USING ERRCODE = '42501',
            DETAIL = format('%s needs EXECUTE on %s', p_owner, v_launch::text);
  END IF;

  v_max_attempts := CASE WHEN v_transactional THEN COALESCE((p_options->>'max_attempts')::integer, 1) ELSE 1 END;
  IF v_max_attempts NOT BETWEEN 1 AND 100 THEN
    RAISE EXCEPTION 'max_attempts must be between 1 and 100, not %', v_max_attempts USING ERRCODE = '22023';
  END IF;
  v_not_before := GREATEST(clock_timestamp(), (p_options->>'not_before')::timestamptz);
  v_not_before := pgbg.window_opens(p_options->'window', v_not_before);
  IF v_not_before <= clock_timestamp() THEN
    v_not_before := NULL;
  END IF;

  IF p_idem_key IS NOT NULL THEN
    SELECT j.id INTO v_existing FROM pgbg.job j
     WHERE j.owner = p_owner AND j.idem_key = p_idem_key AND j.state IN ('queued', 'running')
     LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'a job with key "%" is already queued or running', p_idem_key
        USING ERRCODE = '23505', DETAIL = format('job %s', v_existing);
    END IF;
  END IF;

  BEGIN
    INSERT INTO pgbg.job (owner, login, statement, kind, transactional, supervised, rule, options, priority, idem_key,
                          launcher_pid, launcher_start, session_id, application_name, max_attempts, not_before,
                          settings, limits)
    VALUES (p_owner, session_user, p_statement, p_kind, v_transactional, NOT v_transactional, p_rule,
            COALESCE(p_options, '{}'::jsonb), COALESCE(p_priority, 0), p_idem_key,
            pg_backend_pid(),
            (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()),
            p_session_id,
            NULLIF(current_setting('application_name'), ''),
            v_max_attempts, v_not_before,
            p_settings, p_limits)
    RETURNING id INTO v_id;
  EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'a job with key "%" is already queued or running', p_idem_key
      USING ERRCODE = '23505';
  END;
  RETURN v_id;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Submission: as version 7's pgbg.enqueue, with the changes above (a new argument at the
-- end: the old signature goes, or calls with its arguments would match two functions)
-- ---------------------------------------------------------------------------------------

DROP FUNCTION pgbg.enqueue(text, text, boolean, text, jsonb, integer, text, text, jsonb, integer, text[]);

CREATE FUNCTION pgbg.enqueue(
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
  settings_from bigint DEFAULT NULL,
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
  v_settings pg_catalog.jsonb;
BEGIN
  existing := false;
  PERFORM pgbg._check_options(enqueue.options, enqueue.priority);
  IF pg_catalog.jsonb_typeof(v_limits) IS NULL OR NOT (pg_catalog.jsonb_typeof(v_limits) OPERATOR(pg_catalog.=) 'object') THEN
    RAISE EXCEPTION 'limits must be a JSON object' USING ERRCODE = '22023';
  END IF;
  -- A transactional job needs only the launch right, which pgbg._enqueue_job checks (trusting
  -- nothing); pgbg._check_launch_rights, which names what is missing, runs when that check
  -- fails. A supervised one also needs the wait and result functions: checked here first.
  IF NOT v_transactional THEN
    PERFORM pgbg._check_launch_rights(false);
  END IF;
  -- Held until this transaction commits: the login's launcher cannot exit meanwhile, so it
  -- either sees this job or is seen to be gone (then a new one is started below).
  PERFORM pg_catalog.pg_advisory_xact_lock_shared(1885825636, pgbg._launcher_key(session_user));
  IF enqueue.settings_from IS NOT NULL THEN
    -- (row-level security shows the caller only its own jobs, and owner is checked anyway)
    SELECT j.settings INTO v_settings FROM pgbg.job j
     WHERE j.id OPERATOR(pg_catalog.=) enqueue.settings_from
       AND j.owner OPERATOR(pg_catalog.=) current_user
       AND j.login OPERATOR(pg_catalog.=) session_user
       AND j.session_id OPERATOR(pg_catalog.=) enqueue.session_id
       AND j.submitted_at OPERATOR(pg_catalog.>=) pg_catalog.pg_conf_load_time()
       AND j.submitted_at OPERATOR(pg_catalog.>=) (SELECT a.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a)
       AND j.settings OPERATOR(pg_catalog.?&) COALESCE(enqueue.carry_settings, ARRAY[]::pg_catalog.text[]);
  END IF;
  IF v_settings IS NULL THEN
    v_settings := pgbg.session_settings(enqueue.carry_settings);
  END IF;
  BEGIN
    job_id := pgbg._enqueue_job(current_user, enqueue.statement, enqueue.kind, v_transactional, enqueue.rule,
                                enqueue.options, enqueue.priority, enqueue.idem_key, enqueue.session_id,
                                v_settings, v_limits);
  EXCEPTION WHEN insufficient_privilege THEN
    PERFORM pgbg._check_launch_rights(v_transactional); -- raises the detailed 42501 if that is why
    RAISE;
  WHEN unique_violation THEN
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
  launcher_alive := pgbg._launcher_probe(session_user);
  IF NOT launcher_alive THEN
    launcher_alive := pgbg._launcher_alive(session_user); -- a launcher being started counts
  END IF;
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

REVOKE ALL ON FUNCTION pgbg.enqueue(text, text, boolean, text, jsonb, integer, text, text, jsonb, integer, text[], bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbg.enqueue(text, text, boolean, text, jsonb, integer, text, text, jsonb, integer, text[], bigint) TO PUBLIC;
