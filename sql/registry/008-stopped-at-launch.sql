-- Job registry, schema version 8: a worker that had already stopped when its launch returned.
--
-- pg_background (1.8 and 2.0 alike) waits for a new worker to start (PostgreSQL's
-- WaitForBackgroundWorkerStartup). When the postmaster reports the worker already stopped
-- (BGWH_STOPPED: it ran its statement and exited, or could not start), pg_background carries on
-- as if it had started, but PostgreSQL sets the pid only for a started worker: the pid returned
-- is whatever was in that variable, 0, a negative number or any other number (measured: 0 under
-- load in CI, 428281409 with the race forced). The handle (pid, cookie) still finds the
-- worker's result, which pg_background keeps in the launching session under that pid.
-- Seen under load with fast statements (a VACUUM of a small table, a CREATE INDEX CONCURRENTLY
-- that fails at once).
--
-- Version 7 refused pids <= 0 ("worker_pid must be the pid of the job's worker"): the launcher
-- then recorded such a job 'failed' ("launch failed") although its statement had run, and
-- pgbg.submit_and_launch raised. Other values were recorded as the worker's pid. From this
-- version:
--  - right after launching a non-transactional job, the launching session asks pg_background
--    whether the worker has stopped (the handle API answers without waiting); if it has, the
--    job is recorded with no worker pid and its outcome is read at once, through the handle,
--    in the same transaction. It is never put under supervision.
--  - a transactional job's worker waits for the commit of its launch before it does anything
--    (pgbg.run_job), so a stopped one never ran the job: through the launcher, a pid <= 0 counts
--    the attempt and queues the job again while it has attempts left (else 'failed'), as
--    reconciliation does when it finds a worker gone (which is what happens to any other pid
--    that names no process); pgbg.mark_launched refuses pids <= 0 for it, so
--    pgbg.submit_and_launch raises and nothing is recorded.
-- Released: never edit this file; change the registry with a new numbered migration.

-- ---------------------------------------------------------------------------------------
-- Reading the outcome of a worker that stopped before its launch returned
-- ---------------------------------------------------------------------------------------

-- Reads the result of a worker that had stopped when its launch returned, through the handle
-- the launch returned (its pid is whatever pg_background left there), and records it
-- (pgbg.finish_supervised checks that this session launched the job). SECURITY INVOKER:
-- pg_background checks the reader's own rights, and only the launching session has the
-- result. Returns the job's state afterwards.
CREATE FUNCTION pgbg._settle_stopped_worker(p_job_id bigint, p_api integer, p_pid integer, p_cookie bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v_tag text;
  v_sqlstate text;
  v_error text;
  v_state text;
BEGIN
  BEGIN
    v_tag := pgbg.worker_result(p_api, p_pid, p_cookie);
    v_state := 'succeeded';
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT;
    v_state := CASE WHEN v_sqlstate = '57014' THEN 'cancelled' ELSE 'failed' END;
  END;
  PERFORM pgbg.finish_supervised(p_job_id, v_state, v_tag, v_sqlstate, v_error);
  SELECT j.state INTO v_state FROM pgbg.job j WHERE j.id = p_job_id;
  RETURN v_state;
END
$fn$;

REVOKE ALL ON FUNCTION pgbg._settle_stopped_worker(bigint, integer, integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbg._settle_stopped_worker(bigint, integer, integer, bigint) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- The two-step SQL idiom (launch, then mark_launched) and pgbg.submit_and_launch: as version
-- 3's and 5's, with a worker stopped at launch
-- ---------------------------------------------------------------------------------------

-- Records the worker of a job: SELECT pgbg.mark_launched(id, h.pid, h.cookie, 2)
--   FROM pg_background_launch_v2(pgbg.launch_sql(id)) h
-- As version 3's; pid 0 (the launching session found the worker stopped when its launch
-- returned) is accepted for a non-transactional job and recorded as no worker pid: that
-- session reads its outcome by the handle at once (pgbg.launch_job does).
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
  IF mark_launched.worker_pid IS NULL OR mark_launched.worker_pid < 0
     OR (mark_launched.worker_pid = 0 AND v.transactional) THEN
    RAISE EXCEPTION 'worker_pid must be the pid of the job''s worker' USING ERRCODE = '22023',
      DETAIL = CASE WHEN mark_launched.worker_pid = 0
                    THEN 'pid 0 stands for a worker found stopped when its launch returned; a transactional job''s worker waits for its launch to commit, so it never ran the job.'
                    ELSE 'A pid is a positive number.' END;
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
     SET worker_pid = NULLIF(mark_launched.worker_pid, 0),
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

-- Launches a queued job of the caller's, as the caller: as version 5's. A non-transactional
-- job whose worker had stopped when its launch returned is settled here at once; it comes
-- back in its final state with no handle (worker_pid and cookie NULL).
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

  IF NOT v_job.transactional
     AND ((api OPERATOR(pg_catalog.=) 2 AND pgbg.worker_stopped(api, worker_pid, cookie)) OR worker_pid OPERATOR(pg_catalog.<=) 0) THEN
    -- The worker had stopped when its launch returned, so the pid is not a process (see the
    -- top of this file): recorded as none, and its outcome read now, through the handle,
    -- while this session's pg_background still holds it. Nothing is left to supervise.
    PERFORM pgbg.mark_launched(launch_job.job_id, 0, cookie, api);
    state := pgbg._settle_stopped_worker(launch_job.job_id, api, worker_pid, cookie);
    worker_pid := NULL;
    cookie := NULL;
    RETURN;
  END IF;
  PERFORM pgbg.mark_launched(launch_job.job_id, worker_pid, cookie, api);
  SELECT j.state INTO state FROM pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) launch_job.job_id;
END
$fn$;

-- ---------------------------------------------------------------------------------------
-- The launcher: as version 6's _launcher_mark and version 7's _launcher_launch_next and
-- run_launcher, with a worker stopped at launch
-- ---------------------------------------------------------------------------------------

-- Records the worker the launcher just started for a job (see version 6). Pid 0 for a
-- non-transactional job: found stopped at launch, recorded without a worker pid (the launch
-- reads its outcome at once). Pid <= 0 for a transactional one: its worker never ran the job,
-- back to the queue while it has attempts left, else 'failed'.
CREATE OR REPLACE FUNCTION pgbg._launcher_mark(p_job_id bigint, p_pid integer, p_cookie bigint, p_api integer) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgbg
AS $fn$
DECLARE
  v record;
  v_wstart timestamptz;
  v_wuser name;
  v_lstart timestamptz;
  v_state text;
BEGIN
  SELECT j.owner, j.login, j.state, j.submitted_at, j.transactional INTO v FROM pgbg.job j WHERE j.id = p_job_id;
  IF NOT FOUND OR v.login IS DISTINCT FROM session_user OR NOT pgbg._is_live_launcher() THEN
    RAISE EXCEPTION 'only the launcher of login % may record the launch of job %', COALESCE(v.login, '?'), p_job_id
      USING ERRCODE = '42501';
  END IF;
  IF v.state <> 'queued' THEN
    RAISE EXCEPTION 'job % is %, it can no longer be launched', p_job_id, v.state USING ERRCODE = '55000';
  END IF;
  IF p_api IS NULL OR p_api NOT IN (1, 2) OR p_pid IS NULL OR (p_pid < 0 AND NOT v.transactional) THEN
    RAISE EXCEPTION 'a worker handle is a pid and an api of 1 or 2' USING ERRCODE = '22023';
  END IF;
  IF p_pid <= 0 AND v.transactional THEN
    -- Its worker waits, before anything else, for the commit of this launch (pgbg.run_job): it
    -- stopped without running the job (it could not start, or it was terminated at once). As
    -- reconciliation does for a worker that died: the attempt counts, and the job goes back to
    -- the queue while it has attempts left; else the launch failed.
    UPDATE pgbg.job j
       SET attempts = j.attempts + 1,
           launched_at = clock_timestamp(),
           state = CASE WHEN j.attempts + 1 < j.max_attempts THEN 'queued' ELSE 'failed' END,
           sqlstate = CASE WHEN j.attempts + 1 < j.max_attempts THEN j.sqlstate ELSE '58000' END,
           error = CASE WHEN j.attempts + 1 < j.max_attempts
                        THEN format('attempt %s of %s: its worker stopped before it began the job; queued again',
                                    j.attempts + 1, j.max_attempts)
                        ELSE format('launch failed: its worker stopped before it began the job (attempt %s of %s)',
                                    j.attempts + 1, j.max_attempts) END,
           queued_at = CASE WHEN j.attempts + 1 < j.max_attempts THEN clock_timestamp() ELSE j.queued_at END,
           finished_at = CASE WHEN j.attempts + 1 < j.max_attempts THEN NULL ELSE clock_timestamp() END
     WHERE j.id = p_job_id
    RETURNING j.state INTO v_state;
    PERFORM pgbg._record_attempt(p_job_id, CASE WHEN v_state = 'queued' THEN 'lost' ELSE 'failed' END,
                                 CASE WHEN v_state = 'queued' THEN NULL ELSE '58000' END,
                                 'worker stopped before it began the job (found stopped when its launch returned)');
    IF v_state <> 'queued' THEN
      PERFORM pgbg._notify(p_job_id, v_state);
    END IF;
    RETURN;
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
         worker_pid = NULLIF(p_pid, 0), worker_start = v_wstart, worker_user = v_wuser,
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

-- One launch of the launcher (see version 7). A non-transactional job whose worker has
-- stopped by the time its launch returns is settled here and comes back without a handle.
CREATE OR REPLACE FUNCTION pgbg._launcher_launch_next(
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
  v_stopped boolean := false;
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
  -- A supervised worker may have stopped already, and then pg_background's pid is not a
  -- process (see the top of this file). Asked while the launch's role is still in force: the
  -- handle belongs to it.
  IF NOT v.transactional THEN
    v_stopped := (api OPERATOR(pg_catalog.=) 2 AND pgbg.worker_stopped(api, worker_pid, cookie))
                 OR worker_pid OPERATOR(pg_catalog.<=) 0;
  END IF;
  -- Back to the launcher's own settings for the rest of this transaction.
  PERFORM pg_catalog.set_config('statement_timeout', '0', true);
  PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
  PERFORM pg_catalog.set_config('client_min_messages', 'error', true);
  PERFORM pg_catalog.set_config('standard_conforming_strings', 'on', true);
  IF v_other_role THEN
    PERFORM pg_catalog.set_config('role', 'none', true);
  END IF;
  IF v_stopped THEN
    -- Recorded with no worker pid, and its outcome read now, through the handle: nothing is
    -- left to supervise (worker_pid and cookie come back NULL).
    PERFORM pgbg._launcher_mark(p_job_id, 0, cookie, api);
    PERFORM pgbg._launcher_settle(p_job_id, v.owner, api, worker_pid, cookie);
    worker_pid := NULL;
    cookie := NULL;
  ELSE
    PERFORM pgbg._launcher_mark(p_job_id, worker_pid, cookie, api);
  END IF;
END
$fn$;

-- As version 7's, except that a non-transactional job whose launch settled it at once (no
-- handle) is not supervised.
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
          -- (no handle: its worker had stopped when the launch returned, and the launch
          -- recorded its outcome)
          IF NOT l.transactional AND l.worker_pid IS NOT NULL THEN
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
