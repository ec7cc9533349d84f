-- Job registry, schema version 6: the database owns a job from the moment its row commits.
--
-- Until version 5 a queued job was launched, retried and supervised by the upstream session of
-- the client that submitted it, inside the proxy: a proxy restart lost every queued job. From
-- here on (DESIGN.md decision 8):
--
--  - Submission (pgbg.enqueue, on the client's own session, as its role) validates the job,
--    captures the session's settings that change a statement's meaning, commits the row and
--    makes sure a launcher is alive for the session's login. Nothing else.
--  - A launcher (CALL pgbg.run_launcher(...), a pg_background worker per (database, login))
--    launches that login's admitted jobs, applying each job's captured settings (a worker
--    copies its launcher's settings), supervises non-transactional ones and records their
--    outcome, reconciles, and exits after an idle period. It is started from a session of that
--    same login, so it (and every job it launches) has exactly that login's rights: a job
--    submitted after SET ROLE r runs with role r, which the login could set itself (never more).
--    It COMMITs between steps and never waits for a worker inside a transaction, so
--    CONCURRENTLY builds (its own and anyone else's) do not deadlock with it.
--  - Liveness is a session advisory lock per login (key LAUNCHER_LIVE, role oid) that the
--    launcher holds for its whole life: a crash, a pg_terminate_backend or a server restart
--    releases it, and pg_locks tells every session the truth.
--  - Recovery: a transactional job whose worker died without recording an outcome rolled back
--    its effects with it, so it goes back to the queue while it has attempts left. A
--    non-transactional job whose supervisor died ends 'lost' with the reason, unless its effect
--    can be read from the catalog (CREATE INDEX CONCURRENTLY: an index that exists and is valid).
--
-- Advisory lock keys (the first int4; 1885825634 = 'pgbg' is the registry's own, see 001):
--   1885825635 (role oid)  LAUNCHER_LIVE   held by the live launcher of a login, session level
--   1885825636 (role oid)  LAUNCHER_EXIT   shared by a submission until it commits; a launcher
--                                          exits only when it can take it exclusively
--   1885825637 (role oid)  LAUNCHER_START  serialises the starting of a login's launcher
-- Released: never edit this file; change the registry with a new numbered migration.

-- ---------------------------------------------------------------------------------------
-- Columns and tables
-- ---------------------------------------------------------------------------------------
ALTER TABLE pgbg.job ADD COLUMN login name;
ALTER TABLE pgbg.job ADD COLUMN settings jsonb;
COMMENT ON COLUMN pgbg.job.login IS 'session_user of the submitting session: the launcher of this login launches the job';
COMMENT ON COLUMN pgbg.job.settings IS 'settings the submitting session had set (startup options and SET), applied before each launch';

-- Jobs recorded before version 6 were submitted by sessions whose login is not known: their
-- owner's launcher takes them.
UPDATE pgbg.job SET login = owner WHERE login IS NULL;
ALTER TABLE pgbg.job ALTER COLUMN login SET DEFAULT session_user;
ALTER TABLE pgbg.job ALTER COLUMN login SET NOT NULL;

CREATE INDEX job_login_queued_idx ON pgbg.job (login, priority DESC, queued_at, id) WHERE state = 'queued';

-- One row per login that has had a launcher in this database: what it is doing, for
-- pgbg.launchers. Written only by the launcher's own definer functions; liveness is never read
-- from here but from the LAUNCHER_LIVE lock.
CREATE TABLE pgbg.launcher (
  login         name PRIMARY KEY,
  pid           integer,
  backend_start timestamptz,
  started_at    timestamptz,
  starting_pid  integer,
  starting_at   timestamptz,
  last_step_at  timestamptz,
  launched      bigint NOT NULL DEFAULT 0,
  supervising   integer NOT NULL DEFAULT 0,
  idle_ms       integer,
  exited_at     timestamptz,
  exit_reason   text
);
COMMENT ON TABLE pgbg.launcher IS 'pgbg launchers of this database, one row per login; see the pgbg.launchers view.';
ALTER TABLE pgbg.launcher ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgbg.launcher FORCE ROW LEVEL SECURITY;
REVOKE ALL ON pgbg.launcher FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Liveness
-- ---------------------------------------------------------------------------------------

-- The second advisory-lock key of a login: its role oid (as int4; oids above 2^31 wrap, which
-- only matters if two such logins collide, and then they share a lock, never a launcher).
CREATE FUNCTION pgbg._launcher_key(p_login name) RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT (r.oid::bigint % 2147483647)::integer FROM pg_roles r WHERE r.rolname = p_login
$fn$;

-- Is a launcher of p_login alive in this database (or being started this very moment)?
CREATE FUNCTION pgbg._launcher_alive(p_login name) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.locktype = 'advisory' AND l.granted
                    AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                    AND l.classid = 1885825635::oid AND l.objsubid = 2
                    AND l.objid = pgbg._launcher_key(p_login)::oid)
      OR EXISTS (SELECT 1 FROM pgbg.launcher x
                  WHERE x.login = p_login
                    AND x.starting_at > clock_timestamp() - interval '2 seconds')
$fn$;

-- Is this session the live launcher of its login?
CREATE FUNCTION pgbg._is_live_launcher() RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.locktype = 'advisory' AND l.granted AND l.pid = pg_backend_pid()
                    AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                    AND l.classid = 1885825635::oid AND l.objsubid = 2
                    AND l.objid = pgbg._launcher_key(session_user)::oid)
$fn$;

-- A process is a launcher when it runs pgbg.run_launcher as its whole statement.
CREATE FUNCTION pgbg._is_launcher_query(p_query text) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT p_query LIKE 'CALL pgbg.run_launcher(%'
$fn$;

-- Does the session's login have jobs a launcher must look after (queued, or running and possibly coming
-- back to the queue for a retry or recovery)?
CREATE FUNCTION pgbg._launcher_has_work() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT EXISTS (SELECT 1 FROM pgbg.job j WHERE j.login = session_user AND j.state IN ('queued', 'running'))
$fn$;

-- ---------------------------------------------------------------------------------------
-- What counts as in flight: launchers are pg_background workers too, but not jobs
-- ---------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgbg._in_flight_total(p_scope text DEFAULT NULL, p_value text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  IF p_scope IS NOT NULL AND p_scope NOT IN ('database', 'rule') THEN
    RAISE EXCEPTION 'unknown scope %', p_scope USING ERRCODE = '22023', HINT = 'Use database or rule.';
  END IF;
  PERFORM pg_stat_clear_snapshot();
  RETURN GREATEST(
    CASE WHEN p_scope IS DISTINCT FROM 'rule' THEN
      (SELECT count(*) FROM pg_stat_activity a
        WHERE a.backend_type = 'pg_background'
          AND NOT pgbg._is_launcher_query(a.query)
          AND (p_scope IS NULL OR (p_scope = 'database' AND a.datname = p_value)))
    ELSE 0 END,
    (SELECT count(*) FROM pgbg.job j
      WHERE j.state = 'running'
        AND (p_scope IS NULL
             OR (p_scope = 'database' AND j.database = p_value)
             OR (p_scope = 'rule' AND j.rule = p_value))
        AND (EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = j.worker_pid)
             OR (j.worker_start IS NULL
                 AND COALESCE(j.launched_at, j.started_at) > clock_timestamp() - interval '10 seconds'))))::integer;
END
$fn$;

CREATE OR REPLACE FUNCTION pgbg.in_flight(p_scope text DEFAULT NULL, p_value text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  IF p_scope IS NOT NULL AND p_scope NOT IN ('database', 'user', 'rule') THEN
    RAISE EXCEPTION 'unknown scope %', p_scope USING ERRCODE = '22023', HINT = 'Use database, user or rule.';
  END IF;
  IF p_scope IS DISTINCT FROM 'user' THEN
    RETURN pgbg._in_flight_total(p_scope, p_value);
  END IF;
  IF p_value IS NULL
     OR NOT (pg_has_role(current_user, 'pgbg_admin', 'MEMBER')
             OR EXISTS (SELECT 1 FROM pg_roles r
                         WHERE r.rolname = p_value AND pg_has_role(current_user, r.oid, 'MEMBER'))) THEN
    RAISE EXCEPTION 'permission denied to count the jobs of role %', p_value
      USING ERRCODE = '42501', HINT = 'A role may count its own jobs; members of pgbg_admin any role''s.';
  END IF;
  PERFORM pg_stat_clear_snapshot();
  RETURN GREATEST(
    (SELECT count(*) FROM pg_stat_activity a
      WHERE a.backend_type = 'pg_background' AND a.usename = p_value AND NOT pgbg._is_launcher_query(a.query)),
    (SELECT count(*) FROM pgbg.job j
      WHERE j.state = 'running'
        AND j.owner = p_value
        AND (EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = j.worker_pid)
             OR (j.worker_start IS NULL
                 AND COALESCE(j.launched_at, j.started_at) > clock_timestamp() - interval '10 seconds'))))::integer;
END
$fn$;

-- The per-server default (see 001) less the worker slots live launchers hold, server-wide.
CREATE OR REPLACE FUNCTION pgbg.default_max_in_flight() RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT GREATEST(1,
           current_setting('max_worker_processes')::integer
           - LEAST(current_setting('max_parallel_workers')::integer,
                   2 * current_setting('max_parallel_workers_per_gather')::integer)
           - CASE WHEN EXISTS (SELECT 1 FROM pg_subscription)
                  THEN current_setting('max_logical_replication_workers')::integer ELSE 0 END
           - (SELECT count(*)::integer FROM pg_stat_activity a
               WHERE a.backend_type = 'pg_background' AND pgbg._is_launcher_query(a.query)))
$fn$;

-- ---------------------------------------------------------------------------------------
-- Admission limits stored in the database
-- ---------------------------------------------------------------------------------------

-- The proxies' admission configuration (jobs.maxInFlight*, rules' maxInFlight and
-- holdWhileBusy, queue bounds), one row per proxy (config_id, a random id per proxy start),
-- written by a proxy with a pgbg_admin registry connection (jobs.registryUrl) when it starts
-- and on every reload. A job submitted through that proxy carries its config_id in its limits
-- and is admitted under the row's limits of the moment, so a reload reaches jobs already
-- queued. A job without a row (a proxy without registryUrl, a row gone) keeps the limits it
-- was submitted with.
CREATE TABLE pgbg.admission_config (
  config_id  text PRIMARY KEY CHECK (length(config_id) BETWEEN 1 AND 64),
  config     jsonb NOT NULL CHECK (jsonb_typeof(config) = 'object'),
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  updated_by name NOT NULL DEFAULT session_user
);
ALTER TABLE pgbg.admission_config ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgbg.admission_config FORCE ROW LEVEL SECURITY;
REVOKE ALL ON pgbg.admission_config FROM PUBLIC;

-- Only members of pgbg_admin may set it. Rows not written for 7 days are dropped.
--   {"server": 8 | "auto", "database": {"db": 2, "*": 4}, "user": {"alice": 1},
--    "rules": {"name": {"rule": 1, "busy_active_backends": 10, "busy_min_free_workers": 2}},
--    "queue": 1000, "queue_per_user": 100}
CREATE FUNCTION pgbg.set_admission_config(config_id text, config jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  c jsonb := set_admission_config.config;
BEGIN
  IF NOT pg_has_role(session_user, 'pgbg_admin', 'MEMBER') THEN
    RAISE EXCEPTION 'permission denied: only members of pgbg_admin may set the admission limits' USING ERRCODE = '42501';
  END IF;
  IF c IS NULL OR jsonb_typeof(c) <> 'object'
     OR (c ? 'server' AND jsonb_typeof(c->'server') NOT IN ('number', 'string'))
     OR (c ? 'database' AND jsonb_typeof(c->'database') <> 'object')
     OR (c ? 'user' AND jsonb_typeof(c->'user') <> 'object')
     OR (c ? 'rules' AND jsonb_typeof(c->'rules') <> 'object') THEN
    RAISE EXCEPTION 'admission config must be an object with server, database, user, rules, queue, queue_per_user'
      USING ERRCODE = '22023';
  END IF;
  DELETE FROM pgbg.admission_config a WHERE a.updated_at < clock_timestamp() - interval '7 days';
  INSERT INTO pgbg.admission_config AS a (config_id, config, updated_at, updated_by)
  VALUES (set_admission_config.config_id, c, clock_timestamp(), session_user)
  ON CONFLICT ON CONSTRAINT admission_config_pkey
  DO UPDATE SET config = EXCLUDED.config, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by;
END
$fn$;

-- The limits object pgbg.admit reads, for a job of p_login in p_database under rule p_rule,
-- from the stored configuration p_config_id (the same derivation as the proxy's,
-- src/jobs/scheduling-policy.ts); NULL when that configuration is not stored.
CREATE FUNCTION pgbg._limits_for(p_config_id text, p_database name, p_login name, p_rule text) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  c jsonb;
  v_out jsonb;
  v jsonb;
BEGIN
  IF p_config_id IS NULL THEN
    RETURN NULL;
  END IF;
  SELECT a.config INTO c FROM pgbg.admission_config a WHERE a.config_id = p_config_id;
  IF c IS NULL THEN
    RETURN NULL;
  END IF;
  v_out := jsonb_strip_nulls(jsonb_build_object('config_id', p_config_id, 'queue', c->'queue',
                                                'queue_per_user', c->'queue_per_user', 'server', c->'server'));
  v := COALESCE(c->'database'->(p_database::text), c->'database'->'*');
  IF v IS NOT NULL THEN
    v_out := v_out || jsonb_build_object('database', v);
  END IF;
  v := COALESCE(c->'user'->(p_login::text), c->'user'->'*');
  IF v IS NOT NULL THEN
    v_out := v_out || jsonb_build_object('user', v);
  ELSIF v_out ? 'server' THEN
    v_out := v_out || jsonb_build_object('user', 'share');
  END IF;
  IF p_rule IS NOT NULL AND c->'rules'->p_rule IS NOT NULL THEN
    v_out := v_out || jsonb_strip_nulls(jsonb_build_object(
               'rule', c->'rules'->p_rule->'rule',
               'busy_active_backends', c->'rules'->p_rule->'busy_active_backends',
               'busy_min_free_workers', c->'rules'->p_rule->'busy_min_free_workers'));
  END IF;
  RETURN v_out;
END
$fn$;

-- The limits a queued job is admitted under now: the stored configuration's, else its own.
CREATE FUNCTION pgbg._job_limits(q pgbg.job) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT COALESCE(pgbg._limits_for(q.limits->>'config_id', q.database, q.login, q.rule), q.limits, '{}'::jsonb)
$fn$;

-- A queued job blocks the ones behind it only if it could launch now: due, its login's
-- launcher alive (version 5 asked for the submitting session instead), its scope with room.
CREATE OR REPLACE FUNCTION pgbg._could_launch(q pgbg.job) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT pgbg._due(q.not_before, q.options)
     AND pgbg._launcher_alive(q.login)
     AND pgbg._scope_has_room(q.database, q.owner, q.rule, pgbg._job_limits(q))
     AND NOT pgbg._server_busy(pgbg._job_limits(q))
$fn$;

-- ---------------------------------------------------------------------------------------
-- Submission
-- ---------------------------------------------------------------------------------------

-- Settings a job never takes from its submitting session: who it runs as (the job's owner
-- decides), the proxy's own transaction wrapping, the job's timeout (options.timeout_ms), and
-- what only makes sense for a client connection.
CREATE FUNCTION pgbg._setting_is_captured(p_name text) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT p_name NOT IN ('role', 'session_authorization', 'client_encoding', 'statement_timeout',
                        'default_transaction_read_only', 'default_transaction_isolation',
                        'default_transaction_deferrable', 'transaction_isolation', 'transaction_read_only',
                        'transaction_deferrable', 'idle_in_transaction_session_timeout', 'idle_session_timeout',
                        'client_min_messages')
     -- E'' literals: a session with standard_conforming_strings = off (which a job carries into
     -- its launcher) must read them the same, and without a WARNING
     AND p_name NOT LIKE E'pg\\_background.%'
     AND p_name NOT LIKE E'pgbg\\_standin.%'
$fn$;

-- The calling session's settings that can change what a statement means: every user-settable
-- setting whose value does not come from the built-in default (postgresql.conf, ALTER DATABASE /
-- ROLE ... SET, startup options, SET: search_path, TimeZone, DateStyle, IntervalStyle, lc_*,
-- standard_conforming_strings, settings of loaded extensions, ...), as current_setting() spells
-- them (with units), plus the custom settings named in p_names (myapp.tenant: placeholders of no
-- loaded extension, which pg_settings does not list, so they must be named; null when unset).
-- The launcher sets exactly these before the launch and every other setting to its built-in
-- default, so the job sees its session's settings and nothing of another's. SECURITY INVOKER:
-- it must see the caller's.
CREATE FUNCTION pgbg.session_settings(p_names text[] DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE SECURITY INVOKER
AS $fn$
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
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) n.name)) x
$fn$;

-- Records a queued job of p_owner for the calling session's login. The only INSERT into
-- pgbg.job from version 6 on (version 3's pgbg._enqueue stays for its callers). Trusts nothing:
-- the owner must be a role the login may act as, with pg_background's launch right; options,
-- settings and limits are checked here, whoever calls it.
CREATE FUNCTION pgbg._enqueue_job(
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
  v_info record;
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

  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF NOT v_info.installed THEN
    RAISE EXCEPTION 'pg_background is not installed in database %', current_database()
      USING ERRCODE = '42883', HINT = 'CREATE EXTENSION pg_background; as a superuser';
  END IF;
  IF NOT has_function_privilege(p_owner, v_info.launch_function::oid, 'EXECUTE')
     OR NOT has_function_privilege(session_user, v_info.launch_function::oid, 'EXECUTE') THEN
    RAISE EXCEPTION 'permission denied: role % may not launch pg_background workers in database %', p_owner, current_database()
      USING ERRCODE = '42501',
            DETAIL = format('%s needs EXECUTE on %s', p_owner, v_info.launch_function::text);
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

-- The calling role's own right to have jobs launched: EXECUTE on the launch function (and, for
-- a non-transactional job, on the wait and result functions). 42501 with a DETAIL naming exactly
-- the functions it lacks and a HINT with the GRANT (pgbg.submit and pgbg.enqueue). SECURITY
-- INVOKER: it asks about the caller. (pgbg._enqueue_job checks again, trusting nothing.)
CREATE FUNCTION pgbg._check_launch_rights(p_transactional boolean) RETURNS void
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_info record;
BEGIN
  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF v_info.installed AND (NOT v_info.can_launch OR (NOT p_transactional AND NOT v_info.can_supervise)) THEN
    RAISE EXCEPTION 'permission denied: role % may not launch pg_background workers in database %', current_user, current_database()
      USING ERRCODE = '42501',
            DETAIL = format('%s needs EXECUTE on %s', current_user,
                            CASE WHEN p_transactional THEN v_info.missing_for_launch ELSE v_info.missing_for_supervision END),
            HINT = v_info.grant_hint || ' (as a superuser)';
  END IF;
END
$fn$;

-- pgbg.submit, the record-only SQL API of version 1 (the caller may launch the job itself with
-- pgbg.launch_sql / mark_launched; otherwise its login's launcher will): from version 6 it also
-- records the session's settings and login, through pgbg._enqueue_job. It starts no launcher
-- (pgbg.enqueue does; pgbg.ensure_launcher and pgbg.start_launcher start one on request).
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
AS $fn$
DECLARE
  v_transactional boolean := COALESCE(submit.transactional, true);
BEGIN
  IF NOT v_transactional AND NOT COALESCE(submit.supervised, true) THEN
    RAISE EXCEPTION 'pgbg.submit: a non-transactional job must be supervised (its outcome can only be read by the launching session)'
      USING ERRCODE = '22023';
  END IF;
  PERFORM pgbg._check_launch_rights(v_transactional);
  RETURN pgbg._enqueue_job(current_user, submit.statement, submit.kind, v_transactional, submit.rule, submit.options,
                           submit.priority, submit.idem_key, submit.session_id, pgbg.session_settings(), NULL);
END
$fn$;

-- Launches p_sql in a pg_background worker of this session with the API generation
-- pgbg.pg_background_info() found (schema-qualified; the queue size passed explicitly, as the
-- launch function's own default, so that the call matches (text, int4) exactly and a function
-- someone adds beside it cannot capture it), and detaches it when p_detach. SECURITY INVOKER and unpinned:
-- the worker runs as the caller and copies this session's settings of the moment.
CREATE FUNCTION pgbg._launch_worker(p_sql text, p_detach boolean,
                                    OUT worker_pid integer, OUT cookie bigint, OUT api integer)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v_info record;
  v_queue_size pg_catalog.int4;
BEGIN
  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF NOT COALESCE(v_info.installed, false) THEN
    RAISE EXCEPTION 'pg_background is not installed in database %', pg_catalog.current_database()
      USING ERRCODE = '42883', HINT = 'CREATE EXTENSION pg_background; as a superuser';
  END IF;
  v_queue_size := COALESCE(pg_catalog.pg_get_function_arg_default(v_info.launch_function::pg_catalog.oid, 2)::pg_catalog.int4, 0);
  -- "|| ''": pg_background 1.8 mishandles short-header text arguments (see pgbg.launch_sql).
  IF v_info.generation OPERATOR(pg_catalog.=) 'handle' THEN
    EXECUTE pg_catalog.format('SELECT (s.h).pid, (s.h).cookie FROM (SELECT %I.pg_background_launch($1 OPERATOR(pg_catalog.||) '''', $2) h) s',
                              v_info.fn_schema)
      INTO worker_pid, cookie USING p_sql, v_queue_size;
  ELSIF v_info.generation OPERATOR(pg_catalog.=) 'v2' THEN
    EXECUTE pg_catalog.format('SELECT h.pid, h.cookie FROM %I.pg_background_launch_v2($1 OPERATOR(pg_catalog.||) '''', $2) h',
                              v_info.fn_schema)
      INTO worker_pid, cookie USING p_sql, v_queue_size;
  ELSE
    EXECUTE pg_catalog.format('SELECT %I.pg_background_launch($1 OPERATOR(pg_catalog.||) '''', $2)', v_info.fn_schema)
      INTO worker_pid USING p_sql, v_queue_size;
  END IF;
  api := v_info.api;
  IF p_detach AND v_info.detach_function IS NOT NULL THEN
    IF v_info.generation OPERATOR(pg_catalog.=) 'handle' THEN
      EXECUTE pg_catalog.format('SELECT %I.pg_background_detach($1, $2)', v_info.fn_schema) USING worker_pid, cookie;
    ELSIF v_info.generation OPERATOR(pg_catalog.=) 'v2' THEN
      EXECUTE pg_catalog.format('SELECT %I.pg_background_detach_v2($1, $2)', v_info.fn_schema) USING worker_pid, cookie;
    ELSE
      EXECUTE pg_catalog.format('SELECT %I.pg_background_detach($1)', v_info.fn_schema) USING worker_pid;
    END IF;
  END IF;
END
$fn$;

-- Starts the launcher of the session's login in this database unless one is alive; returns
-- the new launcher's pid, or NULL. SECURITY INVOKER and unpinned on purpose: the launcher is a
-- pg_background worker of this very session, authenticated as its login (decision 1). It is
-- launched with the timeouts cleared (a worker arms a copied statement_timeout once, at its
-- start: a client's 5 s would end the launcher after 5 s) and resets every other setting it
-- copied as it starts. Concurrent starts of one login are serialised by LAUNCHER_START.
-- Anyone may call it:  SELECT pgbg.start_launcher();
CREATE FUNCTION pgbg.start_launcher(idle_ms integer DEFAULT 10000) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v_key pg_catalog.int4 := pgbg._launcher_key(session_user);
  v_pid pg_catalog.int4;
  v_sql pg_catalog.text;
  v_old pg_catalog.text[];
BEGIN
  IF start_launcher.idle_ms IS NULL OR start_launcher.idle_ms OPERATOR(pg_catalog.<) 0
     OR start_launcher.idle_ms OPERATOR(pg_catalog.>) 86400000 THEN
    RAISE EXCEPTION 'idle_ms must be between 0 and 86400000' USING ERRCODE = '22023';
  END IF;
  IF pgbg._launcher_alive(session_user) THEN
    RETURN NULL;
  END IF;
  PERFORM pg_catalog.pg_advisory_xact_lock(1885825637, v_key);
  IF pgbg._launcher_alive(session_user) THEN
    RETURN NULL;
  END IF;
  v_sql := 'CALL pgbg.run_launcher(' OPERATOR(pg_catalog.||) start_launcher.idle_ms::pg_catalog.text OPERATOR(pg_catalog.||) ')';
  v_old := ARRAY[pg_catalog.current_setting('statement_timeout'), pg_catalog.current_setting('lock_timeout'),
                 pg_catalog.current_setting('idle_in_transaction_session_timeout'), pg_catalog.current_setting('role')];
  PERFORM pg_catalog.set_config('statement_timeout', '0', true);
  PERFORM pg_catalog.set_config('lock_timeout', '0', true);
  PERFORM pg_catalog.set_config('idle_in_transaction_session_timeout', '0', true);
  PERFORM pg_catalog.set_config('default_transaction_read_only', 'off', true);
  PERFORM pg_catalog.set_config('default_transaction_isolation', 'read committed', true);
  -- The launcher runs as its login, whatever role this session has set.
  PERFORM pg_catalog.set_config('role', 'none', true);
  SELECT w.worker_pid INTO v_pid FROM pgbg._launch_worker(v_sql, true) w;
  PERFORM pg_catalog.set_config('statement_timeout', v_old[1], true);
  PERFORM pg_catalog.set_config('lock_timeout', v_old[2], true);
  PERFORM pg_catalog.set_config('idle_in_transaction_session_timeout', v_old[3], true);
  PERFORM pg_catalog.set_config('role', v_old[4], true);
  PERFORM pgbg._launcher_starting(v_pid, start_launcher.idle_ms);
  RETURN v_pid;
END
$fn$;

-- Notes that a launcher of the session's login is starting (the "alive" answer for the two
-- seconds before it holds its lock).
CREATE FUNCTION pgbg._launcher_starting(p_pid integer, p_idle_ms integer) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  INSERT INTO pgbg.launcher AS x (login, starting_pid, starting_at, idle_ms)
  VALUES (session_user, p_pid, clock_timestamp(), p_idle_ms)
  ON CONFLICT (login) DO UPDATE SET starting_pid = EXCLUDED.starting_pid, starting_at = EXCLUDED.starting_at,
                                    idle_ms = EXCLUDED.idle_ms
$fn$;

-- Starts the login's launcher if it has jobs waiting and none is alive (after a server
-- restart, or a launcher that was terminated). The proxy calls it on a new session of a login
-- it has not looked at for a while; a role can call it too. Returns the pid started, or NULL.
CREATE FUNCTION pgbg.ensure_launcher(idle_ms integer DEFAULT 10000) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
BEGIN
  IF NOT pgbg._launcher_has_work() OR pgbg._launcher_alive(session_user) THEN
    RETURN NULL;
  END IF;
  RETURN pgbg.start_launcher(ensure_launcher.idle_ms);
END
$fn$;

-- Submission, one round trip for the proxy: validates the options, captures the session's
-- settings, records the job for the session's login and current role, and makes sure that
-- login has a live launcher. Queue bounds (limits.queue, limits.queue_per_user) answer 53400
-- and record nothing. Nothing is launched here: the answer does not wait for a worker.
-- SECURITY INVOKER and unpinned (it reads the caller's settings; it may start the launcher):
-- every operator and type is qualified.
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
  -- A launcher that cannot start now (no free worker slot) does not undo the submission: the
  -- job waits, visibly (pgbg.jobs.waiting_for_launcher), for the next submission or session
  -- of this login to start one.
  BEGIN
    launcher_started := pgbg.start_launcher(enqueue.launcher_idle_ms);
  EXCEPTION WHEN OTHERS THEN
    launcher_started := NULL;
  END;
  launcher_alive := pgbg._launcher_alive(session_user);
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- The launcher's steps (each checks that its caller is the live launcher of the job's login)
-- ---------------------------------------------------------------------------------------

-- The launcher's next candidates: its login's queued jobs that are due, in queue order.
CREATE FUNCTION pgbg._launcher_candidates(p_limit integer)
RETURNS TABLE (job_id bigint, limits jsonb)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT j.id, pgbg._job_limits(j) FROM pgbg.job j
   WHERE j.state = 'queued' AND j.login = session_user AND NOT j.cancel_requested
     AND (j.not_before IS NULL OR j.not_before <= clock_timestamp())
   ORDER BY j.priority DESC, j.queued_at, j.id
   LIMIT p_limit
$fn$;

-- What the launcher needs to launch one job of its login.
CREATE FUNCTION pgbg._launcher_job(p_job_id bigint)
RETURNS TABLE (owner name, transactional boolean, options jsonb, settings jsonb)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT j.owner, j.transactional, j.options, j.settings FROM pgbg.job j
   WHERE j.id = p_job_id AND j.login = session_user AND j.state = 'queued'
$fn$;

-- Launches one queued job of the launcher's login in this transaction, with the job's captured
-- settings and as its owner (SET LOCAL ROLE: the login may act as that role; the worker copies
-- both), a transactional job detached (it records its own outcome), and records its worker.
-- SECURITY INVOKER and unpinned: the worker copies this session's settings at launch.
CREATE FUNCTION pgbg._launcher_launch(
  p_job_id bigint,
  OUT worker_pid integer,
  OUT cookie bigint,
  OUT api integer,
  OUT transactional boolean)
RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
DECLARE
  v record;
  s record;
  v_sql pg_catalog.text;
  v_timeout pg_catalog.text;
  v_other_role boolean;
BEGIN
  SELECT * INTO v FROM pgbg._launcher_job(p_job_id);
  IF NOT FOUND THEN
    RAISE EXCEPTION 'job % is not a queued job of login %', p_job_id, session_user USING ERRCODE = '55000';
  END IF;
  transactional := v.transactional;
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
  FOR s IN SELECT t.name, t.boot_val FROM pg_catalog.pg_settings t
            WHERE v.settings IS NOT NULL
              AND NOT (t.source OPERATOR(pg_catalog.=) ANY (ARRAY['default', 'override']::pg_catalog.text[]))
              AND (t.context OPERATOR(pg_catalog.=) 'user'
                   OR (t.context OPERATOR(pg_catalog.=) 'superuser' AND pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on'))
              AND pgbg._setting_is_captured(t.name)
              AND NOT (v.settings OPERATOR(pg_catalog.?) t.name)
              AND t.boot_val IS NOT NULL LOOP
    IF NOT (pg_catalog.current_setting(s.name) OPERATOR(pg_catalog.=) s.boot_val) THEN
      PERFORM pg_catalog.set_config(s.name, s.boot_val, true);
    END IF;
  END LOOP;
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

-- Records the worker the launcher just started for a job. Only the live launcher of the job's
-- login may; the pid, if the process is visible yet, must be a worker of the job's owner or
-- login started after the job was submitted and not another active job's (42501 otherwise). A
-- worker not visible yet is recorded without a start time, as version 3's mark_launched does.
CREATE FUNCTION pgbg._launcher_mark(p_job_id bigint, p_pid integer, p_cookie bigint, p_api integer) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v record;
  v_wstart timestamptz;
  v_wuser name;
  v_lstart timestamptz;
BEGIN
  SELECT j.owner, j.login, j.state, j.submitted_at INTO v FROM pgbg.job j WHERE j.id = p_job_id;
  IF NOT FOUND OR v.login IS DISTINCT FROM session_user OR NOT pgbg._is_live_launcher() THEN
    RAISE EXCEPTION 'only the launcher of login % may record the launch of job %', COALESCE(v.login, '?'), p_job_id
      USING ERRCODE = '42501';
  END IF;
  IF v.state <> 'queued' THEN
    RAISE EXCEPTION 'job % is %, it can no longer be launched', p_job_id, v.state USING ERRCODE = '55000';
  END IF;
  IF p_api IS NULL OR p_api NOT IN (1, 2) OR p_pid IS NULL OR p_pid <= 0 THEN
    RAISE EXCEPTION 'a worker handle is a pid and an api of 1 or 2' USING ERRCODE = '22023';
  END IF;
  PERFORM pg_stat_clear_snapshot();
  v_wstart := pgbg._worker_start(p_pid, ARRAY[v.owner, session_user::name], v.submitted_at, p_cookie);
  IF v_wstart IS NULL THEN
    IF EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = p_pid) THEN
      RAISE EXCEPTION 'process % is not a worker launched for job %', p_pid, p_job_id USING ERRCODE = '42501';
    END IF;
  ELSE
    SELECT a.usename INTO v_wuser FROM pg_stat_activity a WHERE a.pid = p_pid;
    IF EXISTS (SELECT 1 FROM pgbg.job o
                WHERE o.id <> p_job_id AND o.state IN ('queued', 'running')
                  AND o.worker_pid = p_pid AND o.worker_start = v_wstart) THEN
      RAISE EXCEPTION 'process % is the worker of another job', p_pid USING ERRCODE = '42501';
    END IF;
  END IF;
  SELECT a.backend_start INTO v_lstart FROM pg_stat_activity a WHERE a.pid = pg_backend_pid();
  UPDATE pgbg.job j
     SET state = 'running',
         worker_pid = p_pid, worker_start = v_wstart, worker_user = v_wuser,
         cookie = p_cookie, api = p_api,
         launcher_pid = pg_backend_pid(), launcher_start = v_lstart,
         attempts = j.attempts + 1,
         launched_at = clock_timestamp(),
         started_at = COALESCE(j.started_at, clock_timestamp())
   WHERE j.id = p_job_id;
  UPDATE pgbg.launcher x SET launched = x.launched + 1 WHERE x.login = session_user;
  PERFORM pgbg._notify(p_job_id, 'running');
END
$fn$;

-- The launch of a queued job failed for a reason waiting will not cure: the job ends 'failed'.
CREATE FUNCTION pgbg._launcher_fail(p_job_id bigint, p_sqlstate text, p_error text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  IF NOT pgbg._is_live_launcher() THEN
    RAISE EXCEPTION 'only a live launcher may record a failed launch' USING ERRCODE = '42501';
  END IF;
  IF p_sqlstate IS NOT NULL AND p_sqlstate !~ '^[0-9A-Z]{5}$' THEN
    RAISE EXCEPTION 'invalid SQLSTATE %', p_sqlstate USING ERRCODE = '22023';
  END IF;
  UPDATE pgbg.job j
     SET state = 'failed', sqlstate = p_sqlstate,
         error = 'launch failed: ' || COALESCE(p_error, 'unknown error'),
         finished_at = clock_timestamp()
   WHERE j.id = p_job_id AND j.login = session_user AND j.state = 'queued';
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM pgbg._record_attempt(p_job_id, 'failed', p_sqlstate, 'launch failed: ' || COALESCE(p_error, 'unknown error'));
  PERFORM pgbg._notify(p_job_id, 'failed');
  RETURN true;
END
$fn$;

-- Reads a stopped supervised worker's outcome and records it (the launcher holds its handle).
-- SECURITY INVOKER: pg_background checks the reader's own rights; as the job's owner if the
-- login launched it under that role.
CREATE FUNCTION pgbg._launcher_settle(p_job_id bigint, p_owner name, p_api integer, p_pid integer, p_cookie bigint)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_tag text;
  v_sqlstate text;
  v_error text;
  v_state text;
BEGIN
  IF p_owner <> session_user THEN
    PERFORM set_config('role', p_owner, true);
  END IF;
  BEGIN
    v_tag := pgbg.worker_result(p_api, p_pid, p_cookie);
    v_state := 'succeeded';
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT;
    v_state := CASE WHEN v_sqlstate = '57014' THEN 'cancelled' ELSE 'failed' END;
  END;
  IF p_owner <> session_user THEN
    PERFORM set_config('role', 'none', true);
  END IF;
  PERFORM pgbg.finish_supervised(p_job_id, v_state, v_tag, v_sqlstate, v_error);
  RETURN v_state;
END
$fn$;

-- The launcher's own row: registered when it takes its lock, refreshed as it works, closed as it exits.
CREATE FUNCTION pgbg._launcher_report(p_event text, p_supervising integer, p_idle_ms integer, p_reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
BEGIN
  IF NOT pgbg._is_live_launcher() THEN
    RAISE EXCEPTION 'only a live launcher may report' USING ERRCODE = '42501';
  END IF;
  IF p_event = 'start' THEN
    INSERT INTO pgbg.launcher AS x (login, pid, backend_start, started_at, last_step_at, idle_ms, supervising, launched)
    VALUES (session_user, pg_backend_pid(), (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()),
            clock_timestamp(), clock_timestamp(), p_idle_ms, 0, 0)
    ON CONFLICT (login) DO UPDATE
      SET pid = EXCLUDED.pid, backend_start = EXCLUDED.backend_start, started_at = EXCLUDED.started_at,
          last_step_at = EXCLUDED.last_step_at, idle_ms = EXCLUDED.idle_ms, supervising = 0, launched = 0,
          starting_pid = NULL, starting_at = NULL, exited_at = NULL, exit_reason = NULL;
  ELSIF p_event = 'step' THEN
    UPDATE pgbg.launcher x SET last_step_at = clock_timestamp(), supervising = p_supervising
     WHERE x.login = session_user AND x.pid = pg_backend_pid();
  ELSIF p_event = 'exit' THEN
    UPDATE pgbg.launcher x SET exited_at = clock_timestamp(), exit_reason = p_reason, supervising = p_supervising
     WHERE x.login = session_user AND x.pid = pg_backend_pid();
  ELSE
    RAISE EXCEPTION 'unknown launcher event %', p_event USING ERRCODE = '22023';
  END IF;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- The launcher
-- ---------------------------------------------------------------------------------------

-- Runs as a pg_background worker of a session of its login (started by pgbg.start_launcher):
--   CALL pgbg.run_launcher(idle_ms)
-- One step: read the outcome of supervised workers that stopped; launch the login's admitted
-- jobs (pgbg.admit: limits, fair order, priorities, windows, retry backoff), one transaction
-- each; now and then reconcile (recovery after crashes). A COMMIT after each, and no wait for
-- a worker inside a transaction. It exits when it has had nothing to do for idle_ms and its
-- login has no queued or running job, or at once if another launcher of its login is alive.
-- A procedure with transaction control cannot have a SET clause: its own statements run with
-- search_path = pg_catalog, pg_temp, set as it starts, and are qualified anyway.
CREATE PROCEDURE pgbg.run_launcher(idle_ms integer DEFAULT 10000)
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

    -- 3. Launch what is admitted, one job per transaction (its settings are SET LOCAL).
    FOR c IN SELECT * FROM pgbg._launcher_candidates(32) LOOP
      EXIT WHEN v_blocked;
      BEGIN
        IF pgbg.admit(c.job_id, c.limits) THEN
          SELECT * INTO l FROM pgbg._launcher_launch(c.job_id);
          IF NOT l.transactional THEN
            h_job := pg_catalog.array_append(h_job, c.job_id);
            h_owner := pg_catalog.array_append(h_owner, (SELECT x.owner FROM pgbg.job x WHERE x.id OPERATOR(pg_catalog.=) c.job_id));
            h_pid := pg_catalog.array_append(h_pid, l.worker_pid);
            h_cookie := pg_catalog.array_append(h_cookie, l.cookie);
            h_api := pg_catalog.array_append(h_api, l.api);
          END IF;
          v_worked := true;
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
      END;
      COMMIT;
    END LOOP;
    COMMIT;

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

-- ---------------------------------------------------------------------------------------
-- Workers: run only what their launch recorded
-- ---------------------------------------------------------------------------------------

-- As version 4's run_job, plus: a worker runs its job only if the job's row says it is this
-- worker's (state 'running', worker_pid = this process). The launch that started it marks the
-- row in the same transaction; if that transaction rolled back (the launcher died, the mark
-- was refused), the job is still 'queued' and will be launched again, so this worker must do
-- nothing: otherwise a job could run twice.
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
  -- Still queued and unmarked: launched by the two-step SQL idiom (launch, then mark_launched
  -- in the caller's transaction, which this worker does not wait for), or by a launch whose
  -- transaction rolled back. Give the mark 2 s to commit (each look takes a new snapshot).
  FOR i IN 1..200 LOOP
    EXIT WHEN NOT (v.state OPERATOR(pg_catalog.=) 'queued') OR v.worker_pid IS NOT NULL;
    PERFORM pg_catalog.pg_sleep(0.01);
    SELECT j.* INTO v FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) run_job.job_id;
  END LOOP;
  IF NOT (v.state OPERATOR(pg_catalog.=) 'running')
     OR v.worker_pid IS NULL OR NOT (v.worker_pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()) THEN
    RETURN; -- not (or no longer) this worker's: cancelled, lost, or launched again elsewhere
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
      v_state := 'cancelled';
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

-- ---------------------------------------------------------------------------------------
-- Recovery
-- ---------------------------------------------------------------------------------------

-- As version 1's _finish, plus: a statement cancelled without pgbg.cancel having asked for it and
-- not by its own statement_timeout was interrupted from outside: on pg_background 2.x a server
-- shutdown (pg_ctl stop -m fast) or pg_terminate_backend reaches the worker as a query cancel,
-- which run_job catches, and the job would end 'failed' although nothing of it committed and
-- nothing was wrong with it. Like a worker that died, it goes back to the queue while it has
-- attempts left (the attempt is recorded 'retried' with its 57014). It reads the job row FOR
-- UPDATE, so a cancel request that is still committing is seen.
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
  IF rtrim(current_query(), E' \t\r\n;') IS DISTINCT FROM pgbg._run_sql(_finish.job_id) THEN
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
  SELECT a.backend_start INTO v_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid();

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

-- ---------------------------------------------------------------------------------------

-- What the catalog says about a non-transactional job whose outcome nobody read: for CREATE
-- INDEX CONCURRENTLY (options.index names the index) 'succeeded' when the index exists and is
-- valid, 'failed' when it exists and is invalid; NULL (unknown) otherwise.
CREATE FUNCTION pgbg._effect_state(p_options jsonb) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT CASE WHEN i.indisvalid AND i.indisready THEN 'succeeded' ELSE 'failed' END
    FROM pg_index i
   WHERE p_options ? 'index'
     AND i.indexrelid = to_regclass(p_options->>'index')
$fn$;

-- Reconciliation, as version 1's pgbg.reconcile, with recovery:
--  (a) a transactional job whose worker is gone without an outcome rolled back with it: back to
--      the queue while it has attempts left (the attempt is recorded 'lost'), else 'lost'
--      ('cancelled' if a cancel was asked for). A worker launched before the server last
--      started is gone whatever pg_stat_activity says about its pid.
--  (b) a supervised job whose worker and launcher are both gone: 'succeeded' / 'failed' when
--      the catalog shows its effect (pgbg._effect_state), else 'lost' with the reason.
--  Queued jobs are never judged here: they wait for their login's launcher.
CREATE FUNCTION pgbg._reconcile(p_job_id bigint, p_settle_only boolean) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  r record;
  n integer := 0;
  v_state text;
  v_boot timestamptz := pg_postmaster_start_time();
BEGIN
  PERFORM pg_stat_clear_snapshot();

  -- A launcher records its worker before the worker shows in pg_stat_activity (it does not
  -- wait for it): note the worker's start time once it shows, so that a later process with
  -- the same pid is never taken for it.
  IF NOT p_settle_only THEN
  UPDATE pgbg.job j
     SET worker_start = w.ws
    FROM (SELECT x.id, pgbg._worker_start(x.worker_pid, ARRAY[x.owner, x.login], x.submitted_at, x.cookie) AS ws
            FROM pgbg.job x
           WHERE x.state = 'running' AND x.worker_start IS NULL AND x.worker_pid IS NOT NULL
             AND (p_job_id IS NULL OR x.id = p_job_id)) w
   WHERE j.id = w.id AND w.ws IS NOT NULL AND j.state = 'running' AND j.worker_start IS NULL
     AND w.ws >= COALESCE(j.launched_at, j.started_at) - interval '1 second';
  END IF;

  FOR r IN
    SELECT j.id, j.attempts, j.max_attempts, j.cancel_requested, j.worker_pid, j.started_at
      FROM pgbg.job j
     WHERE j.state = 'running'
       AND j.transactional
       AND (p_job_id IS NULL OR j.id = p_job_id)
       AND j.worker_pid IS NOT NULL
       AND (NOT p_settle_only OR j.cancel_requested OR j.attempts >= j.max_attempts)
       -- A worker not seen yet gets 3 s to show up (a launcher does not wait for it); judging it
       -- early is safe, since a late worker finds the row no longer names it and does nothing.
       AND (COALESCE(j.launched_at, j.started_at) < v_boot
            OR ((j.worker_start IS NOT NULL OR COALESCE(j.launched_at, j.started_at) < clock_timestamp() - interval '3 seconds')
                AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                 WHERE a.pid = j.worker_pid
                                   AND (j.worker_start IS NULL OR a.backend_start = j.worker_start))))
     FOR UPDATE SKIP LOCKED
  LOOP
    IF NOT r.cancel_requested AND r.attempts < r.max_attempts THEN
      UPDATE pgbg.job j
         SET state = 'queued',
             error = format('attempt %s of %s: worker ended without recording an outcome (its work was rolled back); queued again',
                            r.attempts, r.max_attempts),
             queued_at = clock_timestamp(), not_before = NULL,
             worker_pid = NULL, worker_start = NULL, worker_user = NULL, cookie = NULL, api = NULL
       WHERE j.id = r.id AND j.state = 'running';
      PERFORM pgbg._record_attempt(r.id, 'lost', NULL, 'worker ended without recording an outcome; queued again');
      PERFORM pgbg._notify(r.id, 'queued');
    ELSE
      UPDATE pgbg.job j
         SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'lost' END,
             lost_reason = CASE WHEN j.cancel_requested THEN NULL
                                ELSE format('worker process ended without recording an outcome (terminated or crashed) on attempt %s of %s',
                                            j.attempts, j.max_attempts) END,
             sqlstate = CASE WHEN j.cancel_requested THEN '57014' ELSE j.sqlstate END,
             error = CASE WHEN j.cancel_requested
                          THEN 'cancelled: the worker ended after the cancel request without committing'
                          ELSE j.error END,
             finished_at = clock_timestamp()
       WHERE j.id = r.id AND j.state = 'running';
      PERFORM pgbg._record_attempt(r.id, CASE WHEN r.cancel_requested THEN 'cancelled' ELSE 'lost' END, NULL,
                                   'worker ended without recording an outcome');
      PERFORM pgbg._notify(r.id, CASE WHEN r.cancel_requested THEN 'cancelled' ELSE 'lost' END);
    END IF;
    n := n + 1;
  END LOOP;

  FOR r IN
    SELECT j.id, j.options, j.cancel_requested
      FROM pgbg.job j
     WHERE j.state = 'running'
       AND NOT j.transactional
       AND (p_job_id IS NULL OR j.id = p_job_id)
       AND (COALESCE(j.launched_at, j.started_at) < v_boot
            OR ((j.worker_start IS NOT NULL OR COALESCE(j.launched_at, j.started_at) < clock_timestamp() - interval '10 seconds')
                AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                 WHERE a.pid = j.worker_pid
                                   AND (j.worker_start IS NULL OR a.backend_start = j.worker_start))
                AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                 WHERE a.pid = j.launcher_pid
                                   AND (j.launcher_start IS NULL OR a.backend_start = j.launcher_start))))
     FOR UPDATE SKIP LOCKED
  LOOP
    UPDATE pgbg.job j
       SET state = COALESCE(pgbg._effect_state(r.options), 'lost'),
           lost_reason = CASE WHEN pgbg._effect_state(r.options) IS NULL
                              THEN 'supervising launcher ended; outcome of the non-transactional statement unknown' END,
           command_tag = CASE WHEN pgbg._effect_state(r.options) = 'succeeded' THEN 'CREATE INDEX' END,
           error = CASE pgbg._effect_state(r.options)
                     WHEN 'succeeded' THEN NULL
                     WHEN 'failed' THEN format('the index %s exists but is not valid: the build did not complete (its supervising launcher ended)', r.options->>'index')
                   END,
           finished_at = clock_timestamp()
     WHERE j.id = r.id AND j.state = 'running'
    RETURNING j.state INTO v_state;
    PERFORM pgbg._record_attempt(r.id, v_state, NULL, 'outcome settled by reconciliation');
    PERFORM pgbg._notify(r.id, v_state);
    n := n + 1;
  END LOOP;

  RETURN n;
END
$fn$;

-- Anyone may call it: settles what pg_stat_activity proves (see pgbg._reconcile).
CREATE OR REPLACE FUNCTION pgbg.reconcile(job_id bigint DEFAULT NULL) RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$ SELECT pgbg._reconcile(reconcile.job_id, false) $fn$;

-- As version 1's pgbg.wait, except that it settles only jobs that end (pgbg._reconcile with
-- p_settle_only): it runs inside its caller's one transaction, and a row it put back in the
-- queue, or whose worker start it noted, would stay locked against the launcher until that
-- transaction ends, which is after the job ends: the two would wait for each other until the
-- timeout. Launchers and the proxy's reconciler, in short transactions, do the rest.
CREATE OR REPLACE FUNCTION pgbg.wait(job_id bigint, timeout interval DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgbg
AS $body$
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
      PERFORM pgbg._reconcile(wait.job_id, true);
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
$body$;

-- A queued job's cancellation for the proxy's disconnect policy: only while it is still queued.
CREATE FUNCTION pgbg.cancel_queued(job_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_owner name;
BEGIN
  SELECT j.owner INTO v_owner FROM pgbg.job j WHERE j.id = cancel_queued.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v_owner) THEN
    RAISE EXCEPTION 'job % does not exist', cancel_queued.job_id USING ERRCODE = '42704';
  END IF;
  UPDATE pgbg.job j
     SET cancel_requested = true, state = 'cancelled', finished_at = clock_timestamp(),
         sqlstate = '57014', error = 'cancelled before it started'
   WHERE j.id = cancel_queued.job_id AND j.state = 'queued';
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM pgbg._notify(cancel_queued.job_id, 'cancelled');
  RETURN true;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Visibility
-- ---------------------------------------------------------------------------------------

-- Launchers of the logins whose jobs the caller may manage (all for pgbg_admin).
CREATE FUNCTION pgbg._launchers()
RETURNS TABLE (login name, alive boolean, pid integer, started_at timestamptz, last_step_at timestamptz,
               launched bigint, supervising integer, queued bigint, running bigint, idle_ms integer,
               exited_at timestamptz, exit_reason text)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  WITH logins AS (
    SELECT x.login FROM pgbg.launcher x
    UNION
    SELECT j.login FROM pgbg.job j WHERE j.state IN ('queued', 'running')
  )
  SELECT g.login,
         pgbg._launcher_alive(g.login),
         CASE WHEN pgbg._launcher_alive(g.login) THEN COALESCE(x.pid, x.starting_pid) END,
         x.started_at, x.last_step_at, COALESCE(x.launched, 0), COALESCE(x.supervising, 0),
         (SELECT count(*) FROM pgbg.job j WHERE j.login = g.login AND j.state = 'queued'),
         (SELECT count(*) FROM pgbg.job j WHERE j.login = g.login AND j.state = 'running'),
         x.idle_ms, x.exited_at, x.exit_reason
    FROM logins g LEFT JOIN pgbg.launcher x ON x.login = g.login
   WHERE pgbg._may_manage(g.login)
$fn$;

CREATE VIEW pgbg.launchers AS SELECT * FROM pgbg._launchers();
COMMENT ON VIEW pgbg.launchers IS 'One row per login with a launcher or active jobs in this database: alive, pid, launched, supervising, queued, running.';

-- pgbg.jobs gains waiting_for_launcher: a queued job whose login has no live launcher (after a
-- server restart, or a terminated launcher) until the next session of that login starts one.
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
       CASE WHEN j.state = 'queued' THEN pg_catalog.clock_timestamp() - j.queued_at END AS queued_for,
       j.login,
       CASE WHEN j.state = 'queued' THEN NOT pgbg._launcher_alive(j.login) END AS waiting_for_launcher
  FROM pgbg.job j
  LEFT JOIN pg_catalog.pg_stat_activity a
         ON j.state = 'running' AND a.pid = j.worker_pid
        AND (j.worker_start IS NULL OR a.backend_start = j.worker_start)
  LEFT JOIN pgbg.worker_progress p ON p.pid = a.pid;

-- ---------------------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION
  pgbg._launcher_key(name),
  pgbg._launcher_alive(name),
  pgbg._is_live_launcher(),
  pgbg._is_launcher_query(text),
  pgbg._launcher_has_work(),
  pgbg._setting_is_captured(text),
  pgbg.session_settings(text[]),
  pgbg._launch_worker(text, boolean),
  pgbg._check_launch_rights(boolean),
  pgbg._enqueue_job(name, text, text, boolean, text, jsonb, integer, text, text, jsonb, jsonb),
  pgbg.start_launcher(integer),
  pgbg._launcher_starting(integer, integer),
  pgbg.ensure_launcher(integer),
  pgbg.enqueue(text, text, boolean, text, jsonb, integer, text, text, jsonb, integer, text[]),
  pgbg._launcher_candidates(integer),
  pgbg._launcher_job(bigint),
  pgbg._launcher_launch(bigint),
  pgbg._launcher_mark(bigint, integer, bigint, integer),
  pgbg._launcher_fail(bigint, text, text),
  pgbg._launcher_settle(bigint, name, integer, integer, bigint),
  pgbg._launcher_report(text, integer, integer, text),
  pgbg._effect_state(jsonb),
  pgbg.cancel_queued(bigint),
  pgbg._launchers(),
  pgbg._reconcile(bigint, boolean),
  pgbg.set_admission_config(text, jsonb),
  pgbg._limits_for(text, name, name, text),
  pgbg._job_limits(pgbg.job)
FROM PUBLIC;
REVOKE ALL ON PROCEDURE pgbg.run_launcher(integer) FROM PUBLIC;

-- Every one of these checks its caller itself (the launcher's steps: the caller must hold its
-- login's LAUNCHER_LIVE lock; the rest act only for the caller's own login or jobs).
GRANT EXECUTE ON FUNCTION
  pgbg._launcher_key(name),
  pgbg._launcher_alive(name),
  pgbg._is_live_launcher(),
  pgbg._is_launcher_query(text),
  pgbg._launcher_has_work(),
  pgbg._setting_is_captured(text),
  pgbg.session_settings(text[]),
  pgbg._launch_worker(text, boolean),
  pgbg._check_launch_rights(boolean),
  pgbg._enqueue_job(name, text, text, boolean, text, jsonb, integer, text, text, jsonb, jsonb),
  pgbg.start_launcher(integer),
  pgbg._launcher_starting(integer, integer),
  pgbg.ensure_launcher(integer),
  pgbg.enqueue(text, text, boolean, text, jsonb, integer, text, text, jsonb, integer, text[]),
  pgbg._launcher_candidates(integer),
  pgbg._launcher_job(bigint),
  pgbg._launcher_launch(bigint),
  pgbg._launcher_mark(bigint, integer, bigint, integer),
  pgbg._launcher_fail(bigint, text, text),
  pgbg._launcher_settle(bigint, name, integer, integer, bigint),
  pgbg._launcher_report(text, integer, integer, text),
  pgbg._effect_state(jsonb),
  pgbg.cancel_queued(bigint),
  pgbg._launchers(),
  pgbg._reconcile(bigint, boolean),
  pgbg.set_admission_config(text, jsonb),
  pgbg._limits_for(text, name, name, text),
  pgbg._job_limits(pgbg.job)
TO PUBLIC;
GRANT EXECUTE ON PROCEDURE pgbg.run_launcher(integer) TO PUBLIC;
GRANT SELECT ON pgbg.launchers TO PUBLIC;
