-- Job registry, schema version 9: a job's worker does less.
--
-- Each job runs in a fresh worker process, which looks up, compiles and plans every function
-- and statement it touches with cold caches: measured on version 8 (2 cores, PostgreSQL 15,
-- pg_background 1.8, 400 `SELECT 1` jobs), its worker cost about 15 ms of CPU against about
-- 5 ms for a raw pg_background worker running the same statement. The outcome path
-- (pgbg.run_job -> pgbg._finish) called five small helpers (_command_tag, _may_manage,
-- _record_attempt, _notify, _channel_for), each looked up and compiled once per process, that
-- is once per job. Here they are written out in run_job and _finish; the helpers stay, with the
-- same meaning, for everyone else. Nothing about what a job is, who may do what, or how it
-- ends changes.
-- Released: never edit this file; change the registry with a new numbered migration.

-- ---------------------------------------------------------------------------------------
-- The worker: as version 6's run_job, with the command tag computed in place
-- ---------------------------------------------------------------------------------------

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
    -- pgbg._command_tag, written out: one function fewer to look up and compile here
    v_tag := CASE
               WHEN v.kind IS NULL THEN NULL
               WHEN pg_catalog.upper(v.kind) OPERATOR(pg_catalog.=) 'INSERT'
                 THEN 'INSERT 0 ' OPERATOR(pg_catalog.||) COALESCE(v_rows, 0)::pg_catalog.text
               WHEN pg_catalog.upper(v.kind) OPERATOR(pg_catalog.=) ANY (ARRAY['UPDATE', 'DELETE', 'SELECT', 'MERGE', 'FETCH', 'MOVE', 'COPY']::pg_catalog.text[])
                 THEN pg_catalog.upper(v.kind) OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) COALESCE(v_rows, 0)::pg_catalog.text
               WHEN pg_catalog.upper(v.kind) OPERATOR(pg_catalog.=) ANY (ARRAY['CREATE TABLE AS', 'SELECT INTO', 'CREATE MATERIALIZED VIEW']::pg_catalog.text[])
                 THEN 'SELECT ' OPERATOR(pg_catalog.||) COALESCE(v_rows, 0)::pg_catalog.text
               ELSE v.kind
             END;
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
-- Its outcome: as version 7's _finish, with the helpers written out (a null channel, for an
-- owner that no longer exists, sends nothing, as pgbg._notify did)
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
  v_channel text;
  v_owner name;
  v_attempts integer;
  v_worker_pid integer;
  v_started timestamptz;
BEGIN
  IF _finish.state NOT IN ('succeeded', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'invalid outcome state %', _finish.state USING ERRCODE = '22023';
  END IF;
  IF rtrim(current_query(), E' \t\r\n;') IS DISTINCT FROM 'SELECT pgbg.run_job(' || _finish.job_id::text || ')' THEN
    RAISE EXCEPTION 'pgbg._finish may only be called by pgbg.run_job(%) running as its own statement', _finish.job_id
      USING ERRCODE = '42501';
  END IF;

  -- Success, the common case: one UPDATE that holds every check of the general path below
  -- (the job is this worker's, the session may manage its owner, it is still queued or
  -- running), then the attempt and the notification. Any other case, and a success that
  -- finds no such row, takes the general path, which raises the precise error.
  IF _finish.state = 'succeeded' THEN
    UPDATE pgbg.job j
       SET state = 'succeeded',
           command_tag = _finish.command_tag,
           rows = _finish.rows,
           sqlstate = _finish.sqlstate,
           error = _finish.error,
           error_detail = _finish.detail,
           started_at = COALESCE(j.started_at, now()),
           finished_at = clock_timestamp(),
           worker_pid = COALESCE(j.worker_pid, pg_backend_pid()),
           -- (pg_stat_get_activity, not the pg_stat_activity view: a worker plans every query
           -- cold; read only when the start is not known yet)
           worker_start = COALESCE(j.worker_start, (SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a))
     WHERE j.id = _finish.job_id
       AND j.state IN ('queued', 'running')
       AND (j.worker_pid IS NULL OR j.worker_pid = pg_backend_pid())
       AND (pg_has_role(session_user, 'pgbg_admin', 'MEMBER')
            OR COALESCE(pg_has_role(session_user, to_regrole(quote_ident(j.owner))::oid, 'MEMBER'), false))
    RETURNING j.owner, j.attempts, j.worker_pid, COALESCE(j.launched_at, j.started_at)
      INTO v_owner, v_attempts, v_worker_pid, v_started;
    IF FOUND THEN
      INSERT INTO pgbg.job_attempt (job_id, attempt, worker_pid, started_at, outcome, sqlstate, error)
      VALUES (_finish.job_id, GREATEST(v_attempts, 1), v_worker_pid, v_started, 'succeeded', _finish.sqlstate, _finish.error)
      ON CONFLICT ON CONSTRAINT job_attempt_pkey DO NOTHING;
      SELECT 'pgbg_jobs_' || left(encode(sha256(convert_to(s.secret || ':' || to_regrole(quote_ident(v_owner))::oid::text, 'UTF8')), 'hex'), 32)
        INTO v_channel FROM pgbg.notify_secret s;
      IF v_channel IS NOT NULL THEN
        PERFORM pg_notify(v_channel, json_build_object('id', _finish.job_id)::text);
      END IF;
      RETURN;
    END IF;
  END IF;

  SELECT j.owner, j.worker_pid, j.transactional, j.attempts, j.max_attempts, j.options, j.cancel_requested, j.state,
         j.launched_at, j.started_at
    INTO v FROM pgbg.job j WHERE j.id = _finish.job_id
     -- the latest version: a pgbg.cancel that signalled this worker before it committed its
     -- cancel_requested must be seen, or a cancelled job would be put back in the queue
     FOR UPDATE;
  -- (pgbg._may_manage, written out)
  IF NOT FOUND
     OR NOT (pg_has_role(session_user, 'pgbg_admin', 'MEMBER')
             OR COALESCE(pg_has_role(session_user, to_regrole(quote_ident(v.owner))::oid, 'MEMBER'), false)) THEN
    RAISE EXCEPTION 'job % does not exist', _finish.job_id USING ERRCODE = '42704';
  END IF;
  IF v.worker_pid IS NOT NULL AND v.worker_pid <> pg_backend_pid() THEN
    RAISE EXCEPTION 'job % belongs to worker %, not to this process', _finish.job_id, v.worker_pid
      USING ERRCODE = '42501';
  END IF;
  -- (pg_stat_get_activity, not the pg_stat_activity view: a worker plans every query cold)
  SELECT a.backend_start INTO v_start FROM pg_stat_get_activity(pg_backend_pid()) a;
  -- The owner's notification channel (pgbg._channel_for and pgbg._notify, written out).
  SELECT 'pgbg_jobs_' || left(encode(sha256(convert_to(s.secret || ':' || to_regrole(quote_ident(v.owner))::oid::text, 'UTF8')), 'hex'), 32)
    INTO v_channel FROM pgbg.notify_secret s;

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
    INSERT INTO pgbg.job_attempt (job_id, attempt, worker_pid, started_at, outcome, sqlstate, error)
    SELECT j.id, GREATEST(j.attempts, 1), j.worker_pid, COALESCE(j.launched_at, j.started_at), 'retried', _finish.sqlstate, _finish.error
      FROM pgbg.job j WHERE j.id = _finish.job_id
    ON CONFLICT ON CONSTRAINT job_attempt_pkey DO NOTHING;
    UPDATE pgbg.job j
       SET state = 'queued',
           sqlstate = _finish.sqlstate,
           error = format('attempt %s of %s failed, retrying: %s', v.attempts, v.max_attempts, _finish.error),
           error_detail = _finish.detail,
           not_before = clock_timestamp() + v_delay_ms * interval '1 millisecond',
           queued_at = clock_timestamp(),
           worker_pid = NULL, worker_start = NULL, cookie = NULL, api = NULL
     WHERE j.id = _finish.job_id;
    IF v_channel IS NOT NULL THEN
      PERFORM pg_notify(v_channel, json_build_object('id', _finish.job_id)::text);
    END IF;
    RETURN;
  END IF;

  -- The attempt is recorded from the row as it was (its attempt number, worker and start):
  -- version 7 recorded it from the updated row, which has the same values.
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
  INSERT INTO pgbg.job_attempt (job_id, attempt, worker_pid, started_at, outcome, sqlstate, error)
  VALUES (_finish.job_id, GREATEST(v.attempts, 1), COALESCE(v.worker_pid, pg_backend_pid()),
          COALESCE(v.launched_at, v.started_at, now()), v_state, _finish.sqlstate, _finish.error)
  ON CONFLICT ON CONSTRAINT job_attempt_pkey DO NOTHING;
  IF v_channel IS NOT NULL THEN
    PERFORM pg_notify(v_channel, json_build_object('id', _finish.job_id)::text);
  END IF;
END
$fn$;
