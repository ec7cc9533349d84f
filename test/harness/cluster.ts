/**
 * Throwaway PostgreSQL 15 clusters for the test suite (DESIGN.md decision 8).
 *
 * `startCluster()` runs initdb into a fresh directory under os.tmpdir(), starts the server on a
 * free 127.0.0.1 port (plus a Unix socket inside the same directory), creates the test roles
 * and the `app` database, and installs pg_background into it: the version asked for with
 * PGBG_TEST_PG_BACKGROUND (`1.8`, `2.0` or `standin`), or by default the real extension's
 * default version when the server has it, otherwise the dblink-based stand-in from
 * test/fixtures (a test fixture, not the extension). When the test process runs as root, every
 * server binary runs as the `postgres` OS user.
 *
 * `clusterFromInfo()` rebuilds a usable Cluster in another process (the vitest workers) from
 * the plain-data `ClusterInfo` that the global setup provides.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fs, existsSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

/** Login roles every cluster has, with their passwords (undefined: no password, trust only). */
export const ROLE_PASSWORDS: Readonly<Record<string, string | undefined>> = Object.freeze({
  postgres: 'postgres',
  alice: 'alice-secret',
  bob: 'bob-secret',
  md5user: 'md5-secret',
  trustuser: undefined,
});

/** Roles that get pg_background privileges (membership in `pgbackground_role`) by default. */
export const DEFAULT_PGBG_ROLES: readonly string[] = Object.freeze(['alice', 'bob', 'md5user', 'trustuser']);

/** The database every cluster has; `app_template` is an untouched copy used by createDatabase(). */
export const APP_DATABASE = 'app';
const TEMPLATE_DATABASE = 'app_template';

export type PgBackgroundKind = 'real' | 'standin';

/**
 * Which pg_background a cluster gets: a version of the real extension (`CREATE EXTENSION
 * pg_background VERSION '...'`), the stand-in, or `auto` (the real extension's default version
 * where the server has it, else the stand-in: what a fresh clone without the shared tools gets).
 */
export type PgBackgroundChoice = 'auto' | 'standin' | '1.8' | '2.0';
export const PG_BACKGROUND_CHOICES: readonly PgBackgroundChoice[] = Object.freeze(['auto', 'standin', '1.8', '2.0']);

/**
 * The choice the environment asks for: PGBG_TEST_PG_BACKGROUND=1.8|2.0|standin|auto, with
 * PGBG_TEST_STANDIN=1 kept as an alias of `standin`. An unknown value is an error, never a
 * silent fallback (a CI run against "2.O" must not quietly test 1.8).
 */
export function pgBackgroundChoiceFromEnv(env: NodeJS.ProcessEnv = process.env): PgBackgroundChoice {
  const raw = env.PGBG_TEST_PG_BACKGROUND?.trim();
  const alias = env.PGBG_TEST_STANDIN === '1';
  if (raw === undefined || raw === '') return alias ? 'standin' : 'auto';
  if (!(PG_BACKGROUND_CHOICES as readonly string[]).includes(raw)) {
    throw new ClusterError(`PGBG_TEST_PG_BACKGROUND=${raw} is not one of ${PG_BACKGROUND_CHOICES.join(', ')}`);
  }
  if (alias && raw !== 'standin') {
    throw new ClusterError(`PGBG_TEST_STANDIN=1 contradicts PGBG_TEST_PG_BACKGROUND=${raw}`);
  }
  return raw as PgBackgroundChoice;
}

export interface StartClusterOptions {
  /** Extra postgresql.conf settings (raw values, quoted for you when needed). */
  settings?: Record<string, string>;
  /** Force the stand-in even when the real extension is available (same as pgBackground: 'standin'). */
  standin?: boolean;
  /**
   * pg_hba.conf lines for TCP connections, replacing the default `host` lines (the local
   * socket keeps `trust`, which the harness itself uses). E.g. hostssl-only rules for TLS tests.
   */
  hostHba?: string[];
  /** Files written into the data directory before the server starts (mode 0600, owned by the server's user): certificates and keys. */
  dataFiles?: Record<string, string | Buffer>;
  /** Which pg_background to install (default: from the environment, see pgBackgroundChoiceFromEnv). */
  pgBackground?: PgBackgroundChoice;
}

/**
 * The names of the handle-based (pid, cookie) pg_background API on a cluster, for tests that
 * call the extension directly: 2.x gives the unsuffixed names to it (its `_v2` names are
 * deprecated aliases that 3.0 drops, and `pg_background_wait_v2_timeout` is gone); 1.6-1.10 and
 * the stand-in have the `_v2` names. `wait` takes (pid, cookie, timeout_ms) and returns whether
 * the worker stopped; on 2.x a timeout <= 0 blocks for ever, so pass a positive one.
 */
export interface PgBackgroundNames {
  launch: string;
  submit: string;
  result: string;
  detach: string;
  cancel: string;
  wait: string;
}

export function pgBackgroundNames(c: Pick<ClusterInfo, 'extVersion'>): PgBackgroundNames {
  if (/^[2-9]\./.test(c.extVersion)) {
    return {
      launch: 'pg_background_launch',
      submit: 'pg_background_submit',
      result: 'pg_background_result',
      detach: 'pg_background_detach',
      cancel: 'pg_background_cancel',
      wait: 'pg_background_wait',
    };
  }
  return {
    launch: 'pg_background_launch_v2',
    submit: 'pg_background_submit_v2',
    result: 'pg_background_result_v2',
    detach: 'pg_background_detach_v2',
    cancel: 'pg_background_cancel_v2',
    wait: 'pg_background_wait_v2_timeout',
  };
}

/** Plain data describing a running cluster; safe to pass between processes. */
export interface ClusterInfo {
  host: string;
  port: number;
  socketDir: string;
  dataDir: string;
  /** The temporary directory holding dataDir and socketDir (removed by stop()). */
  baseDir: string;
  binDir: string;
  logFile: string;
  pgBackground: PgBackgroundKind;
  /** pg_extension.extversion of the real extension, or the API version the stand-in mirrors ('1.8'). */
  extVersion: string;
  /** What was asked for (PGBG_TEST_PG_BACKGROUND or the option); `auto` picks by what the server has. */
  requested: PgBackgroundChoice;
  /** OS user the server runs as (null: the test process's own user). */
  osUser: string | null;
}

export interface ConnectOptions {
  user?: string;
  database?: string;
  /** Defaults to the known password of `user` (ROLE_PASSWORDS). */
  password?: string;
}

export interface PsqlOptions extends ConnectOptions {
  /** Written to psql's stdin. */
  input?: string;
  /** Extra environment variables for psql. */
  env?: Record<string, string>;
  /** Kill psql after this many ms (default 60000). */
  timeoutMs?: number;
}

export interface PsqlResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface Cluster extends ClusterInfo {
  /** postgres://user:password@127.0.0.1:port/database (known password by default). */
  url(user?: string, database?: string, password?: string): string;
  /** node-postgres connection config for TCP. */
  clientConfig(opts?: ConnectOptions): pg.ClientConfig;
  /** A connected pg.Client (TCP); the caller ends it. */
  connect(opts?: ConnectOptions): Promise<pg.Client>;
  /** One-shot query on a fresh connection. */
  query<R extends pg.QueryResultRow = any>(sql: string, params?: unknown[], opts?: ConnectOptions): Promise<pg.QueryResult<R>>;
  /** Runs the real psql binary over TCP (-X, no password prompt). Never rejects on exit status. */
  psql(args?: string[], opts?: PsqlOptions): Promise<PsqlResult>;
  /** GRANT pgbackground_role TO role (the method pg_background 1.8's README recommends). */
  grantPgBackground(role: string): Promise<void>;
  /** Creates a fresh database cloned from the pristine copy of `app` (pg_background installed). */
  createDatabase(name?: string): Promise<string>;
  /** Last `lines` lines of the server log. */
  logTail(lines?: number): string;
  /** Immediate shutdown and removal of the directory (throws for the shared cluster in workers). */
  stop(): Promise<void>;
  /** pg_ctl restart with the given shutdown mode, same port and settings (owned clusters only). */
  restart(mode: 'fast' | 'immediate'): Promise<void>;
}

const here = path.dirname(fileURLToPath(import.meta.url));
export const STANDIN_SQL_PATH = path.resolve(here, '../fixtures/pg_background-standin.sql');

function defaultBinDir(): string {
  if (process.env.PGBG_TEST_PGBIN) return process.env.PGBG_TEST_PGBIN;
  return '/usr/lib/postgresql/15/bin';
}

function quoteIdent(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

function quoteLiteral(value: string): string {
  return "'" + value.replace(/'/g, "''") + "'";
}

function confValue(value: string): string {
  // postgresql.conf accepts every value quoted; backslashes and quotes escaped.
  return "'" + value.replace(/\\/g, '\\\\').replace(/'/g, "''") + "'";
}

/** Reserves a free TCP port on 127.0.0.1 (closed again before returning). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      if (addr === null || typeof addr === 'string') {
        server.close();
        reject(new Error('could not determine a free port'));
        return;
      }
      const port = addr.port;
      server.close(() => resolve(port));
    });
  });
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command, as osUser when given (root only), collecting output. */
function run(cmd: string, args: string[], opts: { osUser: string | null; input?: string; env?: Record<string, string>; timeoutMs?: number }): Promise<RunResult> {
  let file = cmd;
  let argv = args;
  if (opts.osUser !== null) {
    file = 'runuser';
    argv = ['-u', opts.osUser, '--', cmd, ...args];
  }
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, {
      env: { ...process.env, LC_ALL: 'C', LANG: 'C', ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      cwd: os.tmpdir(),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`could not run ${file}: ${err.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

function tailOfFile(file: string, lines: number): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n');
  } catch (err) {
    return `(no server log at ${file}: ${(err as Error).message})`;
  }
}

class ClusterError extends Error {}

function fail(step: string, result: RunResult | null, logFile: string | null): never {
  const parts = [`PostgreSQL test cluster: ${step} failed`];
  if (result) {
    parts.push(`exit status ${result.code}`);
    if (result.stdout.trim()) parts.push(`stdout:\n${result.stdout.trim()}`);
    if (result.stderr.trim()) parts.push(`stderr:\n${result.stderr.trim()}`);
  }
  if (logFile) parts.push(`server log (tail):\n${tailOfFile(logFile, 40)}`);
  throw new ClusterError(parts.join('\n'));
}

function resolveOsUser(): string | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return null;
  const user = process.env.PGBG_TEST_OS_USER ?? 'postgres';
  const check = spawnSync('id', ['-u', user], { encoding: 'utf8' });
  if (check.status !== 0) {
    throw new ClusterError(
      `PostgreSQL test cluster: running as root, but OS user "${user}" does not exist; ` +
        'PostgreSQL refuses to run as root (install postgresql-15, which creates it, or set PGBG_TEST_OS_USER)',
    );
  }
  return user;
}

/** Clusters started by this process, stopped synchronously if the process exits without stop(). */
const live = new Set<ClusterInfo>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const info of live) stopSync(info);
  });
}

function pgCtlArgs(info: ClusterInfo, action: string[]): string[] {
  return [...action, '-D', info.dataDir];
}

/**
 * A detached shell that stops the cluster and removes its directory once this process is gone,
 * however it ended (a killed test runner must not leave servers behind).
 */
const watchdogs = new Map<ClusterInfo, ChildProcess>();
function startWatchdog(info: ClusterInfo): void {
  const pgCtl = path.join(info.binDir, 'pg_ctl');
  const q = (s: string) => "'" + s.replace(/'/g, `'\\''`) + "'";
  const stop = `${q(pgCtl)} stop -D ${q(info.dataDir)} -m immediate -w -t 30`;
  const asUser = info.osUser !== null ? `runuser -u ${q(info.osUser)} -- ${stop}` : stop;
  const remove = process.env.PGBG_TEST_KEEP ? 'true' : `rm -rf ${q(info.baseDir)}`;
  const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; ${asUser} >/dev/null 2>&1; ${remove}`;
  const child = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore', cwd: os.tmpdir() });
  child.on('error', () => undefined);
  child.unref();
  watchdogs.set(info, child);
}
function stopWatchdog(info: ClusterInfo): void {
  const child = watchdogs.get(info);
  watchdogs.delete(info);
  if (child && child.exitCode === null && child.pid !== undefined) {
    try {
      process.kill(child.pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
}

function stopSync(info: ClusterInfo): void {
  stopWatchdog(info);
  const pgCtl = path.join(info.binDir, 'pg_ctl');
  const args = pgCtlArgs(info, ['stop', '-m', 'immediate', '-w', '-t', '30']);
  if (info.osUser !== null) spawnSync('runuser', ['-u', info.osUser, '--', pgCtl, ...args], { stdio: 'ignore', cwd: os.tmpdir() });
  else spawnSync(pgCtl, args, { stdio: 'ignore', cwd: os.tmpdir() });
  if (!process.env.PGBG_TEST_KEEP) rmSync(info.baseDir, { recursive: true, force: true });
  live.delete(info);
}

/**
 * Starts a throwaway cluster. Takes a few seconds (initdb dominates).
 * Errors say which step failed and include the server log tail.
 */
export async function startCluster(opts: StartClusterOptions = {}): Promise<Cluster> {
  const binDir = defaultBinDir();
  for (const tool of ['initdb', 'pg_ctl', 'postgres', 'psql']) {
    if (!existsSync(path.join(binDir, tool))) {
      throw new ClusterError(`PostgreSQL test cluster: ${path.join(binDir, tool)} not found (install postgresql-15 and postgresql-client-15, or set PGBG_TEST_PGBIN)`);
    }
  }
  const osUser = resolveOsUser();
  const baseDir = await fs.mkdtemp(path.join(os.tmpdir(), 'pgbg-test-'));
  const dataDir = path.join(baseDir, 'data');
  const socketDir = path.join(baseDir, 'sock');
  const logFile = path.join(dataDir, 'server.log');
  await fs.mkdir(socketDir);
  if (osUser !== null) {
    const chown = spawnSync('chown', ['-R', osUser, baseDir], { encoding: 'utf8' });
    if (chown.status !== 0) fail(`chown ${baseDir} to ${osUser}`, { code: chown.status, stdout: chown.stdout, stderr: chown.stderr }, null);
    const reach = spawnSync('runuser', ['-u', osUser, '--', 'test', '-w', socketDir], { encoding: 'utf8' });
    if (reach.status !== 0) {
      await fs.rm(baseDir, { recursive: true, force: true });
      throw new ClusterError(
        `PostgreSQL test cluster: OS user "${osUser}" cannot reach ${baseDir} ` +
          `(${reach.stderr.trim() || 'permission denied'}); set TMPDIR to a directory it can traverse, such as /tmp`,
      );
    }
  }
  if (Buffer.byteLength(path.join(socketDir, '.s.PGSQL.65535')) > 107) {
    await fs.rm(baseDir, { recursive: true, force: true });
    throw new ClusterError(`PostgreSQL test cluster: socket path under ${socketDir} is too long for a Unix socket; set TMPDIR to a shorter directory`);
  }
  const info: ClusterInfo = {
    host: '127.0.0.1',
    port: 0,
    socketDir,
    dataDir,
    baseDir,
    binDir,
    logFile,
    pgBackground: 'standin',
    extVersion: '',
    requested: opts.standin ? 'standin' : (opts.pgBackground ?? pgBackgroundChoiceFromEnv()),
    osUser,
  };
  live.add(info);
  installExitHook();
  startWatchdog(info);
  try {
    await initCluster(info, opts.hostHba);
    for (const [name, content] of Object.entries(opts.dataFiles ?? {})) {
      const file = path.join(info.dataDir, name);
      await fs.writeFile(file, content, { mode: 0o600 });
      if (info.osUser !== null) spawnSync('chown', [info.osUser, file]);
    }
    await startServer(info, opts.settings ?? {});
    await bootstrap(info);
  } catch (err) {
    stopSync(info);
    throw err;
  }
  return makeCluster(info, { owned: true });
}

async function initCluster(info: ClusterInfo, hostHba?: string[]): Promise<void> {
  const pwFile = path.join(info.baseDir, 'pwfile');
  await fs.writeFile(pwFile, `${ROLE_PASSWORDS.postgres}\n`, { mode: 0o600 });
  if (info.osUser !== null) spawnSync('chown', [info.osUser, pwFile]);
  const result = await run(
    path.join(info.binDir, 'initdb'),
    ['-D', info.dataDir, '-U', 'postgres', '--pwfile', pwFile, '--auth-local=trust', '--auth-host=scram-sha-256', '--no-locale', '-E', 'UTF8', '--no-sync', '--no-instructions'],
    { osUser: info.osUser },
  );
  await fs.rm(pwFile, { force: true });
  if (result.code !== 0) fail('initdb', result, null);

  await fs.writeFile(
    path.join(info.dataDir, 'pg_hba.conf'),
    [
      '# pgbg-proxy test cluster (test/harness/cluster.ts)',
      'local all all trust',
      // Replication connections (refused anyway while max_wal_senders = 0, the default here;
      // test/proxy/replication.test.ts starts a cluster of its own that allows them).
      'local replication all trust',
      'host replication all 127.0.0.1/32 scram-sha-256',
      ...(hostHba ?? ['host all trustuser 127.0.0.1/32 trust', 'host all md5user 127.0.0.1/32 md5', 'host all all 127.0.0.1/32 scram-sha-256']),
      '',
    ].join('\n'),
  );
}

function baseSettings(info: ClusterInfo): Record<string, string> {
  return {
    listen_addresses: '127.0.0.1',
    port: String(info.port),
    unix_socket_directories: info.socketDir,
    max_connections: '200',
    max_worker_processes: '24',
    shared_buffers: '64MB',
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    wal_level: 'minimal',
    max_wal_senders: '0',
    password_encryption: 'scram-sha-256',
    lc_messages: 'C',
    log_line_prefix: '%m [%p] %q%u@%d %a ',
    log_min_messages: 'warning',
    logging_collector: 'off',
    dynamic_shared_memory_type: 'posix',
  };
}

async function startServer(info: ClusterInfo, extra: Record<string, string>): Promise<void> {
  const confPath = path.join(info.dataDir, 'postgresql.conf');
  const original = await fs.readFile(confPath, 'utf8');
  let lastResult: RunResult | null = null;
  for (let attempt = 1; attempt <= 3; attempt++) {
    info.port = await freePort();
    const settings = { ...baseSettings(info), ...extra };
    const lines = Object.entries(settings).map(([k, v]) => `${k} = ${confValue(v)}`);
    await fs.writeFile(confPath, `${original}\n# pgbg-proxy test cluster settings\n${lines.join('\n')}\n`);
    lastResult = await run(
      path.join(info.binDir, 'pg_ctl'),
      ['start', '-D', info.dataDir, '-w', '-t', '60', '-l', info.logFile],
      { osUser: info.osUser },
    );
    if (lastResult.code === 0) return;
    // Another process may have taken the port between freePort() and bind(): try another one.
    const log = tailOfFile(info.logFile, 20);
    if (!/could not bind|Address already in use|could not create any TCP\/IP sockets/i.test(log)) break;
  }
  fail('pg_ctl start', lastResult, info.logFile);
}

function superClient(info: ClusterInfo, database: string): pg.Client {
  // Local socket, trust: does not depend on the password machinery.
  return new pg.Client({ host: info.socketDir, port: info.port, user: 'postgres', database });
}

async function withSuper<T>(info: ClusterInfo, database: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = superClient(info, database);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Versions of the real extension this server can install (pg_available_extension_versions). */
async function availableVersions(info: ClusterInfo): Promise<{ versions: string[]; defaultVersion: string | null }> {
  return withSuper(info, TEMPLATE_DATABASE, async (c) => {
    const v = await c.query<{ version: string }>(`SELECT version FROM pg_available_extension_versions WHERE name = 'pg_background'`);
    const d = await c.query<{ default_version: string }>(`SELECT default_version FROM pg_available_extensions WHERE name = 'pg_background'`);
    return { versions: v.rows.map((r) => r.version), defaultVersion: d.rows[0]?.default_version ?? null };
  });
}

async function bootstrap(info: ClusterInfo): Promise<void> {
  try {
    await withSuper(info, 'postgres', async (c) => {
      await c.query(`ALTER ROLE postgres PASSWORD ${quoteLiteral(ROLE_PASSWORDS.postgres!)}`);
      await c.query(`CREATE ROLE alice LOGIN PASSWORD ${quoteLiteral(ROLE_PASSWORDS.alice!)}`);
      await c.query(`CREATE ROLE bob LOGIN PASSWORD ${quoteLiteral(ROLE_PASSWORDS.bob!)}`);
      await c.query(`CREATE ROLE trustuser LOGIN`);
      await c.query(`SET password_encryption = 'md5'`);
      await c.query(`CREATE ROLE md5user LOGIN PASSWORD ${quoteLiteral(ROLE_PASSWORDS.md5user!)}`);
      await c.query(`RESET password_encryption`);
      await c.query(`CREATE DATABASE ${TEMPLATE_DATABASE} OWNER postgres`);
    });

    const { versions, defaultVersion } = await availableVersions(info);
    // The one version of the real extension to install, or null for the stand-in.
    let version: string | null;
    if (info.requested === 'standin') version = null;
    else if (info.requested === 'auto') version = defaultVersion;
    else if (versions.includes(info.requested)) version = info.requested;
    else {
      throw new ClusterError(
        `PostgreSQL test cluster: pg_background ${info.requested} was asked for (PGBG_TEST_PG_BACKGROUND) but this server offers ` +
          `${versions.length ? versions.join(', ') : 'no pg_background'}; install it with ../shared/tools/install-pg-background, ` +
          'or run with PGBG_TEST_PG_BACKGROUND=standin',
      );
    }
    const useReal = version !== null;
    const standinSql = useReal ? '' : await fs.readFile(STANDIN_SQL_PATH, 'utf8');

    // Only app_template gets pg_background, and every database the tests use is cloned from it
    // (createDatabase()); template1 and postgres stay without it. One database holds one version
    // (a backend can load only one of the 1.8 and 2.0 libraries), so the whole run uses one.
    await withSuper(info, TEMPLATE_DATABASE, async (c) => {
      await c.query(`GRANT ALL ON SCHEMA public TO PUBLIC`);
      if (useReal) {
        await c.query(`CREATE EXTENSION pg_background VERSION ${quoteLiteral(version!)}`);
        const r = await c.query<{ extversion: string }>(`SELECT extversion FROM pg_extension WHERE extname = 'pg_background'`);
        info.extVersion = r.rows[0]!.extversion;
        info.pgBackground = 'real';
      } else {
        await c.query(standinSql);
        const r = await c.query<{ v: string }>(`SELECT pgbg_standin.api_version() AS v`);
        info.extVersion = r.rows[0]!.v;
        info.pgBackground = 'standin';
      }
      for (const role of DEFAULT_PGBG_ROLES) await c.query(`GRANT pgbackground_role TO ${quoteIdent(role)}`);
    });

    await withSuper(info, 'postgres', async (c) => {
      // Nobody connects to the template, so createDatabase() can clone it at any time.
      await c.query(`CREATE DATABASE ${APP_DATABASE} TEMPLATE ${TEMPLATE_DATABASE} OWNER postgres`);
    });
  } catch (err) {
    if (err instanceof ClusterError) throw err;
    fail(`bootstrap (${(err as Error).message})`, null, info.logFile);
  }
}

let dbCounter = 0;

/** Builds the Cluster API over a ClusterInfo. `owned`: this process may stop the cluster. */
export function makeCluster(info: ClusterInfo, opts: { owned: boolean }): Cluster {
  const passwordFor = (user: string, password?: string): string | undefined => password ?? ROLE_PASSWORDS[user];

  const clientConfig = (o: ConnectOptions = {}): pg.ClientConfig => {
    const user = o.user ?? 'postgres';
    const cfg: pg.ClientConfig = { host: info.host, port: info.port, user, database: o.database ?? APP_DATABASE };
    const password = passwordFor(user, o.password);
    if (password !== undefined) cfg.password = password;
    return cfg;
  };

  const cluster: Cluster = {
    ...info,
    url(user = 'postgres', database = APP_DATABASE, password?: string): string {
      const pw = passwordFor(user, password);
      const auth = pw === undefined ? encodeURIComponent(user) : `${encodeURIComponent(user)}:${encodeURIComponent(pw)}`;
      return `postgres://${auth}@${info.host}:${info.port}/${encodeURIComponent(database)}`;
    },
    clientConfig,
    async connect(o: ConnectOptions = {}): Promise<pg.Client> {
      const client = new pg.Client(clientConfig(o));
      await client.connect();
      return client;
    },
    async query<R extends pg.QueryResultRow = any>(sql: string, params?: unknown[], o: ConnectOptions = {}): Promise<pg.QueryResult<R>> {
      const client = new pg.Client(clientConfig(o));
      await client.connect();
      try {
        return await client.query<R>(sql, params as any[] | undefined);
      } finally {
        await client.end();
      }
    },
    async psql(args: string[] = [], o: PsqlOptions = {}): Promise<PsqlResult> {
      const user = o.user ?? 'postgres';
      const env: Record<string, string> = { PGCONNECT_TIMEOUT: '10', ...o.env };
      const password = passwordFor(user, o.password);
      if (password !== undefined) env.PGPASSWORD = password;
      else env.PGPASSWORD = '';
      return run(
        path.join(info.binDir, 'psql'),
        ['-X', '-w', '-h', info.host, '-p', String(info.port), '-U', user, '-d', o.database ?? APP_DATABASE, ...args],
        { osUser: null, input: o.input, env, timeoutMs: o.timeoutMs ?? 60_000 },
      );
    },
    async grantPgBackground(role: string): Promise<void> {
      await withSuper(info, APP_DATABASE, (c) => c.query(`GRANT pgbackground_role TO ${quoteIdent(role)}`));
    },
    async createDatabase(name?: string): Promise<string> {
      const db = name ?? `t_${process.pid}_${Date.now().toString(36)}_${dbCounter++}`;
      await withSuper(info, 'postgres', (c) => c.query(`CREATE DATABASE ${quoteIdent(db)} TEMPLATE ${TEMPLATE_DATABASE} OWNER postgres`));
      return db;
    },
    logTail(lines = 50): string {
      return tailOfFile(info.logFile, lines);
    },
    async stop(): Promise<void> {
      if (!opts.owned) throw new Error('this cluster is shared by the whole test run; the global setup stops it');
      const pgCtl = path.join(info.binDir, 'pg_ctl');
      stopWatchdog(info);
      await run(pgCtl, pgCtlArgs(info, ['stop', '-m', 'immediate', '-w', '-t', '30']), { osUser: info.osUser });
      if (!process.env.PGBG_TEST_KEEP) await fs.rm(info.baseDir, { recursive: true, force: true });
      live.delete(info);
    },
    async restart(mode: 'fast' | 'immediate'): Promise<void> {
      if (!opts.owned) throw new Error('this cluster is shared by the whole test run; restart a cluster of your own');
      const r = await run(path.join(info.binDir, 'pg_ctl'), ['restart', '-D', info.dataDir, '-m', mode, '-w', '-t', '60', '-l', info.logFile], { osUser: info.osUser });
      if (r.code !== 0) fail(`pg_ctl restart -m ${mode}`, r, info.logFile);
    },
  };
  return cluster;
}

/** Rebuilds a Cluster from info provided by another process; stop() is refused. */
export function clusterFromInfo(info: ClusterInfo): Cluster {
  return makeCluster({ ...info }, { owned: false });
}

/** The plain-data part of a Cluster. */
export function clusterInfo(cluster: Cluster): ClusterInfo {
  const { host, port, socketDir, dataDir, baseDir, binDir, logFile, pgBackground, extVersion, requested, osUser } = cluster;
  return { host, port, socketDir, dataDir, baseDir, binDir, logFile, pgBackground, extVersion, requested, osUser };
}
