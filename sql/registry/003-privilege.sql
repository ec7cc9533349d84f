-- Job registry, schema version 3: no privilege escape through the registry (issue 11, items
-- 1, 3, 4 and 7).
--
--  - No SECURITY DEFINER function trusts a pid, cookie or state its caller hands it. A worker
--    pid is recorded only when pg_stat_activity shows it as a pg_background worker (or, with the
--    dblink test stand-in, as the client backend holding the handle's advisory lock),
--    authenticated as the job's owner (or as the marking session's own login), started after
--    the job was submitted, and not already the worker of another active job. Every signal
--    (pgbg.cancel) re-checks all of that, plus the recorded backend_start, right before sending
--    it: a pid reused by another process is never signalled.
--  - Outcomes a caller reports (finish_supervised, launch_failed) are accepted only from the
--    session that launched the job (it alone holds the worker's handle) or from pgbg_admin.
--  - Job notifications go to a per-role channel whose name is derived from a secret only the
--    registry knows (pgbg.jobs_channel() tells a role its own), and carry only the job id: a
--    hint to re-read pgbg.jobs, never a source of truth. Nothing is sent on `pgbg_jobs` any more.
--  - Totals are public (jobs in flight on the server, in a database, for a rule; the queue
--    length); per-role detail is not: pgbg.in_flight('user', r) needs the right to manage r's
--    jobs, and pgbg.queue_position answers only for jobs the caller may manage.
--  - Rows enter pgbg.job only through pgbg.submit (validated, then inserted by the definer
--    pgbg._enqueue, which re-checks what it must not take on trust): INSERT on pgbg.job is no
--    longer granted to anyone. The launch still happens as the client's role (decision 1): the
--    definer only records.
--
-- Applied by migrate() as a superuser in one transaction. Never edit once released.

-- ---------------------------------------------------------------------------------------
-- Who the worker authenticated as, recorded once verified (see pgbg.mark_launched).
-- ---------------------------------------------------------------------------------------
ALTER TABLE pgbg.job ADD COLUMN worker_user name;

-- ---------------------------------------------------------------------------------------
-- Item 7: no direct INSERT. pgbg._enqueue (definer) is the only way in.
-- ---------------------------------------------------------------------------------------
REVOKE INSERT ON pgbg.job FROM PUBLIC;
DROP POLICY job_insert ON pgbg.job;

-- ---------------------------------------------------------------------------------------
-- The secret behind per-role notification channels. No privilege for anyone but the owner.
-- ---------------------------------------------------------------------------------------
CREATE TABLE pgbg.notify_secret (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  secret   text NOT NULL
);
REVOKE ALL ON pgbg.notify_secret FROM PUBLIC;
-- gen_random_uuid() draws from the server's strong random source (pg_strong_random)
INSERT INTO pgbg.notify_secret (secret)
VALUES (replace(pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, '-', ''));

-- ---------------------------------------------------------------------------------------
-- Worker identity
-- ---------------------------------------------------------------------------------------

-- backend_start of p_pid if, right now, it is a job worker authenticated as one of p_users and
-- started at or after p_after; NULL otherwise. A worker is a `pg_background` background
-- worker; where the real extension is not installed and the dblink test stand-in is (its
-- "workers" are client backends, see test/fixtures/README.md), the client backend that holds
-- the handle's session advisory lock (key = the cookie; any such lock for a v1 handle, whose
-- cookie is 0). Never this session itself.
CREATE FUNCTION pgbg._worker_start(p_pid integer, p_users name[], p_after timestamptz, p_cookie bigint)
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
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
$fn$;

-- Is this session the one that launched the job (and so holds its worker's handle)?
CREATE FUNCTION pgbg._is_launcher(p_launcher_pid integer, p_launcher_start timestamptz) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT p_launcher_pid = pg_backend_pid()
     AND (p_launcher_start IS NULL
          OR p_launcher_start = (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()))
$fn$;

-- ---------------------------------------------------------------------------------------
-- Item 3: notifications
-- ---------------------------------------------------------------------------------------

-- The channel on which the jobs of role p_role (an oid) are announced.
CREATE FUNCTION pgbg._channel_for(p_role oid) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT 'pgbg_jobs_' || left(encode(sha256(convert_to(s.secret || ':' || p_role::text, 'UTF8')), 'hex'), 32)
    FROM pgbg.notify_secret s
$fn$;

-- The channel to LISTEN on for the jobs of role_name (by default the caller's current role).
-- Only for a role whose jobs the caller may manage (itself, a role it is a member of, any role
-- for pgbg_admin); otherwise 42501.
CREATE FUNCTION pgbg.jobs_channel(role_name name DEFAULT current_user) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_oid oid;
BEGIN
  SELECT r.oid INTO v_oid FROM pg_roles r WHERE r.rolname = jobs_channel.role_name;
  IF v_oid IS NULL OR NOT pgbg._may_manage(jobs_channel.role_name) THEN
    RAISE EXCEPTION 'permission denied to listen for the jobs of role %', jobs_channel.role_name
      USING ERRCODE = '42501', HINT = 'A role may listen for its own jobs; members of pgbg_admin for any role''s.';
  END IF;
  RETURN pgbg._channel_for(v_oid);
END
$fn$;

-- Announces a change of the job on its owner's channel: payload {"id": N} only. A listener
-- re-reads pgbg.jobs (RLS-protected) to learn what changed; p_state is not sent.
CREATE OR REPLACE FUNCTION pgbg._notify(p_job_id bigint, p_state text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT pg_notify(pgbg._channel_for(r.oid), json_build_object('id', p_job_id)::text)
    FROM pgbg.job j JOIN pg_roles r ON r.rolname = j.owner
   WHERE j.id = p_job_id
$fn$;

-- ---------------------------------------------------------------------------------------
-- Item 7: submission
-- ---------------------------------------------------------------------------------------

-- Records a queued job owned by p_owner. The only INSERT into pgbg.job. It trusts nothing:
-- p_owner must be a role the session's login may act as (what SET ROLE allows), that role must
-- be able to launch pg_background workers, and every option it derives a column from is
-- checked here, whoever calls it.
CREATE FUNCTION pgbg._enqueue(
  p_owner name,
  p_statement text,
  p_kind text,
  p_transactional boolean,
  p_supervised boolean,
  p_rule text,
  p_options jsonb,
  p_priority integer,
  p_idem_key text,
  p_session_id text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_info record;
  v_id bigint;
  v_transactional boolean := COALESCE(p_transactional, true);
  v_supervised boolean := COALESCE(p_supervised, NOT COALESCE(p_transactional, true));
  v_existing bigint;
  v_max_attempts integer;
  v_not_before timestamptz;
BEGIN
  IF p_owner IS NULL
     OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = p_owner AND pg_has_role(session_user, r.oid, 'MEMBER')) THEN
    RAISE EXCEPTION 'permission denied: role % may not submit jobs as role %', session_user, p_owner
      USING ERRCODE = '42501';
  END IF;
  IF p_statement IS NULL OR btrim(p_statement) = '' THEN
    RAISE EXCEPTION 'pgbg.submit: statement must not be empty' USING ERRCODE = '22023';
  END IF;
  IF NOT v_transactional AND NOT v_supervised THEN
    RAISE EXCEPTION 'pgbg.submit: a non-transactional job must be supervised (its outcome can only be read by the launching session)'
      USING ERRCODE = '22023';
  END IF;
  IF p_options IS NOT NULL AND jsonb_typeof(p_options) <> 'object' THEN
    RAISE EXCEPTION 'pgbg.submit: options must be a JSON object' USING ERRCODE = '22023';
  END IF;

  SELECT * INTO v_info FROM pgbg.pg_background_info();
  IF NOT v_info.installed THEN
    RAISE EXCEPTION 'pg_background is not installed in database %', current_database()
      USING ERRCODE = '42883', HINT = 'CREATE EXTENSION pg_background; as a superuser';
  END IF;
  -- as the owner, not as this function's definer
  IF NOT has_function_privilege(p_owner, v_info.launch_function::oid, 'EXECUTE') THEN
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
    INSERT INTO pgbg.job (owner, statement, kind, transactional, supervised, rule, options, priority, idem_key,
                          launcher_pid, launcher_start, session_id, application_name, max_attempts, not_before)
    VALUES (p_owner, p_statement, p_kind, v_transactional, v_supervised, p_rule,
            COALESCE(p_options, '{}'::jsonb), COALESCE(p_priority, 0), p_idem_key,
            pg_backend_pid(),
            (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()),
            p_session_id,
            NULLIF(current_setting('application_name'), ''),
            v_max_attempts, v_not_before)
    RETURNING id INTO v_id;
  EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'a job with key "%" is already queued or running', p_idem_key
      USING ERRCODE = '23505';
  END;
  RETURN v_id;
END
$fn$;

-- Records a queued job owned by current_user, launched (next) from this session. SECURITY
-- INVOKER: checks the caller's own pg_background privileges (with the exact grant hint), then
-- hands the row to pgbg._enqueue, which checks again what it must not take on trust.
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
            DETAIL = format('%s needs EXECUTE on %s%s', current_user, v_info.launch_function::text,
                            CASE WHEN v_supervised THEN ' and on the result/wait functions' ELSE '' END),
            HINT = v_info.grant_hint || ' (as a superuser)';
  END IF;
  RETURN pgbg._enqueue(current_user, submit.statement, submit.kind, submit.transactional, submit.supervised,
                       submit.rule, submit.options, submit.priority, submit.idem_key, submit.session_id);
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Item 1: launch, outcome and cancel trust nothing the caller hands them
-- ---------------------------------------------------------------------------------------

-- Records the worker of a job: SELECT pgbg.mark_launched(id, h.pid, h.cookie, 2)
--   FROM pg_background_launch_v2(pgbg.launch_sql(id)) h
-- The pid must be a job worker (see pgbg._worker_start) authenticated as the job's owner or
-- as this session's login, started after the job was submitted, and not the worker of another
-- active job; a live process that is none of that is refused (42501). A pid not (or no longer)
-- in pg_stat_activity is recorded without a start time: a supervised worker may be done
-- already; pgbg.cancel verifies it again before any signal.
CREATE OR REPLACE FUNCTION pgbg.mark_launched(job_id bigint, worker_pid integer, cookie bigint, api integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v record;
  v_state text;
  v_wstart timestamptz;
  v_wuser name;
  v_lstart timestamptz;
  v_users name[];
BEGIN
  SELECT j.owner, j.transactional, j.submitted_at INTO v FROM pgbg.job j WHERE j.id = mark_launched.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v.owner) THEN
    RAISE EXCEPTION 'job % does not exist', mark_launched.job_id USING ERRCODE = '42704';
  END IF;
  IF mark_launched.api IS NOT NULL AND mark_launched.api NOT IN (1, 2) THEN
    RAISE EXCEPTION 'api must be 1 or 2' USING ERRCODE = '22023';
  END IF;
  IF mark_launched.worker_pid IS NULL OR mark_launched.worker_pid <= 0 THEN
    RAISE EXCEPTION 'worker_pid must be the pid of the job''s worker' USING ERRCODE = '22023';
  END IF;
  v_users := ARRAY[v.owner, session_user::name];
  -- The worker shows in pg_stat_activity only once it has attached to the database: give it a
  -- few milliseconds, so reconciliation can tell this worker from a later process with its pid.
  FOR i IN 1..40 LOOP
    PERFORM pg_stat_clear_snapshot();
    v_wstart := pgbg._worker_start(mark_launched.worker_pid, v_users, v.submitted_at, mark_launched.cookie);
    -- A transactional job's worker waits for this transaction's commit, so it is still there;
    -- a supervised one may already have finished, and then there is nothing to wait for.
    EXIT WHEN v_wstart IS NOT NULL OR NOT v.transactional;
    PERFORM pg_sleep(0.005);
  END LOOP;
  IF v_wstart IS NULL THEN
    IF EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = mark_launched.worker_pid) THEN
      RAISE EXCEPTION 'process % is not a worker launched for job %', mark_launched.worker_pid, mark_launched.job_id
        USING ERRCODE = '42501',
              DETAIL = 'A job''s worker is a pg_background worker authenticated as the job''s owner, started after the job was submitted.';
    END IF;
  ELSE
    SELECT a.usename INTO v_wuser FROM pg_stat_activity a WHERE a.pid = mark_launched.worker_pid;
    IF EXISTS (SELECT 1 FROM pgbg.job o
                WHERE o.id <> mark_launched.job_id AND o.state IN ('queued', 'running')
                  AND o.worker_pid = mark_launched.worker_pid AND o.worker_start = v_wstart) THEN
      RAISE EXCEPTION 'process % is the worker of another job', mark_launched.worker_pid USING ERRCODE = '42501';
    END IF;
  END IF;
  SELECT a.backend_start INTO v_lstart FROM pg_stat_activity a WHERE a.pid = pg_backend_pid();

  UPDATE pgbg.job j
     SET worker_pid = mark_launched.worker_pid,
         worker_start = COALESCE(v_wstart, j.worker_start),
         worker_user = COALESCE(v_wuser, j.worker_user),
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
-- Only the session that launches the job (or pgbg_admin) can know that.
CREATE OR REPLACE FUNCTION pgbg.launch_failed(job_id bigint, sqlstate text, error text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v record;
BEGIN
  SELECT j.owner, j.launcher_pid, j.launcher_start INTO v FROM pgbg.job j WHERE j.id = launch_failed.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v.owner) THEN
    RAISE EXCEPTION 'job % does not exist', launch_failed.job_id USING ERRCODE = '42704';
  END IF;
  IF NOT pgbg._is_launcher(v.launcher_pid, v.launcher_start) AND NOT pg_has_role(session_user, 'pgbg_admin', 'MEMBER') THEN
    RAISE EXCEPTION 'only the session launching job % may record that its launch failed', launch_failed.job_id
      USING ERRCODE = '42501';
  END IF;
  IF launch_failed.sqlstate IS NOT NULL AND launch_failed.sqlstate !~ '^[0-9A-Z]{5}$' THEN
    RAISE EXCEPTION 'invalid SQLSTATE %', launch_failed.sqlstate USING ERRCODE = '22023';
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

-- Outcome of a supervised (non-transactional) job, recorded by the launching session after
-- reading pg_background_result_v2 / pg_background_result: only that session holds the handle,
-- so only it (or pgbg_admin) may report. Only from a non-terminal state.
CREATE OR REPLACE FUNCTION pgbg.finish_supervised(job_id bigint, state text, command_tag text, sqlstate text, error text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v record;
  v_state text;
BEGIN
  IF finish_supervised.state IS NULL OR finish_supervised.state NOT IN ('succeeded', 'failed', 'cancelled', 'lost') THEN
    RAISE EXCEPTION 'invalid outcome state %', finish_supervised.state
      USING ERRCODE = '22023', HINT = 'Use succeeded, failed, cancelled or lost.';
  END IF;
  SELECT j.owner, j.launcher_pid, j.launcher_start INTO v FROM pgbg.job j WHERE j.id = finish_supervised.job_id;
  IF NOT FOUND OR NOT pgbg._may_manage(v.owner) THEN
    RAISE EXCEPTION 'job % does not exist', finish_supervised.job_id USING ERRCODE = '42704';
  END IF;
  IF NOT pgbg._is_launcher(v.launcher_pid, v.launcher_start) AND NOT pg_has_role(session_user, 'pgbg_admin', 'MEMBER') THEN
    RAISE EXCEPTION 'only the session that launched job % may record its outcome', finish_supervised.job_id
      USING ERRCODE = '42501', DETAIL = 'That session holds the worker''s handle; no other can read the outcome.';
  END IF;
  IF finish_supervised.sqlstate IS NOT NULL AND finish_supervised.sqlstate !~ '^[0-9A-Z]{5}$' THEN
    RAISE EXCEPTION 'invalid SQLSTATE %', finish_supervised.sqlstate USING ERRCODE = '22023';
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

-- Requests cancellation. queued -> 'cancelled' at once; running -> cancel_requested is set and
-- the worker is sent pg_cancel_backend, but only after pgbg._worker_start has verified, right
-- now, that the pid is still the job's own worker (type, login, start time, recorded
-- backend_start): never another process that got the pid.
CREATE OR REPLACE FUNCTION pgbg.cancel(job_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_owner name;
  v record;
  v_signalled boolean := false;
  v_pid integer;
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
  RETURNING j.id, j.state, j.owner, j.transactional, j.worker_pid, j.worker_start, j.worker_user,
            j.cookie, j.submitted_at INTO v;
  IF NOT FOUND THEN
    RETURN false;
  END IF;

  PERFORM pg_stat_clear_snapshot();
  IF v.state = 'cancelled' THEN
    PERFORM pgbg._notify(v.id, 'cancelled');
    -- launched but not yet marked: stop a worker already running it (its _finish would refuse
    -- anyway), if it verifiably is one of this job's owner
    IF v.transactional THEN
      FOR v_pid IN
        SELECT a.pid FROM pg_stat_activity a
         WHERE a.query = pgbg._run_sql(v.id) AND a.pid <> pg_backend_pid()
           AND pgbg._worker_start(a.pid, ARRAY[v.owner], v.submitted_at, NULL) IS NOT NULL
      LOOP
        PERFORM pg_cancel_backend(v_pid);
      END LOOP;
    END IF;
    RETURN true;
  END IF;

  -- running
  IF v.worker_pid IS NOT NULL THEN
    SELECT pg_cancel_backend(a.pid) INTO v_signalled FROM pg_stat_activity a
     WHERE a.pid = v.worker_pid
       AND (v.worker_start IS NULL OR a.backend_start = v.worker_start)
       AND pgbg._worker_start(a.pid, ARRAY[v.owner, COALESCE(v.worker_user, v.owner)], v.submitted_at, v.cookie)
           IS NOT DISTINCT FROM a.backend_start;
  END IF;
  IF NOT COALESCE(v_signalled, false) THEN
    -- worker already gone (or not provably the job's): settle what can be proven now
    PERFORM pgbg.reconcile(v.id);
  END IF;
  RETURN true;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Item 4: what is public
-- ---------------------------------------------------------------------------------------

-- 1 for the next job to launch; NULL unless the job is queued and the caller may manage it
-- (a job of another role looks like one that does not exist). The position itself counts
-- every role's jobs ahead: a total.
CREATE OR REPLACE FUNCTION pgbg.queue_position(job_id bigint) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
  SELECT CASE WHEN me.state = 'queued' THEN 1 + (SELECT count(*)::integer FROM pgbg._ahead(me)) END
    FROM pgbg.job me
   WHERE me.id = queue_position.job_id
     AND pgbg._may_manage(me.owner)
$fn$;

-- Totals of jobs in flight as the server sees them now (the body of 001's pgbg.in_flight):
-- the whole server, one database, one rule. Public. Refuses the per-role scope, which a
-- definer cannot check against its caller's role: pgbg.in_flight answers that one.
CREATE FUNCTION pgbg._in_flight_total(p_scope text DEFAULT NULL, p_value text DEFAULT NULL) RETURNS integer
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

-- Jobs in flight as the server sees them now (see 001). Totals are public: the whole server,
-- one database, one rule (pgbg._in_flight_total). One role's count ('user') only for a role
-- whose jobs the caller's current role may manage (itself, a role it is a member of, any role
-- for pgbg_admin); otherwise 42501. SECURITY INVOKER so that it sees the caller's role: called
-- by the definer pgbg.admit (admission), the caller is the registry owner and sees every job;
-- called by a user, row-level security leaves only the jobs that user may see.
-- (pg_stat_activity itself shows every role its pg_background workers by login.)
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
      WHERE a.backend_type = 'pg_background' AND a.usename = p_value),
    (SELECT count(*) FROM pgbg.job j
      WHERE j.state = 'running'
        AND j.owner = p_value
        AND (EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = j.worker_pid)
             OR (j.worker_start IS NULL
                 AND COALESCE(j.launched_at, j.started_at) > clock_timestamp() - interval '10 seconds'))))::integer;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- Function privileges
-- ---------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION
  pgbg._in_flight_total(text, text),
  pgbg._worker_start(integer, name[], timestamptz, bigint),
  pgbg._is_launcher(integer, timestamptz),
  pgbg._channel_for(oid),
  pgbg.jobs_channel(name),
  pgbg._enqueue(name, text, text, boolean, boolean, text, jsonb, integer, text, text)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
  pgbg.jobs_channel(name),
  pgbg._in_flight_total(text, text),
  -- called by pgbg.submit as the submitting role; it checks everything itself
  pgbg._enqueue(name, text, text, boolean, boolean, text, jsonb, integer, text, text)
TO PUBLIC;
