import type { Logger } from 'pino';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import type { SessionChannel } from '../upstream/channel.js';
import type { JobPlan } from './plan.js';
import type { BoundParams, JobSubmitter, SubmitContext, SubmittedJob } from './submitter.js';
import type { SchedulingPolicy } from './scheduling-policy.js';
import { describeStatement, runOrThrow, runStatement, serverError } from './upstream-sql.js';
import { literalsFor, substitute } from './param-literals.js';

/**
 * Every statement here runs on the client's own session, under the client's settings: names are
 * schema-qualified (pg_catalog.fn, OPERATOR(pg_catalog.=), $n::pg_catalog.type) so that no
 * search_path, shadowing schema or session setting changes what they mean.
 *
 * Submits jobs on the client's own upstream session (DESIGN.md decision 1): the statement is
 * checked by the server (parsed in the submission's own round trip, or at the client's Parse),
 * and pgbg.enqueue records the job with the session's settings and commits; nothing waits for a
 * worker. The login's launcher, inside PostgreSQL, launches it (registry version 6).
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
    let validate: string | undefined;
    if (params && params.values.length > 0) {
      statement = substitute(statement, plan.params, await literalsFor(channel, params));
    } else if (plan.params.length > 0) {
      throw new PgError(SqlState.ProtocolViolation, `statement uses $${plan.params[0].index} but no parameters were bound`);
    } else if (plan.relations.length > 0) {
      // Simple protocol: nothing was checked at Parse time, so check now (a utility statement's
      // relations are not looked up by Parse: that takes a round trip of its own).
      await this.describe(channel, plan, []);
    } else {
      // Simple protocol: the statement is parsed ahead of the submission, in its round trip.
      validate = statement;
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
    // A CREATE INDEX CONCURRENTLY's index, schema-qualified as this session resolves its table:
    // if the build's outcome cannot be read from its worker, the catalog can tell.
    const index = plan.createdIndex && plan.relations[0] ? await qualifiedIndex(channel, plan.relations[0], plan.createdIndex) : undefined;
    const options = {
      returns_rows: plan.returnsRows,
      rows_via: plan.rowsVia,
      timeout_ms: plan.options.timeoutMs ?? timeouts.defaultMs,
      not_before: plan.options.notBefore,
      max_attempts: maxAttempts,
      retry_base_ms: retry.baseDelayMs,
      retry_max_ms: retry.maxDelayMs,
      window: window ? { from: window.from, to: window.to, time_zone: window.timeZone } : undefined,
      index,
    };
    const carry = this.policy.carrySettings();
    const carryKey = carry.join('\n');
    const settingsFrom = ctx.settingsFrom && ctx.settingsFrom.carry === carryKey ? ctx.settingsFrom.jobId.toString() : null;
    const result = await runStatement(
      channel,
      'SELECT job_id, state, existing, launcher_started, launcher_alive FROM pgbg.enqueue($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.bool, $4::pg_catalog.text, $5::pg_catalog.jsonb, $6::pg_catalog.int4, $7::pg_catalog.text, $8::pg_catalog.text, $9::pg_catalog.jsonb, $10::pg_catalog.int4, $11::pg_catalog.text[], $12::pg_catalog.int8)',
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
        String(this.policy.launcherIdleMs()),
        pgTextArray(carry),
        settingsFrom,
      ],
      { validate },
    );
    const err = serverError(result);
    if (err) throw explainSubmitError(err, ctx.database);
    const [jobId, state, existing, launcherStarted, launcherAlive] = result.rows[0] as (string | null)[];
    const job: SubmittedJob = { jobId: BigInt(jobId!), state: state!, existing: existing === 't', launcherAlive: launcherAlive === 't' };
    if (!job.existing) job.settings = { jobId: job.jobId, carry: carryKey };
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
        launcher_started: launcherStarted ? Number(launcherStarted) : null,
        launcher_alive: launcherAlive === 't',
        settings_from: settingsFrom,
        submit_ms: Number(process.hrtime.bigint() - started) / 1e6,
      },
      'job submitted',
    );
    return job;
  }

  async cancelQueued(channel: SessionChannel, jobId: bigint): Promise<void> {
    const r = await runStatement(channel, 'SELECT pgbg.cancel_queued($1::pg_catalog.int8)', [jobId.toString()]);
    const err = serverError(r);
    if (err) this.log.warn({ event: 'job_cancel_failed', job_id: jobId.toString(), sqlstate: err.code, err: err.message }, 'could not cancel a queued job');
    else if (r.rows[0]?.[0] === 't') this.log.info({ event: 'job_cancelled', job_id: jobId.toString(), reason: 'client disconnected' }, 'queued job cancelled: its client went away');
  }

  async retryLauncher(channel: SessionChannel): Promise<boolean> {
    const r = await runStatement(
      channel,
      'SELECT pgbg.ensure_launcher($1::pg_catalog.int4) IS NOT NULL OR pgbg._launcher_alive(session_user) OR NOT pgbg._launcher_has_work()',
      [String(this.policy.launcherIdleMs())],
    );
    const err = serverError(r);
    if (err) {
      this.log.debug({ event: 'launcher_start_failed', sqlstate: err.code, err: err.message }, 'launcher could not start yet; will try again');
      return false;
    }
    return r.rows[0]?.[0] === 't';
  }

  async ensureLauncher(channel: SessionChannel): Promise<void> {
    const r = await runStatement(channel, ensureLauncherSql(this.policy.launcherIdleMs()), [], { readOnly: true });
    const err = serverError(r);
    if (err) this.log.debug({ event: 'launcher_check_failed', sqlstate: err.code, err: err.message }, 'could not look for a launcher to start');
  }
}

/**
 * Starts the login's launcher when it has waiting jobs and none is alive. A DO block, so that a
 * database without the registry (or with one older than version 6), a standby, or a role
 * without pg_background rights starts nothing and writes no ERROR to the server's log for every
 * session; the idle time is the configuration's whole number of milliseconds, as a literal.
 */
function ensureLauncherSql(idleMs: number): string {
  return `DO $pgbg$BEGIN
  IF NOT pg_catalog.pg_is_in_recovery() AND pg_catalog.to_regprocedure('pgbg.ensure_launcher(integer)') IS NOT NULL THEN
    PERFORM pgbg.ensure_launcher(${Math.trunc(idleMs)});
  END IF;
EXCEPTION WHEN OTHERS THEN
  NULL;
END$pgbg$`;
}

async function qualifiedIndex(channel: SessionChannel, table: string, index: string): Promise<string | undefined> {
  const r = await runStatement(
    channel,
    'SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) $2::pg_catalog.text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1::pg_catalog.text)',
    [table, `.${index}`],
    { readOnly: true },
  );
  return r.rows[0]?.[0] ?? undefined;
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
