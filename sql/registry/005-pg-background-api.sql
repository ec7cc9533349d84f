-- Job registry, schema version 5: every pg_background API generation, chosen by which functions
-- exist (DESIGN.md decision 9), never by version strings.
--
--   generation  versions   launch                                   wait (non-blocking poll)                  result / detach
--   'v1'        1.0-1.5    pg_background_launch(text, int4) -> int4 none: the worker's pid in pg_stat_activity pg_background_result(int4) / _detach(int4)
--   'v2'        1.6-1.10   pg_background_launch_v2(text, int4)      pg_background_wait_v2_timeout(p, c, 0)    pg_background_result_v2(int4, int8) / _detach_v2
--   'handle'    2.x        pg_background_launch(text, int4)         pg_background_wait(p, c, 1)               pg_background_result(int4, int8) / _detach(int4, int8)
--                          -> pg_background_handle (pid, cookie)
--
-- 2.0 removed the v1 API and pg_background_wait_v2_timeout, gave the unsuffixed names to the
-- handle API and kept the other _v2 names as deprecated aliases that 3.0 drops: the registry uses
-- the unsuffixed names there and never the aliases. The column pgbg.job.api keeps its meaning,
-- the shape of the handle: 1 = a pid (v1), 2 = (pid, cookie) (v2 and handle); which names serve
-- a handle is decided by pgbg.pg_background_info() when it is used.
--
-- Facts about 2.0 this file relies on (source: vibhorkum/pg_background 2.0, measured on
-- PostgreSQL 15):
--  - pg_background_wait(pid, cookie, timeout_ms) with timeout_ms <= 0 blocks until the worker
--    exits: a supervisor must pass a positive timeout (1 ms) to poll without blocking, since a
--    blocked statement holds the snapshot that CREATE INDEX CONCURRENTLY waits for;
--  - pg_background_cancel(pid, cookie, grace_ms) escalates to SIGKILL after grace_ms > 0 before
--    2.0.2, which restarts the whole server: nothing here calls any cancel function;
--  - a worker still shows backend_type 'pg_background' in pg_stat_activity, but with
--    application_name 'pg_background:<its pid>' instead of the launching session's;
--  - a worker turns SIGTERM (pg_terminate_backend) into a query cancel: pgbg.run_job catches it
--    and records 'failed' (57014) where 1.8's worker dies and reconciliation says 'lost'.
--
-- Redefines: pgbg.pg_background_info (new OUT columns, so dropped and recreated), pgbg.launch_job,
-- and, for an exact permission error, pgbg.submit (version 3's, whose DETAIL now names the
-- functions the role lacks EXECUTE on; nothing else in it changed). Adds pgbg.worker_stopped and
-- pgbg.worker_result, which the supervising session (src/jobs/supervise.ts) calls.

-- ---------------------------------------------------------------------------------------
-- Detection
-- ---------------------------------------------------------------------------------------
DROP FUNCTION pgbg.pg_background_info();

-- What pg_background offers the calling role in this database. Works for the extension and for
-- a stand-in that defines the same functions without an extension row. fn_schema is where the
-- launch function lives: the API is called schema-qualified with it.
--  api: the handle's shape, 1 (pid) or 2 (pid, cookie);  generation: 'v1', 'v2' or 'handle'.
--  missing_for_launch / missing_for_supervision: the functions (with their signatures) the
--  current role lacks EXECUTE on, or that do not exist, for a transactional / a supervised job;
--  NULL when nothing is missing.
CREATE FUNCTION pgbg.pg_background_info(
  OUT installed boolean,
  OUT fn_schema name,
  OUT extversion text,
  OUT api integer,
  OUT launch_function regprocedure,
  OUT can_launch boolean,
  OUT can_supervise boolean,
  OUT grant_hint text,
  OUT generation text,
  OUT result_function regprocedure,
  OUT wait_function regprocedure,
  OUT detach_function regprocedure,
  OUT missing_for_launch text,
  OUT missing_for_supervision text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_ext_schema oid;
  v_launch oid;
  v_ns oid;
  v_need text[];       -- what a supervised job needs, as "regprocedure text" or "name(args)" when absent
  v_lacking text[] := '{}';
  v_role_covers boolean;
  v_fn text;
  v_oid oid;
BEGIN
  SELECT e.extnamespace, e.extversion INTO v_ext_schema, extversion
    FROM pg_extension e WHERE e.extname = 'pg_background';

  -- 2.x: the unsuffixed launch returns a handle (a composite type), not v1's int4 pid.
  -- Only functions owned by a superuser count (the extension's and the stand-in's are): a role
  -- that may create functions in some schema must not get other roles' jobs launched through
  -- its own code. Prefer the extension's schema, then by schema name.
  SELECT p.oid, p.pronamespace INTO v_launch, v_ns
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
  IF v_launch IS NOT NULL THEN
    generation := 'handle';
    api := 2;
    SELECT p.oid INTO result_function FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.proname = 'pg_background_result' AND p.pronamespace = v_ns AND o.rolsuper AND p.proargtypes = '23 20'::oidvector;
    SELECT p.oid INTO wait_function FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.proname = 'pg_background_wait' AND p.pronamespace = v_ns AND o.rolsuper AND p.proargtypes = '23 20 23'::oidvector
       AND p.prorettype = 'bool'::regtype;
    SELECT p.oid INTO detach_function FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.proname = 'pg_background_detach' AND p.pronamespace = v_ns AND o.rolsuper AND p.proargtypes = '23 20'::oidvector;
    v_need := ARRAY[v_launch::regprocedure::text,
                    COALESCE(result_function::text, 'pg_background_result(integer,bigint)'),
                    COALESCE(wait_function::text, 'pg_background_wait(integer,bigint,integer)')];
  ELSE
    -- 1.6-1.10: the _v2 names.
    SELECT p.oid, p.pronamespace INTO v_launch, v_ns
      FROM pg_proc p
      JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.proname = 'pg_background_launch_v2'
       AND p.proargtypes = '25 23'::oidvector
       AND o.rolsuper
     ORDER BY (p.pronamespace = v_ext_schema) DESC NULLS LAST,
              (SELECT n.nspname FROM pg_namespace n WHERE n.oid = p.pronamespace)
     LIMIT 1;
    IF v_launch IS NOT NULL THEN
      generation := 'v2';
      api := 2;
      SELECT p.oid INTO result_function FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
       WHERE p.proname = 'pg_background_result_v2' AND p.pronamespace = v_ns AND o.rolsuper AND p.proargtypes = '23 20'::oidvector;
      SELECT p.oid INTO wait_function FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
       WHERE p.proname = 'pg_background_wait_v2_timeout' AND p.pronamespace = v_ns AND o.rolsuper AND p.proargtypes = '23 20 23'::oidvector;
      SELECT p.oid INTO detach_function FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
       WHERE p.proname = 'pg_background_detach_v2' AND p.pronamespace = v_ns AND o.rolsuper AND p.proargtypes = '23 20'::oidvector;
      v_need := ARRAY[v_launch::regprocedure::text,
                      COALESCE(result_function::text, 'pg_background_result_v2(integer,bigint)'),
                      COALESCE(wait_function::text, 'pg_background_wait_v2_timeout(integer,bigint,integer)')];
    ELSE
      -- 1.0-1.5: the v1 API, launch returns the worker's pid.
      SELECT p.oid, p.pronamespace INTO v_launch, v_ns
        FROM pg_proc p
        JOIN pg_roles o ON o.oid = p.proowner
       WHERE p.proname = 'pg_background_launch'
         AND p.proargtypes = '25 23'::oidvector
         AND p.prorettype = 'int4'::regtype
         AND o.rolsuper
       ORDER BY (p.pronamespace = v_ext_schema) DESC NULLS LAST,
                (SELECT n.nspname FROM pg_namespace n WHERE n.oid = p.pronamespace)
       LIMIT 1;
      IF v_launch IS NOT NULL THEN
        generation := 'v1';
        api := 1;
        SELECT p.oid INTO result_function FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
         WHERE p.proname = 'pg_background_result' AND p.pronamespace = v_ns AND o.rolsuper AND p.proargtypes = '23'::oidvector;
        SELECT p.oid INTO detach_function FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
         WHERE p.proname = 'pg_background_detach' AND p.pronamespace = v_ns AND o.rolsuper AND p.proargtypes = '23'::oidvector;
        -- v1 has no wait function: the supervisor watches pg_stat_activity, then reads the result
        v_need := ARRAY[v_launch::regprocedure::text, COALESCE(result_function::text, 'pg_background_result(integer)')];
      END IF;
    END IF;
  END IF;

  installed := v_launch IS NOT NULL;
  IF NOT installed THEN
    can_launch := false;
    can_supervise := false;
    RETURN;
  END IF;
  SELECT n.nspname INTO fn_schema FROM pg_namespace n WHERE n.oid = v_ns;
  launch_function := v_launch::regprocedure;
  can_launch := has_function_privilege(current_user, v_launch, 'EXECUTE');
  IF NOT can_launch THEN
    missing_for_launch := launch_function::text;
  END IF;

  -- Every function a supervised job needs, in order: missing, or not executable by this role.
  FOREACH v_fn IN ARRAY v_need LOOP
    v_oid := to_regprocedure(v_fn);
    IF v_oid IS NULL OR NOT has_function_privilege(current_user, v_oid, 'EXECUTE') THEN
      v_lacking := v_lacking || v_fn;
    END IF;
  END LOOP;
  can_supervise := cardinality(v_lacking) = 0;
  IF NOT can_supervise THEN
    missing_for_supervision := array_to_string(v_lacking, ', ');
  END IF;

  -- The fix to suggest: for a role without any of the functions, pgbackground_role where it
  -- exists and covers them all (the extension's own recommendation); for a role that was granted
  -- some functions one by one, or where the role does not cover them, exactly the GRANT EXECUTE
  -- statements that are missing.
  v_role_covers := cardinality(v_lacking) = cardinality(v_need)
                   AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgbackground_role');
  IF v_role_covers THEN
    FOREACH v_fn IN ARRAY v_need LOOP
      v_oid := to_regprocedure(v_fn);
      IF v_oid IS NULL OR NOT has_function_privilege('pgbackground_role', v_oid, 'EXECUTE') THEN
        v_role_covers := false;
      END IF;
    END LOOP;
  END IF;
  IF v_role_covers THEN
    grant_hint := format('GRANT pgbackground_role TO %I;', current_user);
  ELSE
    grant_hint := '';
    FOREACH v_fn IN ARRAY (CASE WHEN cardinality(v_lacking) > 0 THEN v_lacking ELSE v_need END) LOOP
      IF to_regprocedure(v_fn) IS NOT NULL THEN
        grant_hint := grant_hint || format(' GRANT EXECUTE ON FUNCTION %s TO %I;', v_fn, current_user);
      END IF;
    END LOOP;
    grant_hint := COALESCE(NULLIF(ltrim(grant_hint), ''),
                           format('pg_background in schema %s lacks %s: install a complete version of the extension',
                                  fn_schema, array_to_string(v_lacking, ', ')));
  END IF;
END
$fn$;

REVOKE ALL ON FUNCTION pgbg.pg_background_info() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbg.pg_background_info() TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Submission: version 3's pgbg.submit (it records through the definer pgbg._enqueue, which
-- validates everything again) with the DETAIL of the permission error naming exactly the
-- functions the role lacks (on 2.0 it used to blame "the result/wait functions" because
-- pg_background_wait_v2_timeout no longer exists).
-- ---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pgbg.submit(
  statement text,
  kind text,
  transactional boolean,
  supervised boolean DEFAULT NULL,
  rule text DEFAULT NULL,
  options jsonb DEFAULT NULL,
  priority integer DEFAULT NULL,
  idem_key text DEFAULT NULL,
  session_id text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_info record;
  v_supervised boolean := COALESCE(submit.supervised, NOT COALESCE(submit.transactional, true));
BEGIN
  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF v_info.installed AND (NOT v_info.can_launch OR (v_supervised AND NOT v_info.can_supervise)) THEN
    RAISE EXCEPTION 'permission denied: role % may not launch pg_background workers in database %', current_user, current_database()
      USING ERRCODE = '42501',
            DETAIL = format('%s needs EXECUTE on %s', current_user,
                            CASE WHEN v_supervised THEN v_info.missing_for_supervision ELSE v_info.missing_for_launch END),
            HINT = v_info.grant_hint || ' (as a superuser)';
  END IF;
  RETURN pgbg._enqueue(current_user, submit.statement, submit.kind, submit.transactional, submit.supervised,
                       submit.rule, submit.options, submit.priority, submit.idem_key, submit.session_id);
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Launch
-- ---------------------------------------------------------------------------------------

-- Launches a queued job of the caller's, as the caller (SECURITY INVOKER: the worker gets the
-- caller's role; no SET clause: the worker copies this session's settings). Used for a new job
-- and for a queued one whose turn has come. Calls the launch function of the generation that
-- pgbg.pg_background_info() found, schema-qualified.
CREATE OR REPLACE FUNCTION pgbg.launch_job(
  job_id bigint,
  OUT state text,
  OUT worker_pid integer,
  OUT cookie bigint,
  OUT api integer)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v_info record;
  v_sql text;
  v_job record;
  v_timeout text;
  v_old_timeout text := pg_catalog.current_setting('statement_timeout');
  v_queue_size integer;
BEGIN
  SELECT j.transactional, j.options INTO v_job FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) launch_job.job_id;
  v_timeout := COALESCE(v_job.options OPERATOR(pg_catalog.->>) 'timeout_ms', '0');
  IF v_timeout OPERATOR(pg_catalog.!~) '^[0-9]+$' THEN
    RAISE EXCEPTION 'options.timeout_ms must be a whole number of milliseconds, not %', v_timeout
      USING ERRCODE = '22023';
  END IF;
  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF NOT COALESCE(v_info.installed, false) THEN
    RAISE EXCEPTION 'pg_background is not installed in database %', pg_catalog.current_database()
      USING ERRCODE = '42883', HINT = 'CREATE EXTENSION pg_background; as a superuser';
  END IF;
  v_sql := pgbg.launch_sql(launch_job.job_id);
  IF v_job.transactional THEN
    PERFORM pg_catalog.pg_advisory_xact_lock(1885825634, (launch_job.job_id OPERATOR(pg_catalog.%) 2147483647)::integer);
  END IF;

  -- The queue size is passed explicitly, as the launch function's own default (1.8 and 2.0: 0,
  -- meaning pg_background.default_queue_size), so that the call matches (text, int4) exactly: a
  -- function someone adds beside it, say pg_background_launch(text), cannot capture the call.
  v_queue_size := COALESCE(pg_catalog.pg_get_function_arg_default(v_info.launch_function::pg_catalog.oid, 2)::integer, 0);
  PERFORM pg_catalog.set_config('statement_timeout', v_timeout, true);
  -- "|| ''": pg_background 1.8 mishandles short-header text arguments (see pgbg.launch_sql).
  IF v_info.generation OPERATOR(pg_catalog.=) 'handle' THEN
    EXECUTE pg_catalog.format('SELECT (s.h).pid, (s.h).cookie FROM (SELECT %I.pg_background_launch($1 OPERATOR(pg_catalog.||) '''', $2) h) s',
                              v_info.fn_schema)
      INTO worker_pid, cookie USING v_sql, v_queue_size;
  ELSIF v_info.generation OPERATOR(pg_catalog.=) 'v2' THEN
    EXECUTE pg_catalog.format('SELECT h.pid, h.cookie FROM %I.pg_background_launch_v2($1 OPERATOR(pg_catalog.||) '''', $2) h',
                              v_info.fn_schema)
      INTO worker_pid, cookie USING v_sql, v_queue_size;
  ELSE
    EXECUTE pg_catalog.format('SELECT %I.pg_background_launch($1 OPERATOR(pg_catalog.||) '''', $2)', v_info.fn_schema)
      INTO worker_pid USING v_sql, v_queue_size;
  END IF;
  PERFORM pg_catalog.set_config('statement_timeout', v_old_timeout, true);
  api := v_info.api;

  -- A transactional job records its own outcome: stop tracking its worker in this session
  -- (pg_background.max_workers counts tracked workers). A supervised job stays tracked: this
  -- session must read its result.
  IF v_job.transactional AND v_info.detach_function IS NOT NULL
     AND pg_catalog.has_function_privilege(v_info.detach_function::pg_catalog.oid, 'EXECUTE') THEN
    IF v_info.generation OPERATOR(pg_catalog.=) 'handle' THEN
      EXECUTE pg_catalog.format('SELECT %I.pg_background_detach($1, $2)', v_info.fn_schema) USING worker_pid, cookie;
    ELSIF v_info.generation OPERATOR(pg_catalog.=) 'v2' THEN
      EXECUTE pg_catalog.format('SELECT %I.pg_background_detach_v2($1, $2)', v_info.fn_schema) USING worker_pid, cookie;
    ELSE
      EXECUTE pg_catalog.format('SELECT %I.pg_background_detach($1)', v_info.fn_schema) USING worker_pid;
    END IF;
  END IF;

  PERFORM pgbg.mark_launched(launch_job.job_id, worker_pid, cookie, api);
  SELECT j.state INTO state FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) launch_job.job_id;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Supervision, from the session that launched the worker (only it holds the handle)
-- ---------------------------------------------------------------------------------------

-- Has the worker stopped? Never blocks: 2.x waits at most 1 ms (0 would block until the worker
-- exits), 1.6-1.10 polls with timeout 0, v1 (no wait function) looks for the worker's pid in
-- pg_stat_activity. SECURITY INVOKER: pg_background checks the caller's own rights, and its
-- errors (no such handle, permission denied for function ...) reach the caller unchanged.
CREATE FUNCTION pgbg.worker_stopped(api integer, worker_pid integer, cookie bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_info record;
  v_done boolean;
BEGIN
  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF worker_stopped.api = 1 THEN
    PERFORM pg_stat_clear_snapshot();
    RETURN NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                        WHERE a.pid = worker_stopped.worker_pid AND a.backend_type = 'pg_background');
  END IF;
  IF worker_stopped.api IS DISTINCT FROM 2 OR worker_stopped.cookie IS NULL THEN
    RAISE EXCEPTION 'api must be 1 (pid) or 2 (pid and cookie)' USING ERRCODE = '22023';
  END IF;
  IF v_info.generation = 'handle' THEN
    EXECUTE format('SELECT %I.pg_background_wait($1, $2, 1)', v_info.fn_schema)
      INTO v_done USING worker_stopped.worker_pid, worker_stopped.cookie;
  ELSIF v_info.generation = 'v2' THEN
    EXECUTE format('SELECT %I.pg_background_wait_v2_timeout($1, $2, 0)', v_info.fn_schema)
      INTO v_done USING worker_stopped.worker_pid, worker_stopped.cookie;
  ELSE
    RAISE EXCEPTION 'the worker was launched with a (pid, cookie) handle, but pg_background in database % no longer offers that API',
                    current_database()
      USING ERRCODE = '55000';
  END IF;
  RETURN v_done;
END
$fn$;

-- The command tag of a stopped worker's statement; raises the worker's own error (SQLSTATE and
-- message) if it failed. Reads the result once: pg_background forgets the worker afterwards.
CREATE FUNCTION pgbg.worker_result(api integer, worker_pid integer, cookie bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_info record;
  v_tag text;
BEGIN
  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF worker_result.api = 1 AND v_info.generation = 'v1' THEN
    EXECUTE format('SELECT r.command_tag FROM %I.pg_background_result($1) AS r(command_tag text)', v_info.fn_schema)
      INTO v_tag USING worker_result.worker_pid;
  ELSIF worker_result.api = 2 AND worker_result.cookie IS NOT NULL AND v_info.generation = 'handle' THEN
    EXECUTE format('SELECT r.command_tag FROM %I.pg_background_result($1, $2) AS r(command_tag text)', v_info.fn_schema)
      INTO v_tag USING worker_result.worker_pid, worker_result.cookie;
  ELSIF worker_result.api = 2 AND worker_result.cookie IS NOT NULL AND v_info.generation = 'v2' THEN
    EXECUTE format('SELECT r.command_tag FROM %I.pg_background_result_v2($1, $2) AS r(command_tag text)', v_info.fn_schema)
      INTO v_tag USING worker_result.worker_pid, worker_result.cookie;
  ELSE
    RAISE EXCEPTION 'cannot read the result of a worker launched with api %: pg_background in database % offers %',
                    worker_result.api, current_database(), COALESCE(v_info.generation, 'nothing')
      USING ERRCODE = '55000';
  END IF;
  RETURN v_tag;
END
$fn$;

REVOKE ALL ON FUNCTION pgbg.worker_stopped(integer, integer, bigint), pgbg.worker_result(integer, integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbg.worker_stopped(integer, integer, bigint), pgbg.worker_result(integer, integer, bigint) TO PUBLIC;
