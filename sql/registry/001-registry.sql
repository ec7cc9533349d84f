-- Job registry, schema version 1.
--
-- Applied by `migrate()` (src/jobs/migrate.ts) inside one transaction, as a superuser, after
-- schema `pgbg` and `pgbg.schema_version` exist.
--
-- Security model (see DESIGN.md decisions 1, 3, 5):
--  - `pgbg.job` / `pgbg.job_result` have row-level security: a role sees its own jobs, members
--    of `pgbg_admin` see all. Users may INSERT only 'queued' rows for themselves (through
--    `pgbg.submit`), never UPDATE or DELETE; every state change goes through a function.
--  - SECURITY DEFINER functions are owned by the migrating superuser, pin their search_path,
--    and identify the caller by `session_user` (inside a definer function current_user is the
--    definer). They bypass RLS, so each one checks ownership itself (`pgbg._may_manage`).
--  - `pgbg.run_job` is SECURITY INVOKER: the worker runs it as the submitting role, so a job
--    never has more rights than its submitter. It deliberately has no SET search_path clause:
--    pg_background copies the launching session's GUCs (search_path included) into the worker,
--    and the user's statement must resolve names exactly as it would in the client's session.
--    Every name in its body is schema-qualified instead.
--  - `pgbg.submit_and_launch` is SECURITY INVOKER and unpinned for the same reason: the worker it
--    launches inherits this session's GUCs at launch time.
--  - `pgbg.await` is a procedure that COMMITs between polls; PostgreSQL forbids transaction
--    control in procedures with a SET clause, so it too is unpinned and fully qualified.
--
-- Facts about pg_background 1.8 this file relies on (measured on PostgreSQL 15):
--  - the worker runs with the launching session's session_user and current_user (after
--    `SET ROLE x` in a superuser session: session_user = the superuser, current_user = x) and a
--    copy of its GUCs, including search_path, application_name and statement_timeout;
--  - statement_timeout is armed once, from the copied value, when the worker starts its SQL;
--    SET / set_config inside the worker's SQL does not re-arm it;
--  - the sql argument of pg_background_launch*() must be a 4-byte-header text: a value read from
--    a table column or a SQL function result reaches the worker shifted by 3 bytes. See
--    pgbg.launch_sql.
-- Released: never edit this file; change the registry with a new numbered migration.

-- ---------------------------------------------------------------------------------------
-- Role: members see and manage every job
-- ---------------------------------------------------------------------------------------
DO $do$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgbg_admin') THEN
    BEGIN
      CREATE ROLE pgbg_admin NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL; -- created concurrently by a migration of another database of this cluster
    END;
  END IF;
END
$do$;

-- ---------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------
CREATE TABLE pgbg.job (
  id               bigserial PRIMARY KEY,
  state            text NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'lost')),
  owner            name NOT NULL DEFAULT current_user,
  database         name NOT NULL DEFAULT current_database(),
  statement        text NOT NULL,
  kind             text,
  transactional    boolean NOT NULL DEFAULT true,
  rule             text,
  options          jsonb NOT NULL DEFAULT '{}'::jsonb,
  priority         integer NOT NULL DEFAULT 0,
  idem_key         text,
  submitted_at     timestamptz NOT NULL DEFAULT now(),
  started_at       timestamptz,
  finished_at      timestamptz,
  launcher_pid     integer,
  launcher_start   timestamptz,
  worker_pid       integer,
  worker_start     timestamptz,
  cookie           bigint,
  api              integer CHECK (api IN (1, 2)),
  supervised       boolean NOT NULL DEFAULT false,
  cancel_requested boolean NOT NULL DEFAULT false,
  command_tag      text,
  rows             bigint,
  sqlstate         text,
  error            text,
  error_detail     text,
  lost_reason      text,
  attempts         integer NOT NULL DEFAULT 0,
  max_attempts     integer NOT NULL DEFAULT 1 CHECK (max_attempts BETWEEN 1 AND 100),
  not_before       timestamptz,
  queued_at        timestamptz NOT NULL DEFAULT now(),
  launched_at      timestamptz,
  limits           jsonb,
  session_id       text,
  application_name text,
  -- a non-transactional statement cannot record its own outcome: somebody must supervise it
  CONSTRAINT job_non_transactional_is_supervised CHECK (transactional OR supervised)
);

COMMENT ON TABLE pgbg.job IS 'pgbg-proxy job registry: one row per background job. Change it only through pgbg.* functions.';

CREATE INDEX job_owner_idx ON pgbg.job (owner, id);
CREATE INDEX job_active_idx ON pgbg.job (state, id) WHERE state IN ('queued', 'running');
-- at most one active job per (owner, idempotency key)
CREATE UNIQUE INDEX job_active_idem_key_idx ON pgbg.job (owner, idem_key)
  WHERE idem_key IS NOT NULL AND state IN ('queued', 'running');

-- One row per attempt that ended: a transactional job retried after a transient error has
-- several. Written by definer functions only.
CREATE TABLE pgbg.job_attempt (
  job_id      bigint NOT NULL REFERENCES pgbg.job (id) ON DELETE CASCADE,
  attempt     integer NOT NULL,
  worker_pid  integer,
  started_at  timestamptz,
  finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  outcome     text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'retried', 'cancelled', 'lost')),
  sqlstate    text,
  error       text,
  PRIMARY KEY (job_id, attempt)
);

COMMENT ON TABLE pgbg.job_attempt IS 'Each ended attempt of a job; see the pgbg.job_attempts view.';

CREATE TABLE pgbg.job_result (
  job_id bigint NOT NULL REFERENCES pgbg.job (id) ON DELETE CASCADE,
  ord    bigint NOT NULL,
  "row"  jsonb,
  PRIMARY KEY (job_id, ord)
);

COMMENT ON TABLE pgbg.job_result IS 'Rows returned by backgrounded SELECT / ... RETURNING statements, in order; read them with pgbg.result(job_id).';

-- ---------------------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------------------
ALTER TABLE pgbg.job ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgbg.job FORCE ROW LEVEL SECURITY;
ALTER TABLE pgbg.job_attempt ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgbg.job_attempt FORCE ROW LEVEL SECURITY;
ALTER TABLE pgbg.job_result ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgbg.job_result FORCE ROW LEVEL SECURITY;

CREATE POLICY job_select ON pgbg.job FOR SELECT
  USING (owner = current_user OR pg_catalog.pg_has_role(current_user, 'pgbg_admin', 'MEMBER'));

CREATE POLICY job_insert ON pgbg.job FOR INSERT
  WITH CHECK (owner = current_user
              AND state = 'queued'
              AND database = current_database()
              AND launcher_pid = pg_catalog.pg_backend_pid()
              AND worker_pid IS NULL AND started_at IS NULL AND finished_at IS NULL
              AND NOT cancel_requested AND attempts = 0);

-- no UPDATE / DELETE policies: with RLS enabled that denies both (and no privilege is granted)

CREATE POLICY job_attempt_select ON pgbg.job_attempt FOR SELECT
  USING (EXISTS (SELECT 1 FROM pgbg.job j WHERE j.id = job_attempt.job_id));

CREATE POLICY job_result_select ON pgbg.job_result FOR SELECT
  USING (EXISTS (SELECT 1 FROM pgbg.job j WHERE j.id = job_result.job_id));

CREATE POLICY job_result_insert ON pgbg.job_result FOR INSERT
  WITH CHECK (EXISTS (SELECT 1 FROM pgbg.job j
                      WHERE j.id = job_result.job_id
                        AND j.owner = current_user
                        AND j.state IN ('queued', 'running')));

-- ---------------------------------------------------------------------------------------
-- Privileges on relations
-- ---------------------------------------------------------------------------------------
REVOKE ALL ON pgbg.job, pgbg.job_result, pgbg.job_attempt FROM PUBLIC;
GRANT SELECT ON pgbg.job, pgbg.job_attempt TO PUBLIC;
GRANT INSERT (statement, kind, transactional, rule, options, priority, idem_key,
              launcher_pid, launcher_start, supervised, session_id, application_name,
              max_attempts, not_before)
  ON pgbg.job TO PUBLIC;
GRANT USAGE ON SEQUENCE pgbg.job_id_seq TO PUBLIC;
GRANT SELECT, INSERT ON pgbg.job_result TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- View
-- ---------------------------------------------------------------------------------------
CREATE VIEW pgbg.jobs WITH (security_invoker = true) AS
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
       j.cancel_requested
  FROM pgbg.job j;

GRANT SELECT ON pgbg.jobs TO PUBLIC;

CREATE VIEW pgbg.job_attempts WITH (security_invoker = true) AS
SELECT a.job_id, a.attempt, a.outcome, a.sqlstate, a.error, a.worker_pid, a.started_at, a.finished_at,
       a.finished_at - a.started_at AS elapsed
  FROM pgbg.job_attempt a;

GRANT SELECT ON pgbg.job_attempts TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Internal helpers
-- ---------------------------------------------------------------------------------------

-- May the calling session manage (see, cancel, finish) a job owned by p_owner?
-- session_user, because inside SECURITY DEFINER functions current_user is the definer.
CREATE FUNCTION pgbg._may_manage(p_owner name) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT pg_has_role(session_user, 'pgbg_admin', 'MEMBER')
      OR EXISTS (SELECT 1 FROM pg_roles r
                  WHERE r.rolname = p_owner
                    AND pg_has_role(session_user, r.oid, 'MEMBER'))
$fn$;

-- The exact SQL a worker runs for a transactional job.
CREATE FUNCTION pgbg._run_sql(p_job_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pgbg
AS $fn$ SELECT 'SELECT pgbg.run_job(' || p_job_id::text || ')' $fn$;

-- Command tag as PostgreSQL would print it, from the statement kind and its row count.
CREATE FUNCTION pgbg._command_tag(p_kind text, p_rows bigint) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT CASE
           WHEN p_kind IS NULL THEN NULL
           WHEN upper(p_kind) = 'INSERT' THEN 'INSERT 0 ' || COALESCE(p_rows, 0)
           WHEN upper(p_kind) IN ('UPDATE', 'DELETE', 'SELECT', 'MERGE', 'FETCH', 'MOVE', 'COPY')
             THEN upper(p_kind) || ' ' || COALESCE(p_rows, 0)
           WHEN upper(p_kind) IN ('CREATE TABLE AS', 'SELECT INTO', 'CREATE MATERIALIZED VIEW')
             THEN 'SELECT ' || COALESCE(p_rows, 0)
           ELSE p_kind
         END
$fn$;

-- Keeps the attempt that just ended (the job's current attempt number) in pgbg.job_attempt.
CREATE FUNCTION pgbg._record_attempt(p_job_id bigint, p_outcome text, p_sqlstate text, p_error text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  INSERT INTO pgbg.job_attempt (job_id, attempt, worker_pid, started_at, outcome, sqlstate, error)
  SELECT j.id, GREATEST(j.attempts, 1), j.worker_pid, COALESCE(j.launched_at, j.started_at), p_outcome, p_sqlstate, p_error
    FROM pgbg.job j WHERE j.id = p_job_id
  ON CONFLICT (job_id, attempt) DO NOTHING
$fn$;

CREATE FUNCTION pgbg._notify(p_job_id bigint, p_state text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$ SELECT pg_notify('pgbg_jobs', json_build_object('id', p_job_id, 'state', p_state)::text) $fn$;

-- ---------------------------------------------------------------------------------------
-- pg_background detection
-- ---------------------------------------------------------------------------------------

-- What pg_background offers the calling role in this database. Works for the extension and for
-- a stand-in that defines the same functions without an extension row (detected by function
-- existence, not pg_extension). fn_schema is where the launch function lives: call the API
-- schema-qualified with it.
CREATE FUNCTION pgbg.pg_background_info(
  OUT installed boolean,
  OUT fn_schema name,
  OUT extversion text,
  OUT api integer,
  OUT launch_function regprocedure,
  OUT can_launch boolean,
  OUT can_supervise boolean,
  OUT grant_hint text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_ext_schema oid;
  v_launch oid;
  v_result oid;
  v_wait oid;
BEGIN
  SELECT e.extnamespace, e.extversion INTO v_ext_schema, extversion
    FROM pg_extension e WHERE e.extname = 'pg_background';

  -- prefer the extension's schema, then functions owned by a superuser, then by name
  SELECT p.oid, n.nspname INTO v_launch, fn_schema
    FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_roles o ON o.oid = p.proowner
   WHERE p.proname = 'pg_background_launch_v2'
     AND p.proargtypes = '25 23'::oidvector
   ORDER BY (p.pronamespace = v_ext_schema) DESC NULLS LAST, o.rolsuper DESC, n.nspname
   LIMIT 1;
  IF v_launch IS NOT NULL THEN
    api := 2;
    SELECT p.oid INTO v_result FROM pg_proc p
     WHERE p.proname = 'pg_background_result_v2' AND p.pronamespace = (SELECT pronamespace FROM pg_proc WHERE oid = v_launch)
       AND p.proargtypes = '23 20'::oidvector;
    SELECT p.oid INTO v_wait FROM pg_proc p
     WHERE p.proname = 'pg_background_wait_v2_timeout' AND p.pronamespace = (SELECT pronamespace FROM pg_proc WHERE oid = v_launch)
       AND p.proargtypes = '23 20 23'::oidvector;
  ELSE
    SELECT p.oid, n.nspname INTO v_launch, fn_schema
      FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
      JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.proname = 'pg_background_launch'
       AND p.proargtypes = '25 23'::oidvector
     ORDER BY (p.pronamespace = v_ext_schema) DESC NULLS LAST, o.rolsuper DESC, n.nspname
     LIMIT 1;
    IF v_launch IS NOT NULL THEN
      api := 1;
      SELECT p.oid INTO v_result FROM pg_proc p
       WHERE p.proname = 'pg_background_result' AND p.pronamespace = (SELECT pronamespace FROM pg_proc WHERE oid = v_launch)
         AND p.proargtypes = '23'::oidvector;
      v_wait := v_result; -- v1 has no wait: the result call itself blocks
    END IF;
  END IF;

  installed := v_launch IS NOT NULL;
  IF NOT installed THEN
    can_launch := false;
    can_supervise := false;
    RETURN;
  END IF;
  launch_function := v_launch::regprocedure;
  can_launch := has_function_privilege(current_user, v_launch, 'EXECUTE');
  can_supervise := can_launch
                   AND v_result IS NOT NULL AND has_function_privilege(current_user, v_result, 'EXECUTE')
                   AND v_wait IS NOT NULL AND has_function_privilege(current_user, v_wait, 'EXECUTE');
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgbackground_role') THEN
    grant_hint := format('GRANT pgbackground_role TO %I;', current_user);
  ELSE
    grant_hint := format('GRANT EXECUTE ON FUNCTION %s TO %I;', launch_function::text, current_user);
    IF v_result IS NOT NULL THEN
      grant_hint := grant_hint || format(' GRANT EXECUTE ON FUNCTION %s TO %I;', v_result::regprocedure::text, current_user);
    END IF;
    IF v_wait IS NOT NULL AND v_wait IS DISTINCT FROM v_result THEN
      grant_hint := grant_hint || format(' GRANT EXECUTE ON FUNCTION %s TO %I;', v_wait::regprocedure::text, current_user);
    END IF;
  END IF;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Submission and launch
-- ---------------------------------------------------------------------------------------

-- Records a queued job owned by current_user, launched (next) from this session.
-- SECURITY INVOKER: RLS checks that the row is the caller's own.
CREATE FUNCTION pgbg.submit(
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
  v_id bigint;
  v_transactional boolean := COALESCE(submit.transactional, true);
  v_supervised boolean := COALESCE(submit.supervised, NOT COALESCE(submit.transactional, true));
  v_existing bigint;
  v_max_attempts integer;
  v_not_before timestamptz;
BEGIN
  IF submit.statement IS NULL OR btrim(submit.statement) = '' THEN
    RAISE EXCEPTION 'pgbg.submit: statement must not be empty' USING ERRCODE = '22023';
  END IF;
  IF NOT v_transactional AND NOT v_supervised THEN
    RAISE EXCEPTION 'pgbg.submit: a non-transactional job must be supervised (its outcome can only be read by the launching session)'
      USING ERRCODE = '22023';
  END IF;

  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF NOT v_info.installed THEN
    RAISE EXCEPTION 'pg_background is not installed in database %', current_database()
      USING ERRCODE = '42883', HINT = 'CREATE EXTENSION pg_background; as a superuser';
  END IF;
  IF NOT v_info.can_launch OR (v_supervised AND NOT v_info.can_supervise) THEN
    RAISE EXCEPTION 'permission denied: role % may not launch pg_background workers in database %', current_user, current_database()
      USING ERRCODE = '42501',
            DETAIL = format('%s needs EXECUTE on %s%s', current_user, v_info.launch_function::text,
                            CASE WHEN v_supervised THEN ' and on the result/wait functions' ELSE '' END),
            HINT = v_info.grant_hint || ' (as a superuser)';
  END IF;

  -- Retries only where a failed attempt provably left nothing behind: transactional jobs.
  v_max_attempts := CASE WHEN v_transactional THEN COALESCE((submit.options->>'max_attempts')::integer, 1) ELSE 1 END;
  IF v_max_attempts NOT BETWEEN 1 AND 100 THEN
    RAISE EXCEPTION 'max_attempts must be between 1 and 100, not %', v_max_attempts USING ERRCODE = '22023';
  END IF;
  -- Not before the given time, and then not before the rule's window opens.
  v_not_before := GREATEST(clock_timestamp(), (submit.options->>'not_before')::timestamptz);
  v_not_before := pgbg.window_opens(submit.options->'window', v_not_before);
  IF v_not_before <= clock_timestamp() THEN
    v_not_before := NULL;
  END IF;

  IF submit.idem_key IS NOT NULL THEN
    SELECT j.id INTO v_existing FROM pgbg.job j
     WHERE j.owner = current_user AND j.idem_key = submit.idem_key AND j.state IN ('queued', 'running')
     LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'a job with key "%" is already queued or running', submit.idem_key
        USING ERRCODE = '23505', DETAIL = format('job %s', v_existing);
    END IF;
  END IF;

  BEGIN
    INSERT INTO pgbg.job (statement, kind, transactional, supervised, rule, options, priority, idem_key,
                          launcher_pid, launcher_start, session_id, application_name, max_attempts, not_before)
    VALUES (submit.statement, submit.kind, v_transactional, v_supervised, submit.rule,
            COALESCE(submit.options, '{}'::jsonb), COALESCE(submit.priority, 0), submit.idem_key,
            pg_backend_pid(),
            (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()),
            submit.session_id,
            NULLIF(current_setting('application_name'), ''),
            v_max_attempts, v_not_before)
    RETURNING id INTO v_id;
  EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'a job with key "%" is already queued or running', submit.idem_key
      USING ERRCODE = '23505';
  END;
  RETURN v_id;
END
$fn$;

-- The SQL the worker must run: SELECT pgbg.run_job(<id>) for transactional jobs, the raw
-- statement for supervised non-transactional ones. Raises unless the job is still queued.
CREATE FUNCTION pgbg.launch_sql(job_id bigint) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v record;
BEGIN
  SELECT j.id, j.state, j.transactional, j.statement INTO v FROM pgbg.job j WHERE j.id = launch_sql.job_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'job % does not exist', launch_sql.job_id USING ERRCODE = '42704';
  END IF;
  IF v.state <> 'queued' THEN
    RAISE EXCEPTION 'job % is %, it can no longer be launched', v.id, v.state USING ERRCODE = '55000';
  END IF;
  -- Build a fresh value on purpose: pg_background 1.8 reads its sql argument with VARDATA on an
  -- unconverted PG_GETARG_TEXT_PP, so a short-header ("packed") text, as it comes out of a table
  -- column or a SQL function's result, reaches the worker shifted by 3 bytes ("syntax error at
  -- or near ..."). textcat always returns a new 4-byte-header, detoasted text.
  IF v.transactional THEN
    RETURN 'SELECT pgbg.run_job(' || v.id::text || ')';
  END IF;
  RETURN v.statement || '';
END
$fn$;

-- Records the worker of a job: SELECT pgbg.mark_launched(id, h.pid, h.cookie, 2)
--   FROM pg_background_launch_v2(pgbg.launch_sql(id)) h
-- Moves 'queued' to 'running' only: a fast worker may already have recorded its outcome.
-- Also makes the calling session the job's launcher (the session holding the handle).
CREATE FUNCTION pgbg.mark_launched(job_id bigint, worker_pid integer, cookie bigint, api integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_owner name;
  v_state text;
  v_wstart timestamptz;
  v_transactional boolean;
  v_lstart timestamptz;
BEGIN
  SELECT j.owner, j.transactional INTO v_owner, v_transactional FROM pgbg.job j WHERE j.id = mark_launched.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v_owner) THEN
    RAISE EXCEPTION 'job % does not exist', mark_launched.job_id USING ERRCODE = '42704';
  END IF;
  IF mark_launched.api IS NOT NULL AND mark_launched.api NOT IN (1, 2) THEN
    RAISE EXCEPTION 'api must be 1 or 2' USING ERRCODE = '22023';
  END IF;
  -- The worker shows in pg_stat_activity only once it has attached to the database: give it a
  -- few milliseconds, so reconciliation can tell this worker from a later process with its pid.
  FOR i IN 1..40 LOOP
    PERFORM pg_stat_clear_snapshot();
    SELECT a.backend_start INTO v_wstart FROM pg_stat_activity a WHERE a.pid = mark_launched.worker_pid;
    -- A transactional job's worker waits for this transaction's commit, so it is still there;
    -- a supervised one may already have finished, and then there is nothing to wait for.
    EXIT WHEN v_wstart IS NOT NULL OR NOT v_transactional;
    PERFORM pg_sleep(0.005);
  END LOOP;
  SELECT a.backend_start INTO v_lstart FROM pg_stat_activity a WHERE a.pid = pg_backend_pid();

  UPDATE pgbg.job j
     SET worker_pid = mark_launched.worker_pid,
         worker_start = COALESCE(v_wstart, j.worker_start),
         cookie = mark_launched.cookie,
         api = mark_launched.api,
         launcher_pid = pg_backend_pid(),
         launcher_start = v_lstart,
         attempts = j.attempts + 1,
         launched_at = clock_timestamp(),
         started_at = CASE WHEN j.state = 'queued' THEN COALESCE(j.started_at, clock_timestamp()) ELSE j.started_at END,
         state = CASE WHEN j.state = 'queued' THEN 'running' ELSE j.state END
   WHERE j.id = mark_launched.job_id
     AND (j.state = 'queued' OR j.worker_pid IS NULL OR j.worker_pid = mark_launched.worker_pid)
  RETURNING j.state INTO v_state;
  IF v_state = 'running' THEN
    PERFORM pgbg._notify(mark_launched.job_id, 'running');
  END IF;
  RETURN mark_launched.job_id;
END
$fn$;

-- The launch itself failed (capacity, permissions...): the queued job becomes 'failed'.
CREATE FUNCTION pgbg.launch_failed(job_id bigint, sqlstate text, error text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_owner name;
BEGIN
  SELECT j.owner INTO v_owner FROM pgbg.job j WHERE j.id = launch_failed.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v_owner) THEN
    RAISE EXCEPTION 'job % does not exist', launch_failed.job_id USING ERRCODE = '42704';
  END IF;
  UPDATE pgbg.job j
     SET state = 'failed', sqlstate = launch_failed.sqlstate,
         error = 'launch failed: ' || COALESCE(launch_failed.error, 'unknown error'),
         finished_at = clock_timestamp()
   WHERE j.id = launch_failed.job_id AND j.state = 'queued' AND j.worker_pid IS NULL;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM pgbg._notify(launch_failed.job_id, 'failed');
  RETURN true;
END
$fn$;

-- Launches a queued job of the caller's, as the caller (SECURITY INVOKER: the worker gets the
-- caller's role). Used for a new job and for a queued one whose turn has come.
CREATE FUNCTION pgbg.launch_job(
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
BEGIN
  SELECT j.transactional, j.options INTO v_job FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) launch_job.job_id;
  v_timeout := COALESCE(v_job.options OPERATOR(pg_catalog.->>) 'timeout_ms', '0');
  IF v_timeout !~ '^[0-9]+$' THEN
    RAISE EXCEPTION 'options.timeout_ms must be a whole number of milliseconds, not %', v_timeout
      USING ERRCODE = '22023';
  END IF;
  SELECT * INTO v_info FROM pgbg.pg_background_info();
  v_sql := pgbg.launch_sql(launch_job.job_id);
  IF v_job.transactional THEN
    PERFORM pg_catalog.pg_advisory_xact_lock(1885825634, (launch_job.job_id OPERATOR(pg_catalog.%) 2147483647)::integer);
  END IF;

  PERFORM pg_catalog.set_config('statement_timeout', v_timeout, true);
  -- "|| ''": pg_background mishandles short-header text arguments (see pgbg.launch_sql)
  IF v_info.api = 2 THEN
    EXECUTE pg_catalog.format('SELECT h.pid, h.cookie FROM %I.pg_background_launch_v2($1 OPERATOR(pg_catalog.||) '''') h',
                              v_info.fn_schema)
      INTO worker_pid, cookie USING v_sql;
  ELSE
    EXECUTE pg_catalog.format('SELECT %I.pg_background_launch($1 OPERATOR(pg_catalog.||) '''')', v_info.fn_schema)
      INTO worker_pid USING v_sql;
  END IF;
  PERFORM pg_catalog.set_config('statement_timeout', v_old_timeout, true);
  api := v_info.api;

  -- A transactional job records its own outcome: stop tracking its worker in this session
  -- (pg_background.max_workers counts tracked workers). A supervised job stays tracked: this
  -- session must read its result.
  IF v_job.transactional THEN
    IF api = 2 AND pg_catalog.to_regprocedure(pg_catalog.quote_ident(v_info.fn_schema) OPERATOR(pg_catalog.||) '.pg_background_detach_v2(integer,bigint)') IS NOT NULL
       AND pg_catalog.has_function_privilege(pg_catalog.quote_ident(v_info.fn_schema) OPERATOR(pg_catalog.||) '.pg_background_detach_v2(integer,bigint)', 'EXECUTE') THEN
      EXECUTE pg_catalog.format('SELECT %I.pg_background_detach_v2($1, $2)', v_info.fn_schema) USING worker_pid, cookie;
    ELSIF api = 1 AND pg_catalog.to_regprocedure(pg_catalog.quote_ident(v_info.fn_schema) OPERATOR(pg_catalog.||) '.pg_background_detach(integer)') IS NOT NULL
       AND pg_catalog.has_function_privilege(pg_catalog.quote_ident(v_info.fn_schema) OPERATOR(pg_catalog.||) '.pg_background_detach(integer)', 'EXECUTE') THEN
      EXECUTE pg_catalog.format('SELECT %I.pg_background_detach($1)', v_info.fn_schema) USING worker_pid;
    END IF;
  END IF;

  PERFORM pgbg.mark_launched(launch_job.job_id, worker_pid, cookie, api);
  SELECT j.state INTO state FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) launch_job.job_id;
END
$fn$;


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


-- ---------------------------------------------------------------------------------------
-- Worker side
-- ---------------------------------------------------------------------------------------

-- Records a transactional job's outcome in the worker's own transaction. Only callable from
-- the job's worker running pgbg.run_job(<id>) as its top-level statement. If the job is no
-- longer active (cancelled while queued, marked lost) it raises, which rolls the statement's
-- effects back: the registry never says 'cancelled'/'lost' for work that committed.
CREATE FUNCTION pgbg._finish(job_id bigint, state text, command_tag text, rows bigint,
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
  IF rtrim(current_query(), E' \t\r\n;') IS DISTINCT FROM pgbg._run_sql(_finish.job_id) THEN
    RAISE EXCEPTION 'pgbg._finish may only be called by pgbg.run_job(%) running as its own statement', _finish.job_id
      USING ERRCODE = '42501';
  END IF;
  SELECT j.owner, j.worker_pid, j.transactional, j.attempts, j.max_attempts, j.options, j.cancel_requested, j.state
    INTO v FROM pgbg.job j WHERE j.id = _finish.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v.owner) THEN
    RAISE EXCEPTION 'job % does not exist', _finish.job_id USING ERRCODE = '42704';
  END IF;
  IF v.worker_pid IS NOT NULL AND v.worker_pid <> pg_backend_pid() THEN
    RAISE EXCEPTION 'job % belongs to worker %, not to this process', _finish.job_id, v.worker_pid
      USING ERRCODE = '42501';
  END IF;
  SELECT a.backend_start INTO v_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid();

  -- A transient failure with attempts left: back to the queue after an exponential backoff with
  -- jitter (half the delay fixed, half random, so retries of jobs that collided spread out).
  -- The statement's effects were rolled back by run_job; this transaction commits the retry.
  IF _finish.state = 'failed' AND _finish.sqlstate IN ('40001', '40P01', '55P03')
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

-- Runs a transactional job inside the worker, as the submitting role (SECURITY INVOKER; never
-- make it definer). The outcome is written by pgbg._finish in the same transaction, so the job
-- says 'succeeded' if and only if the statement's effects commit. Does not lock the job row
-- until the end, so pgbg.cancel can flag it meanwhile.
-- No SET search_path: see the header comment.
CREATE FUNCTION pgbg.run_job(job_id bigint) RETURNS void
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
  IF v.state NOT IN ('queued', 'running') THEN
    RETURN; -- cancelled before it started, or declared lost: do nothing
  END IF;

  BEGIN
    IF (v.options OPERATOR(pg_catalog.->>) 'returns_rows') IS NOT DISTINCT FROM 'true' THEN
      v_stmt := pg_catalog.regexp_replace(v.statement, '[\s;]+$', '');
      IF (v.options OPERATOR(pg_catalog.->>) 'rows_via') IS NOT DISTINCT FROM 'cte' THEN
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

-- Outcome of a supervised (non-transactional) job, recorded by the launching session after
-- reading pg_background_result_v2 / pg_background_result. Only from a non-terminal state.
-- state: 'succeeded', 'failed' (a 57014 failure becomes 'cancelled' if pgbg.cancel asked for it),
-- 'cancelled', or 'lost' when the supervisor cannot learn the outcome (error = the reason).
CREATE FUNCTION pgbg.finish_supervised(job_id bigint, state text, command_tag text, sqlstate text, error text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_owner name;
  v_state text;
BEGIN
  IF finish_supervised.state IS NULL OR finish_supervised.state NOT IN ('succeeded', 'failed', 'cancelled', 'lost') THEN
    RAISE EXCEPTION 'invalid outcome state %', finish_supervised.state
      USING ERRCODE = '22023', HINT = 'Use succeeded, failed, cancelled or lost.';
  END IF;
  SELECT j.owner INTO v_owner FROM pgbg.job j WHERE j.id = finish_supervised.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v_owner) THEN
    RAISE EXCEPTION 'job % does not exist', finish_supervised.job_id USING ERRCODE = '42704';
  END IF;
  UPDATE pgbg.job j
     SET state = CASE
                   WHEN finish_supervised.state IN ('succeeded', 'lost') THEN finish_supervised.state
                   WHEN finish_supervised.state = 'cancelled' OR finish_supervised.sqlstate = '57014'
                     THEN CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'failed' END
                   ELSE 'failed'
                 END,
         command_tag = finish_supervised.command_tag,
         rows = NULLIF(substring(finish_supervised.command_tag FROM '(\d+)$'), '')::bigint,
         sqlstate = finish_supervised.sqlstate,
         error = CASE WHEN finish_supervised.state = 'lost' THEN NULL ELSE finish_supervised.error END,
         lost_reason = CASE WHEN finish_supervised.state = 'lost'
                            THEN COALESCE(finish_supervised.error, 'the supervising session could not read the outcome')
                       END,
         started_at = COALESCE(j.started_at, clock_timestamp()),
         finished_at = clock_timestamp()
   WHERE j.id = finish_supervised.job_id
     AND NOT j.transactional
     AND j.state IN ('queued', 'running')
  RETURNING j.state INTO v_state;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM pgbg._record_attempt(finish_supervised.job_id, v_state, finish_supervised.sqlstate, finish_supervised.error);
  PERFORM pgbg._notify(finish_supervised.job_id, v_state);
  RETURN true;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Reconciliation: mark provably dead jobs. Anyone may call it.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION pgbg.reconcile(job_id bigint DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  r record;
  n integer := 0;
  v_qsize integer := (SELECT s.setting::integer FROM pg_settings s WHERE s.name = 'track_activity_query_size');
BEGIN
  -- pg_stat_activity is snapshotted once per transaction; callers like pgbg.wait loop inside
  -- one transaction, so drop the snapshot to see processes that ended since.
  PERFORM pg_stat_clear_snapshot();

  -- (a) transactional job, worker gone. Its outcome would have been committed by the worker
  -- itself, so no outcome means nothing committed. The state is re-checked by the UPDATE's
  -- WHERE (on the latest row version if the worker committed concurrently).
  FOR r IN
    UPDATE pgbg.job j
       SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'lost' END,
           lost_reason = CASE WHEN j.cancel_requested THEN NULL
                              ELSE 'worker process ended without recording an outcome (terminated or crashed)' END,
           sqlstate = CASE WHEN j.cancel_requested THEN '57014' ELSE j.sqlstate END,
           error = CASE WHEN j.cancel_requested
                        THEN 'cancelled: the worker ended after the cancel request without committing'
                        ELSE j.error END,
           finished_at = clock_timestamp()
     WHERE j.state = 'running'
       AND j.transactional
       AND (reconcile.job_id IS NULL OR j.id = reconcile.job_id)
       AND j.worker_pid IS NOT NULL
       -- A worker launched a moment ago may not be in pg_stat_activity yet (that is also why
       -- worker_start can be NULL): such a job gets a grace period before it can be judged.
       AND (j.worker_start IS NOT NULL OR j.started_at < clock_timestamp() - interval '10 seconds')
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                        WHERE a.pid = j.worker_pid
                          AND (j.worker_start IS NULL OR a.backend_start = j.worker_start))
    RETURNING j.id, j.state
  LOOP
    PERFORM pgbg._record_attempt(r.id, r.state, NULL, 'worker ended without recording an outcome');
    PERFORM pgbg._notify(r.id, r.state);
    n := n + 1;
  END LOOP;

  -- (b) supervised job, worker gone and the supervising (launching) session gone too
  FOR r IN
    UPDATE pgbg.job j
       SET state = 'lost',
           lost_reason = 'supervising session ended; outcome of the non-transactional statement unknown',
           finished_at = clock_timestamp()
     WHERE j.state = 'running'
       AND NOT j.transactional
       AND (reconcile.job_id IS NULL OR j.id = reconcile.job_id)
       -- A worker launched a moment ago may not be in pg_stat_activity yet (that is also why
       -- worker_start can be NULL): such a job gets a grace period before it can be judged.
       AND (j.worker_start IS NOT NULL OR j.started_at < clock_timestamp() - interval '10 seconds')
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                        WHERE a.pid = j.worker_pid
                          AND (j.worker_start IS NULL OR a.backend_start = j.worker_start))
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                        WHERE a.pid = j.launcher_pid
                          AND (j.launcher_start IS NULL OR a.backend_start = j.launcher_start))
    RETURNING j.id, j.state
  LOOP
    PERFORM pgbg._notify(r.id, r.state);
    n := n + 1;
  END LOOP;

  -- (c) queued, never marked launched, launching session gone, and no process runs its SQL
  FOR r IN
    UPDATE pgbg.job j
       SET state = 'lost',
           lost_reason = CASE WHEN j.attempts = 0 THEN 'launching session ended before the job was launched'
                              ELSE format('launching session ended before attempt %s could be launched', j.attempts + 1) END,
           finished_at = clock_timestamp()
     WHERE j.state = 'queued'
       AND j.worker_pid IS NULL
       AND (reconcile.job_id IS NULL OR j.id = reconcile.job_id)
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                        WHERE a.pid = j.launcher_pid
                          AND (j.launcher_start IS NULL OR a.backend_start = j.launcher_start))
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                        WHERE a.pid <> pg_backend_pid()
                          AND a.query <> ''
                          AND (a.query = CASE WHEN j.transactional THEN pgbg._run_sql(j.id) ELSE j.statement END
                               OR (octet_length(a.query) >= v_qsize - 4
                                   AND starts_with(CASE WHEN j.transactional THEN pgbg._run_sql(j.id) ELSE j.statement END,
                                                   a.query))))
    RETURNING j.id, j.state
  LOOP
    PERFORM pgbg._notify(r.id, r.state);
    n := n + 1;
  END LOOP;

  RETURN n;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Cancel
-- ---------------------------------------------------------------------------------------

-- Requests cancellation. queued -> 'cancelled' at once; running -> cancel_requested is set and
-- the worker is sent pg_cancel_backend (identity checked by pid + backend_start); the worker
-- then records 'cancelled' itself (or reconcile does, if it ends without recording).
-- Returns true if it acted, false if the job was already finished. A job the caller may not
-- manage raises 42704 "does not exist", exactly like a missing one.
CREATE FUNCTION pgbg.cancel(job_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_owner name;
  v record;
  v_signalled boolean := false;
BEGIN
  SELECT j.owner INTO v_owner FROM pgbg.job j WHERE j.id = cancel.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v_owner) THEN
    RAISE EXCEPTION 'job % does not exist', cancel.job_id USING ERRCODE = '42704';
  END IF;

  UPDATE pgbg.job j
     SET cancel_requested = true,
         state = CASE WHEN j.state = 'queued' THEN 'cancelled' ELSE j.state END,
         finished_at = CASE WHEN j.state = 'queued' THEN clock_timestamp() ELSE j.finished_at END,
         sqlstate = CASE WHEN j.state = 'queued' THEN '57014' ELSE j.sqlstate END,
         error = CASE WHEN j.state = 'queued' THEN 'cancelled before it started' ELSE j.error END
   WHERE j.id = cancel.job_id AND j.state IN ('queued', 'running')
  RETURNING j.id, j.state, j.transactional, j.worker_pid, j.worker_start INTO v;
  IF NOT FOUND THEN
    RETURN false;
  END IF;

  PERFORM pg_stat_clear_snapshot();
  IF v.state = 'cancelled' THEN
    PERFORM pgbg._notify(v.id, 'cancelled');
    -- launched but not yet marked: stop a worker already running it (its _finish would refuse anyway)
    IF v.transactional THEN
      PERFORM pg_cancel_backend(a.pid) FROM pg_stat_activity a
        WHERE a.query = pgbg._run_sql(v.id) AND a.pid <> pg_backend_pid();
    END IF;
    RETURN true;
  END IF;

  -- running
  IF v.worker_pid IS NOT NULL THEN
    SELECT pg_cancel_backend(a.pid) INTO v_signalled FROM pg_stat_activity a
     WHERE a.pid = v.worker_pid
       AND (v.worker_start IS NULL OR a.backend_start = v.worker_start);
  END IF;
  IF NOT COALESCE(v_signalled, false) THEN
    -- worker already gone: settle what can be proven now
    PERFORM pgbg.reconcile(v.id);
  END IF;
  RETURN true;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Waiting and results
-- ---------------------------------------------------------------------------------------

-- Why waiting in this session cannot end well, or NULL. Shared by pgbg.wait and pgbg.await.
--  * a supervised job launched by this very session: only this session can read the worker's
--    result and record the outcome, and it cannot while it is busy waiting;
--  * the job's worker waits for a lock or virtual transaction held by this session (CREATE
--    INDEX CONCURRENTLY waits for every older transaction, including the waiting one).
CREATE FUNCTION pgbg._wait_blocker(p_job_id bigint, p_check_locks boolean) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v record;
BEGIN
  SELECT j.state, j.transactional, j.worker_pid, j.launcher_pid INTO v FROM pgbg.job j WHERE j.id = p_job_id;
  IF NOT FOUND OR v.state <> 'running' THEN
    RETURN NULL;
  END IF;
  IF NOT v.transactional AND v.launcher_pid = pg_backend_pid() THEN
    RETURN 'this session launched the job and must itself read and record its outcome, which it cannot do while it waits';
  END IF;
  IF p_check_locks AND v.worker_pid IS NOT NULL AND pg_backend_pid() = ANY (pg_blocking_pids(v.worker_pid)) THEN
    RETURN format('the job''s worker (pid %s) waits for a lock or virtual transaction held by this session, so waiting here would deadlock', v.worker_pid);
  END IF;
  RETURN NULL;
END
$fn$;

-- Polls until the job is terminal or the timeout passes; returns its state. Reconciles the job
-- every second. Returns early, with a WARNING, when waiting in this session cannot succeed
-- (see pgbg._wait_blocker).
CREATE FUNCTION pgbg.wait(job_id bigint, timeout interval DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_state text;
  v_deadline timestamptz;
  v_next_reconcile timestamptz := clock_timestamp() + interval '1 second';
  v_sleep double precision := 0.005;
  v_blocker text;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'pgbg.wait needs READ COMMITTED isolation; in a % transaction it would never see the job finish',
      current_setting('transaction_isolation')
      USING ERRCODE = '55000', HINT = 'Call it outside the transaction, or use CALL pgbg.await(...).';
  END IF;
  IF wait.timeout IS NOT NULL THEN
    v_deadline := clock_timestamp() + wait.timeout;
  END IF;
  LOOP
    -- each statement of a VOLATILE function takes a new snapshot under READ COMMITTED
    SELECT j.state INTO v_state FROM pgbg.job j WHERE j.id = wait.job_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'job % does not exist', wait.job_id USING ERRCODE = '42704';
    END IF;
    IF v_state IN ('succeeded', 'failed', 'cancelled', 'lost') THEN
      RETURN v_state;
    END IF;
    IF v_deadline IS NOT NULL AND clock_timestamp() >= v_deadline THEN
      RETURN v_state;
    END IF;
    v_blocker := pgbg._wait_blocker(wait.job_id, true);
    IF v_blocker IS NOT NULL THEN
      RAISE WARNING 'pgbg.wait(%) returns without waiting: job % is still %', wait.job_id, wait.job_id, v_state
        USING DETAIL = v_blocker || '.',
              HINT = format('Call pgbg.wait(%s) again in a new transaction, or use CALL pgbg.await(%s) outside a transaction block, from another session if this one launched the job.', wait.job_id, wait.job_id);
      RETURN v_state;
    END IF;
    IF clock_timestamp() >= v_next_reconcile THEN
      PERFORM pgbg.reconcile(wait.job_id);
      v_next_reconcile := clock_timestamp() + interval '1 second';
      CONTINUE;
    END IF;
    IF v_deadline IS NOT NULL THEN
      v_sleep := least(v_sleep, greatest(0.001, extract(epoch FROM v_deadline - clock_timestamp())::double precision));
    END IF;
    PERFORM pg_sleep(v_sleep);
    v_sleep := least(v_sleep * 2, 0.05);
  END LOOP;
END
$fn$;

-- Like pgbg.wait, but COMMITs between polls so it holds no snapshot or transaction while it
-- waits: works for CREATE INDEX CONCURRENTLY jobs. CALL it outside a transaction block.
-- No SET clause (transaction control is not allowed in procedures that have one): every name
-- is qualified.
CREATE PROCEDURE pgbg.await(job_id bigint, timeout interval DEFAULT NULL, INOUT state text DEFAULT NULL)
LANGUAGE plpgsql
AS $fn$
DECLARE
  v_state text;
  v_deadline timestamptz;
  v_next_reconcile timestamptz := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) interval '1 second';
  v_sleep double precision := 0.005;
  v_blocker text;
BEGIN
  IF await.timeout IS NOT NULL THEN
    v_deadline := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) await.timeout;
  END IF;
  LOOP
    SELECT j.state INTO v_state FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) await.job_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'job % does not exist', await.job_id USING ERRCODE = '42704';
    END IF;
    IF v_state IN ('succeeded', 'failed', 'cancelled', 'lost')
       OR (v_deadline IS NOT NULL AND pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) v_deadline) THEN
      await.state := v_state;
      RETURN;
    END IF;
    -- no lock check here: each short transaction below may briefly be among those a CONCURRENTLY
    -- operation waits for, which is harmless since it ends within 50 ms
    v_blocker := pgbg._wait_blocker(await.job_id, false);
    IF v_blocker IS NOT NULL THEN
      RAISE WARNING 'pgbg.await(%) returns without waiting: job % is still %', await.job_id, await.job_id, v_state
        USING DETAIL = v_blocker OPERATOR(pg_catalog.||) '.',
              HINT = 'CALL pgbg.await outside a transaction block, from a session that did not launch the job.';
      await.state := v_state;
      RETURN;
    END IF;
    IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) v_next_reconcile THEN
      PERFORM pgbg.reconcile(await.job_id);
      v_next_reconcile := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) interval '1 second';
    END IF;
    COMMIT;  -- raises "invalid transaction termination" inside a transaction block
    PERFORM pg_catalog.pg_sleep(v_sleep);
    COMMIT;
    v_sleep := LEAST(v_sleep OPERATOR(pg_catalog.*) 2.0, 0.05);
  END LOOP;
END
$fn$;

-- Rows kept by a succeeded job that returned rows, in order.
CREATE FUNCTION pgbg.result(job_id bigint) RETURNS SETOF jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_state text;
BEGIN
  SELECT j.state INTO v_state FROM pgbg.job j WHERE j.id = result.job_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'job % does not exist', result.job_id USING ERRCODE = '42704';
  END IF;
  IF v_state <> 'succeeded' THEN
    RAISE EXCEPTION 'job % has not succeeded (state: %)', result.job_id, v_state
      USING ERRCODE = '55000', HINT = format('Wait for it with SELECT pgbg.wait(%s).', result.job_id);
  END IF;
  RETURN QUERY SELECT r."row" FROM pgbg.job_result r WHERE r.job_id = result.job_id ORDER BY r.ord;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Function privileges: nothing by default, then the public API deliberately
-- ---------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION
  pgbg._may_manage(name),
  pgbg._run_sql(bigint),
  pgbg._command_tag(text, bigint),
  pgbg._notify(bigint, text),
  pgbg._record_attempt(bigint, text, text, text),
  pgbg._wait_blocker(bigint, boolean),
  pgbg.pg_background_info(),
  pgbg.submit(text, text, boolean, boolean, text, jsonb, integer, text, text),
  pgbg.launch_job(bigint),
  pgbg.launch_sql(bigint),
  pgbg.mark_launched(bigint, integer, bigint, integer),
  pgbg.launch_failed(bigint, text, text),
  pgbg._finish(bigint, text, text, bigint, text, text, text),
  pgbg.run_job(bigint),
  pgbg.finish_supervised(bigint, text, text, text, text),
  pgbg.reconcile(bigint),
  pgbg.cancel(bigint),
  pgbg.wait(bigint, interval),
  pgbg.result(bigint)
FROM PUBLIC;
REVOKE ALL ON PROCEDURE pgbg.await(bigint, interval, text) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
  pgbg.pg_background_info(),
  pgbg.submit(text, text, boolean, boolean, text, jsonb, integer, text, text),
  pgbg.launch_job(bigint),
  pgbg.launch_sql(bigint),
  pgbg.mark_launched(bigint, integer, bigint, integer),
  pgbg.launch_failed(bigint, text, text),
  pgbg.run_job(bigint),
  pgbg.finish_supervised(bigint, text, text, text, text),
  pgbg.reconcile(bigint),
  pgbg.cancel(bigint),
  pgbg.wait(bigint, interval),
  pgbg.result(bigint),
  -- called by run_job as the submitting role; _finish guards itself
  pgbg._finish(bigint, text, text, bigint, text, text, text),
  pgbg._command_tag(text, bigint),
  pgbg._wait_blocker(bigint, boolean)
TO PUBLIC;
GRANT EXECUTE ON PROCEDURE pgbg.await(bigint, interval, text) TO PUBLIC;

GRANT USAGE ON SCHEMA pgbg TO PUBLIC;
