import type { Logger } from 'pino';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import type { SessionChannel } from '../upstream/channel.js';
import type { JobPlan } from './plan.js';
import type { BoundParams, JobSubmitter, LaunchOutcome, SubmitContext, SubmittedJob, SupervisedWorker, WatchedJob } from './submitter.js';
import type { SchedulingPolicy } from './scheduling-policy.js';
import { describeStatement, runOrThrow, runStatement, serverError } from './upstream-sql.js';
import { literalsFor, substitute } from './param-literals.js';
import { superviseStep } from './supervise.js';

/**
 * Every statement here runs on the client's own session, under the client's settings: names are
 * schema-qualified (pg_catalog.fn, OPERATOR(pg_catalog.=), $n::pg_catalog.type) so that no
 * search_path, shadowing schema or session setting changes what they mean.
 *
 * Submits jobs on the client's own upstream session (DESIGN.md decision 1): the statement is
 * checked by the server, the job row is inserted and the worker launched in one implicit
 * transaction by pgbg.submit_and_launch (so a failed launch leaves no job behind), and the
 * worker, running as the client's role, waits until that row is committed before it starts.
 */
export class PgBackgroundSubmitter implements JobSubmitter {
  constructor(
    private readonly log: Logger,
    /** PAUSE on the admin console: no new launches until RESUME. */
    private readonly isPaused: () => boolean = () => false,
    /** Limits, queue bound and retries from the (reloadable) configuration. */
    private readonly policy: SchedulingPolicy,
  ) {}

  async describe(channel: SessionChannel, plan: JobPlan, declaredTypes: number[]): Promise<number[]> {
    const statement = plan.statements[0];
    const { paramTypes, error } = await describeStatement(channel, statement, declaredTypes);
    if (error) throw error;
    if (plan.relations.length > 0) {
      const missing = await runOrThrow(channel, 'SELECT r FROM pg_catalog.unnest($1::pg_catalog.text[]) r WHERE pg_catalog.to_regclass(r) IS NULL', [pgTextArray(plan.relations)], { readOnly: true });
      if (missing.rows.length > 0) {
        throw new PgError('42P01', `relation ${missing.rows[0][0]} does not exist`);
      }
    }
    return paramTypes;
  }

  async submit(channel: SessionChannel, plan: JobPlan, params: BoundParams | null, ctx: SubmitContext): Promise<SubmittedJob> {
    if (this.isPaused()) {
      throw new PgError(
        SqlState.ObjectNotInPrerequisiteState,
        'pgbg-proxy is paused: new background jobs are not launched',
        'An administrator ran PAUSE on the pgbg-proxy admin console.',
        'Retry after RESUME, or run the statement without the background hint.',
      );
    }
    const started = process.hrtime.bigint();
    let statement = plan.statements[0];
    if (params && params.values.length > 0) {
      statement = substitute(statement, plan.params, await literalsFor(channel, params));
    } else if (plan.params.length > 0) {
      throw new PgError(SqlState.ProtocolViolation, `statement uses $${plan.params[0].index} but no parameters were bound`);
    } else {
      // Simple protocol: nothing was checked at Parse time, so check now.
      await this.describe(channel, plan, []);
    }
    const retry = this.policy.retry();
    const timeouts = this.policy.timeouts();
    if (plan.options.timeoutMs !== undefined && plan.options.timeoutMs > timeouts.maxMs) {
      // A rule above the ceiling is refused when the configuration loads; this is a hint's.
      throw new PgError(
        SqlState.InvalidParameterValue,
        `timeout ${plan.options.timeoutMs} ms exceeds the longest job timeout this pgbg-proxy allows (jobs.maxTimeout = ${timeouts.maxMs} ms)`,
        undefined,
        'Use a shorter timeout, or ask the administrator to raise jobs.maxTimeout.',
      );
    }
    const maxAttempts = plan.transactional ? (plan.options.maxAttempts ?? retry.maxAttempts) : 1;
    const window = plan.options.window;
    const options = {
      returns_rows: plan.returnsRows,
      rows_via: plan.rowsVia,
      timeout_ms: plan.options.timeoutMs ?? timeouts.defaultMs,
      not_before: plan.options.notBefore,
      max_attempts: maxAttempts,
      retry_base_ms: retry.baseDelayMs,
      retry_max_ms: retry.maxDelayMs,
      window: window ? { from: window.from, to: window.to, time_zone: window.timeZone } : undefined,
    };
    const result = await runStatement(
      channel,
      'SELECT job_id, state, worker_pid, cookie, api, existing FROM pgbg.submit_and_launch($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.bool, $4::pg_catalog.text, $5::pg_catalog.jsonb, $6::pg_catalog.int4, $7::pg_catalog.text, $8::pg_catalog.text, $9::pg_catalog.jsonb)',
      [
        statement,
        plan.kind,
        String(plan.transactional),
        plan.rule,
        JSON.stringify(options),
        plan.options.priority?.toString() ?? null,
        plan.options.key ?? null,
        ctx.sessionId,
        JSON.stringify(this.policy.limits({ database: ctx.database, user: ctx.user, rule: plan.rule })),
      ],
    );
    const err = serverError(result);
    if (err) throw explainSubmitError(err, ctx.database);
    const [jobId, state, workerPid, cookie, api, existing] = result.rows[0] as string[];
    const job: SubmittedJob = { jobId: BigInt(jobId), state, maxAttempts, transactional: plan.transactional, existing: existing === 't' };
    const supervised = supervisedWorker(job.jobId, workerPid, cookie, api, plan.transactional);
    if (supervised) job.supervised = supervised;
    this.log.info(
      {
        event: 'job_submitted',
        job_id: jobId,
        session: ctx.sessionId,
        user: ctx.user,
        database: ctx.database,
        kind: plan.kind,
        rule: plan.rule,
        state,
        existing: existing === 't',
        worker_pid: workerPid ? Number(workerPid) : null,
        submit_ms: Number(process.hrtime.bigint() - started) / 1e6,
      },
      'job submitted',
    );
    return job;
  }

  async launchQueued(channel: SessionChannel, job: WatchedJob, ctx: SubmitContext): Promise<LaunchOutcome | null> {
    const jobId = job.jobId.toString();
    // Paused: look without launching (an empty limits object would admit everything).
    const paused = this.isPaused();
    const sql = paused
      ? `SELECT state, NULL AS worker_pid, NULL AS cookie, NULL AS api, transactional, attempts, ${DUE_IN_MS} FROM pgbg.job j WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8`
      : `SELECT l.state, l.worker_pid, l.cookie, l.api, j.transactional, j.attempts, ${DUE_IN_MS} FROM pgbg.launch_if_admitted($1::pg_catalog.int8, $2::pg_catalog.jsonb) l, pgbg.job j WHERE j.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8`;
    const params = paused ? [jobId] : [jobId, JSON.stringify(this.policy.limits({ database: ctx.database, user: ctx.user, rule: job.rule }))];
    const r = await runStatement(channel, sql, params);
    const err = serverError(r);
    if (err) {
      this.log.warn({ event: 'job_launch_failed', job_id: jobId, sqlstate: err.code, err: err.message }, 'queued job could not be launched; will try again');
      return null;
    }
    const [state, workerPid, cookie, api, transactional, attempts, dueInMs] = (r.rows[0] ?? []) as (string | null)[];
    if (!state) return { state: 'lost' }; // the row is gone: nothing left to watch
    const outcome: LaunchOutcome = { state };
    if (state === 'queued' && dueInMs !== null && Number(dueInMs) > 0) outcome.dueInMs = Number(dueInMs);
    if (workerPid) {
      const supervised = supervisedWorker(job.jobId, workerPid, cookie, api, transactional === 't');
      if (supervised) outcome.supervised = supervised;
      this.log.info({ event: 'job_launched', job_id: jobId, worker_pid: Number(workerPid), attempt: Number(attempts) }, 'queued job launched');
    }
    return outcome;
  }

  async cancel(channel: SessionChannel, jobId: bigint): Promise<void> {
    const r = await runStatement(channel, 'SELECT pgbg.cancel($1::pg_catalog.int8)', [jobId.toString()]);
    const err = serverError(r);
    if (err) this.log.warn({ event: 'job_cancel_failed', job_id: jobId.toString(), sqlstate: err.code, err: err.message }, 'could not cancel a queued job');
    else this.log.info({ event: 'job_cancelled', job_id: jobId.toString(), reason: 'client disconnected' }, 'queued job cancelled: its client went away');
  }

  poll(channel: SessionChannel, worker: SupervisedWorker): Promise<boolean> {
    return superviseStep(channel, worker, this.log);
  }
}

/**
 * Every name in the proxy's own SQL is qualified: it runs in the client's session, whose
 * search_path may put a schema that shadows pg_catalog's functions or operators first.
 *
 * How long until a queued job may start (its window opens, or its retry backoff ends), computed
 * by the server so that clock skew between proxy and server does not matter.
 */
const DUE_IN_MS = `GREATEST(0, pg_catalog.ceil(EXTRACT(epoch FROM j.not_before OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000))::pg_catalog.int8 AS due_in_ms`;

function supervisedWorker(jobId: bigint, workerPid: string | null, cookie: string | null, api: string | null, transactional: boolean): SupervisedWorker | null {
  if (transactional || !workerPid) return null;
  return { jobId, pid: Number(workerPid), cookie: cookie ?? null, apiVersion: api === '1' ? 1 : 2 };
}

/** The errors whose server wording does not tell the user what to do. */
function explainSubmitError(err: PgError, database: string): PgError {
  const aboutRegistry = err.code === '3F000' || (err.code === '42883' && /pgbg\.submit_and_launch/.test(err.message));
  if (aboutRegistry) {
    return new PgError(
      SqlState.ObjectNotInPrerequisiteState,
      `the pgbg job registry is not installed in database "${database}"`,
      err.message,
      `Run: pgbg-proxy migrate --database postgres://SUPERUSER@HOST:PORT/${database}`,
    );
  }
  return err;
}

function pgTextArray(items: string[]): string {
  return `{${items.map((s) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`).join(',')}}`;
}
