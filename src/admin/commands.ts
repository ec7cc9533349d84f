import type { Logger } from 'pino';
import type { ProxyConfig, Rule } from '../config/schema.js';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import type { AdminIdentity } from './admin-auth.js';
import type { AdminControls, MetricSnapshot } from './controls.js';
import { listJobs, JOB_COLUMNS } from './job-listing.js';
import { listLaunchers, LAUNCHER_COLUMNS } from './launcher-listing.js';
import type { RegistryConnection } from '../jobs/registry-connection.js';
import { columns, type Cell, type ResultColumn, type ResultSet } from './result-set.js';

/** A console session as SHOW CLIENTS lists it beside the listener's client sessions. */
export interface ConsoleSessionInfo {
  readonly id: string;
  readonly user: string;
  readonly applicationName: string;
  readonly startedAt: number;
  readonly busy: boolean;
}

/** What a command may use: the proxy's controls, the registry, who is asking. */
export interface CommandContext {
  controls: AdminControls;
  registry: RegistryConnection;
  identity: AdminIdentity;
  consoleSessions(): Iterable<ConsoleSessionInfo>;
  log: Logger;
  sessionId: string;
}

export interface AdminCommand {
  /** As SHOW HELP prints it. */
  syntax: string;
  description: string;
  /** Matched against the normalized text (see normalizeCommand); groups become args. */
  pattern: RegExp;
  /** Known before running, so that Describe can answer; null for commands without rows. */
  columns: ResultColumn[] | null;
  /** Hidden commands are accepted but not advertised. */
  hidden?: boolean;
  run(ctx: CommandContext, args: string[]): Promise<ResultSet> | ResultSet;
}

const RESULT_COLUMNS = columns('result');
const HELP_COLUMNS = columns('command', 'description');
const RULE_COLUMNS = columns('name', 'action', 'kinds', 'pattern', 'databases', 'users', 'application_names', 'timeout', 'priority:int4');
const CLIENT_COLUMNS = columns('id', 'kind', 'user', 'database', 'application_name', 'started_at', 'tx_status', 'idle:bool', 'adopted:bool', 'pending_jobs:int4', 'worker:int4');
const STATS_COLUMNS = columns('stat', 'labels', 'value:float8');
const CONFIG_COLUMNS = columns('key', 'value');
const CANCEL_COLUMNS = columns('cancelled:bool');

export const COMMANDS: readonly AdminCommand[] = [
  {
    syntax: 'SHOW HELP',
    description: 'this list',
    pattern: /^SHOW\s+HELP$/i,
    columns: HELP_COLUMNS,
    run: () => ({ columns: HELP_COLUMNS, rows: COMMANDS.filter((c) => !c.hidden).map((c) => [c.syntax, c.description]), tag: 'SHOW' }),
  },
  {
    syntax: 'SHOW JOBS',
    description: `active jobs and the last finished ones, with wait event and progress of running workers`,
    pattern: /^SHOW\s+JOBS$/i,
    columns: JOB_COLUMNS,
    run: (ctx) => listJobs(ctx.registry),
  },
  {
    syntax: 'SHOW LAUNCHERS',
    description: 'the launcher of each login with jobs (alive, pid, launched, supervising, queued, running)',
    pattern: /^SHOW\s+LAUNCHERS$/i,
    columns: LAUNCHER_COLUMNS,
    run: (ctx) => listLaunchers(ctx.registry),
  },
  {
    syntax: 'SHOW RULES',
    description: 'the configured routing rules',
    pattern: /^SHOW\s+RULES$/i,
    columns: RULE_COLUMNS,
    run: (ctx) => ({ columns: RULE_COLUMNS, rows: ctx.controls.config().rules.map(ruleRow), tag: 'SHOW' }),
  },
  {
    syntax: 'SHOW CLIENTS',
    description: 'client sessions, and admin console sessions',
    pattern: /^SHOW\s+CLIENTS$/i,
    columns: CLIENT_COLUMNS,
    run: async (ctx) => ({ columns: CLIENT_COLUMNS, rows: await clientRows(ctx), tag: 'SHOW' }),
  },
  {
    syntax: 'SHOW STATS',
    description: 'counters and gauges of this proxy (the same as its Prometheus metrics)',
    pattern: /^SHOW\s+STATS$/i,
    columns: STATS_COLUMNS,
    run: async (ctx) => ({ columns: STATS_COLUMNS, rows: statsRows(ctx, await ctx.controls.metricsJson()), tag: 'SHOW' }),
  },
  {
    syntax: 'SHOW CONFIG',
    description: 'the configuration in effect (passwords masked) and whether launching is paused',
    pattern: /^SHOW\s+CONFIG$/i,
    columns: CONFIG_COLUMNS,
    run: (ctx) => ({ columns: CONFIG_COLUMNS, rows: configRows(ctx.controls), tag: 'SHOW' }),
  },
  {
    syntax: 'CANCEL JOB id',
    description: 'cancel a queued or running job (pgbg.cancel)',
    pattern: /^CANCEL\s+JOB\s+(\S+)$/i,
    columns: CANCEL_COLUMNS,
    run: (ctx, [id]) => cancelJob(ctx, id!),
  },
  {
    syntax: 'RELOAD',
    description: 'read the configuration again and apply it, like SIGHUP',
    pattern: /^RELOAD$/i,
    columns: RESULT_COLUMNS,
    run: async (ctx) => {
      let outcome: string;
      try {
        outcome = await ctx.controls.reload();
      } catch (err) {
        ctx.log.warn({ session: ctx.sessionId, user: ctx.identity.user, err: (err as Error).message }, 'admin console: RELOAD refused');
        throw new PgError('F0000', 'RELOAD refused: the configuration is invalid; the running configuration is unchanged', (err as Error).message);
      }
      ctx.log.info({ session: ctx.sessionId, user: ctx.identity.user }, `admin console: RELOAD: ${outcome}`);
      return message('RELOAD', `OK: ${outcome}`);
    },
  },
  {
    syntax: 'PAUSE',
    description: 'stop launching new jobs (running jobs go on)',
    pattern: /^PAUSE$/i,
    columns: RESULT_COLUMNS,
    run: async (ctx) => {
      const changed = await ctx.controls.pause();
      if (changed) ctx.log.warn({ session: ctx.sessionId, user: ctx.identity.user }, 'admin console: launching of new jobs paused');
      return message('PAUSE', changed ? 'OK: launching of new jobs is paused' : 'OK: launching of new jobs was already paused');
    },
  },
  {
    syntax: 'RESUME',
    description: 'launch new jobs again after PAUSE',
    pattern: /^RESUME$/i,
    columns: RESULT_COLUMNS,
    run: async (ctx) => {
      const changed = await ctx.controls.resume();
      if (changed) ctx.log.info({ session: ctx.sessionId, user: ctx.identity.user }, 'admin console: launching of new jobs resumed');
      return message('RESUME', changed ? 'OK: launching of new jobs resumed' : 'OK: launching of new jobs was not paused');
    },
  },
  {
    // Drivers set session parameters on connect (JDBC: extra_float_digits...); accepting them
    // lets those drivers in. Nothing in the console depends on them.
    syntax: 'SET name = value',
    description: 'accepted and ignored, for drivers that set parameters on connect',
    pattern: /^SET\s+.+$/is,
    columns: null,
    hidden: true,
    run: () => ({ columns: null, rows: [], tag: 'SET' }),
  },
];

/** Trims, drops trailing semicolons and collapses whitespace. */
export function normalizeCommand(text: string): string {
  return text.trim().replace(/;+\s*$/, '').trim().replace(/\s+/g, ' ');
}

/**
 * The commands in a simple Query string, in order. Admin commands never contain quoted text,
 * so a semicolon always separates two of them (`SHOW HELP; SHOW STATS` runs both).
 */
export function splitCommands(text: string): string[] {
  return text
    .split(';')
    .map((s) => normalizeCommand(s))
    .filter((s) => s.length > 0);
}

export interface ParsedCommand {
  command: AdminCommand;
  args: string[];
  text: string;
}

/** Finds the command for one normalized text; throws 42601 listing the commands. */
export function parseCommand(text: string): ParsedCommand {
  const normalized = normalizeCommand(text);
  for (const command of COMMANDS) {
    const m = command.pattern.exec(normalized);
    if (m) return { command, args: m.slice(1), text: normalized };
  }
  throw new PgError(
    SqlState.SyntaxError,
    `unrecognized pgbg-proxy admin console command: "${normalized.length > 60 ? normalized.slice(0, 57) + '...' : normalized}"`,
    undefined,
    `Commands: ${COMMANDS.filter((c) => !c.hidden)
      .map((c) => c.syntax)
      .join(', ')}.`,
  );
}

function message(tag: string, text: string): ResultSet {
  return { columns: RESULT_COLUMNS, rows: [[text]], tag };
}

async function cancelJob(ctx: CommandContext, id: string): Promise<ResultSet> {
  if (!/^\d{1,19}$/.test(id)) {
    throw new PgError('22P02', `invalid job id: "${id}"`, undefined, 'CANCEL JOB takes the numeric id that SHOW JOBS lists.');
  }
  // pgbg.cancel raises 42704 for a job that does not exist; the error reaches the client as is.
  const r = await ctx.registry.query<{ cancelled: boolean }>('SELECT pgbg.cancel($1::bigint) AS cancelled', [id]);
  const cancelled = r.rows[0]?.cancelled ?? false;
  ctx.log.info({ session: ctx.sessionId, user: ctx.identity.user, job_id: id, cancelled }, 'admin console: CANCEL JOB');
  return { columns: CANCEL_COLUMNS, rows: [[cancelled]], tag: 'CANCEL' };
}

function ruleRow(rule: Rule): Cell[] {
  const list = (items: string[] | undefined) => (items && items.length ? items.join(', ') : null);
  return [
    rule.name,
    rule.action,
    list(rule.match.kinds),
    rule.match.pattern?.source ?? null,
    list(rule.match.databases),
    list(rule.match.users),
    list(rule.match.applicationNames),
    rule.timeout === undefined ? null : formatDuration(rule.timeout),
    rule.priority ?? null,
  ];
}

async function clientRows(ctx: CommandContext): Promise<Cell[][]> {
  const rows: Cell[][] = [];
  for (const s of await ctx.controls.sessions()) {
    rows.push([s.id, 'client', s.user, s.database, s.applicationName, new Date(s.startedAt).toISOString(), s.txStatus, s.idle, s.adopted, s.pendingJobCount, s.worker ?? process.pid]);
  }
  const adminDb = ctx.controls.config().admin.database;
  for (const s of ctx.consoleSessions()) {
    rows.push([s.id, 'admin', s.user, adminDb, s.applicationName, new Date(s.startedAt).toISOString(), 'I', !s.busy, false, 0, process.pid]);
  }
  return rows;
}

/**
 * The proxy's own metrics, one row per labelled value. Histogram buckets are left out (_sum and
 * _count say enough in a console), and of prom-client's default process metrics only the few an
 * operator looks at first are kept.
 */
const PROCESS_STATS = new Set([
  'pgbg_proxy_process_start_time_seconds',
  'pgbg_proxy_process_resident_memory_bytes',
  'pgbg_proxy_process_cpu_seconds_total',
  'pgbg_proxy_nodejs_eventloop_lag_seconds',
  'pgbg_proxy_nodejs_heap_size_used_bytes',
]);

function statsRows(ctx: CommandContext, metrics: MetricSnapshot[]): Cell[][] {
  let consoleCount = 0;
  for (const _ of ctx.consoleSessions()) consoleCount++;
  const rows: Cell[][] = [
    ['paused', null, ctx.controls.paused ? 1 : 0],
    ['admin_sessions', null, consoleCount],
  ];
  for (const metric of metrics) {
    if (metric.name.startsWith('pgbg_proxy_') && !PROCESS_STATS.has(metric.name)) continue;
    for (const v of metric.values) {
      const name = v.metricName ?? metric.name;
      if (name.endsWith('_bucket')) continue;
      const labels = Object.entries(v.labels)
        .filter(([, value]) => value !== undefined)
        .map(([k, value]) => `${k}=${value}`)
        .join(',');
      rows.push([name, labels || null, v.value]);
    }
  }
  return rows;
}

/** SHOW CONFIG: dotted keys, leaves only; rules are summarized (SHOW RULES lists them). */
export function configRows(controls: AdminControls): Cell[][] {
  const config: ProxyConfig = controls.config();
  const rows: Cell[][] = [];
  const walk = (prefix: string, value: unknown) => {
    if (prefix === 'rules') {
      rows.push(['rules', `${(value as unknown[]).length} (see SHOW RULES)`]);
    } else if (value === null || value === undefined) {
      rows.push([prefix, null]);
    } else if (value instanceof RegExp) {
      rows.push([prefix, value.source]);
    } else if (Array.isArray(value)) {
      rows.push([prefix, value.map((v) => maskSecrets(String(v))).join(', ')]);
    } else if (typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
    } else {
      rows.push([prefix, maskSecrets(String(value))]);
    }
  };
  walk('', config);
  rows.push(['paused', controls.paused ? 'true' : 'false']);
  return rows;
}

/**
 * Hides passwords in connection strings: URL userinfo (postgres://u:secret@h), a password query
 * parameter, and the keyword form (password=secret). Applied to every configuration value.
 */
export function maskSecrets(value: string): string {
  return value
    .replace(/^([a-z][a-z0-9+.-]*:\/\/[^:@/?#]*:)([^@/?#]*)@/i, '$1********@')
    .replace(/([?&]password=)[^&#]*/gi, '$1********')
    .replace(/(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)/gi, (whole, key: string, secret: string) => (secret === '********' ? whole : `${key}********`));
}

/** Milliseconds in the largest unit that divides them: 30s, 10min, 2h. */
export function formatDuration(ms: number): string {
  const units: [string, number][] = [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['min', 60_000],
    ['s', 1000],
  ];
  for (const [unit, size] of units) if (ms > 0 && ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}
