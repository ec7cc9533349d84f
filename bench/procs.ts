/**
 * Long-running helper processes of the benchmark (pgbg-proxy, PgBouncer): started in their own
 * process group so that a Ctrl-C in the terminal reaches only the benchmark, which then stops
 * them in order; a detached watchdog stops them too if the benchmark itself is killed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fs, openSync, closeSync, readFileSync, readdirSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { onCleanup } from './cleanup.js';

/**
 * The process and every process below it: with BENCH_WORKERS > 1 the proxy is a supervisor
 * whose cluster workers do the relaying, and what the proxy costs is what all of them use.
 */
export function processTree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${out[i]}/task`);
    } catch {
      continue;
    }
    for (const task of tasks) {
      try {
        for (const child of readFileSync(`/proc/${out[i]}/task/${task}/children`, 'utf8').trim().split(/\s+/)) {
          if (child && !out.includes(Number(child))) out.push(Number(child));
        }
      } catch {
        /* task gone meanwhile */
      }
    }
  }
  return out;
}

/**
 * CPU seconds (user + system) a process and its descendants (processTree) have used so far,
 * from /proc; NaN when unavailable.
 */
export function cpuSeconds(pid: number | null | undefined): number {
  if (!pid) return NaN;
  const tree = processTree(pid);
  let total = 0;
  for (const p of tree) {
    const own = ownCpuSeconds(p);
    if (Number.isFinite(own)) total += own;
    else if (p === pid) return NaN;
  }
  return total;
}

function ownCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines - 1).join('\n');
  } catch {
    return `(no log at ${file})`;
  }
}

/** Resolves once something accepts TCP connections on host:port; rejects after timeoutMs. */
export async function waitForPort(host: string, port: number, timeoutMs: number, alive?: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host, port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
      socket.setTimeout(1000, () => {
        socket.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    if (alive && !alive()) throw new Error(`process exited before listening on ${host}:${port}`);
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs} ms`);
    await sleep(100);
  }
}

export interface Service {
  name: string;
  child: ChildProcess;
  logFile: string;
  /** True once the process exited. */
  exited: () => boolean;
  /** "exit status N" / "signal S" once exited, else null. */
  exitReason: () => string | null;
  stop(): Promise<void>;
}

/**
 * Spawns a service in its own process group, output to logFile, with a watchdog that kills the
 * group when this process disappears. stop(): SIGTERM to the group, SIGKILL after graceMs.
 */
export function startService(name: string, file: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; logFile: string; graceMs?: number }): Service {
  const fd = openSync(opts.logFile, 'a');
  const child = spawn(file, args, { cwd: opts.cwd ?? os.tmpdir(), env: opts.env ?? process.env, stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  let done = false;
  let reason: string | null = null;
  let stopping = false;
  child.on('exit', (code, signal) => {
    done = true;
    reason = signal ? `signal ${signal}` : `exit status ${code}`;
    if (!stopping) console.error(`bench: ${name} exited unexpectedly (${reason}); its log: ${opts.logFile}`);
  });
  child.on('error', (err) => {
    done = true;
    console.error(`bench: could not start ${name}: ${err.message}`);
  });
  const pgid = child.pid;
  let watchdog: ChildProcess | null = null;
  if (pgid !== undefined) {
    const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; kill -TERM -${pgid} 2>/dev/null; sleep 3; kill -KILL -${pgid} 2>/dev/null; true`;
    watchdog = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore', cwd: os.tmpdir() });
    watchdog.on('error', () => undefined);
    watchdog.unref();
  }
  const signalGroup = (signal: NodeJS.Signals) => {
    if (pgid === undefined) return;
    try {
      process.kill(-pgid, signal);
    } catch {
      // group already gone
    }
  };
  let unregister = () => {};
  const service: Service = {
    name,
    child,
    logFile: opts.logFile,
    exited: () => done,
    exitReason: () => reason,
    async stop() {
      unregister();
      stopping = true;
      if (!done) {
        signalGroup('SIGTERM');
        const deadline = Date.now() + (opts.graceMs ?? 5000);
        while (!done && Date.now() < deadline) await sleep(50);
        if (!done) signalGroup('SIGKILL');
        while (!done && Date.now() < deadline + 2000) await sleep(50);
      }
      // stray members of the group (none expected)
      signalGroup('SIGKILL');
      if (watchdog?.pid !== undefined && watchdog.exitCode === null) {
        try {
          process.kill(watchdog.pid, 'SIGTERM');
        } catch {
          // gone
        }
      }
    },
  };
  unregister = onCleanup(name, () => service.stop());
  return service;
}

/** Runs a short command to completion, collecting output. */
export function runCommand(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
    const unregister = onCleanup(`${path.basename(file)} (pid ${child.pid})`, () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      unregister();
      reject(new Error(`could not run ${file}: ${err.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      unregister();
      resolve({ code, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// PgBouncer
// ---------------------------------------------------------------------------------------------

export const PGBOUNCER_BIN = process.env.BENCH_PGBOUNCER ?? '/usr/sbin/pgbouncer';

export interface Bouncer {
  port: number;
  /** PgBouncer's own pid (read from its pidfile; the spawned process may be runuser). */
  pid: number | null;
  version: string;
  service: Service;
}

/**
 * PgBouncer in session mode in a temporary directory (owned by osUser when given: PgBouncer
 * refuses to run as root). Clients authenticate with SCRAM against a plain-text auth_file;
 * PgBouncer logs in to the server with the same password (SCRAM, as pg_hba demands).
 */
export async function startPgBouncer(opts: {
  port: number;
  upstreamHost: string;
  upstreamPort: number;
  user: string;
  password: string;
  osUser: string | null;
  /** max_client_conn (200); the idle-session part raises it. */
  maxClientConn?: number;
  /**
   * TLS on both sides (client_tls_sslmode = require with this certificate, server_tls_sslmode =
   * verify-full against this CA); absent: plain text on both sides (server_tls_sslmode = disable,
   * stated because PgBouncer's default is prefer and the benchmark's server has ssl = on).
   */
  tls?: { cert: string; key: string; serverCa: string };
}): Promise<Bouncer> {
  if (!existsSync(PGBOUNCER_BIN)) throw new Error(`${PGBOUNCER_BIN} not found (apt-get install pgbouncer)`);
  const version = (spawnSync(PGBOUNCER_BIN, ['--version'], { encoding: 'utf8' }).stdout ?? '').split('\n')[0].trim();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pgbg-bench-bouncer-'));
  onCleanup('pgbouncer directory', () => fs.rm(dir, { recursive: true, force: true }));
  const q = (s: string) => '"' + s.replace(/"/g, '""') + '"';
  await fs.writeFile(path.join(dir, 'userlist.txt'), `${q(opts.user)} ${q(opts.password)}\n`, { mode: 0o600 });
  const logFile = path.join(dir, 'pgbouncer.log');
  const ini = [
    '[databases]',
    `* = host=${opts.upstreamHost} port=${opts.upstreamPort}`,
    '',
    '[pgbouncer]',
    `listen_addr = 127.0.0.1`,
    `listen_port = ${opts.port}`,
    `unix_socket_dir =`,
    `auth_type = scram-sha-256`,
    `auth_file = ${path.join(dir, 'userlist.txt')}`,
    `pool_mode = session`,
    `max_client_conn = ${opts.maxClientConn ?? 200}`,
    `default_pool_size = 100`,
    `ignore_startup_parameters = extra_float_digits`,
    `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
    `log_connections = 0`,
    `log_disconnections = 0`,
    `log_pooler_errors = 1`,
    ...(opts.tls
      ? [
          `client_tls_sslmode = require`,
          `client_tls_cert_file = ${opts.tls.cert}`,
          `client_tls_key_file = ${opts.tls.key}`,
          `server_tls_sslmode = verify-full`,
          `server_tls_ca_file = ${opts.tls.serverCa}`,
        ]
      : [`client_tls_sslmode = disable`, `server_tls_sslmode = disable`]),
    '',
  ].join('\n');
  const iniFile = path.join(dir, 'pgbouncer.ini');
  await fs.writeFile(iniFile, ini);
  await fs.writeFile(logFile, '');
  // PgBouncer needs a descriptor per client: raise the soft limit (1024 under runuser) up to
  // the hard one, or past about 1,000 idle clients accept() fails and connects hang.
  const fds = (opts.maxClientConn ?? 200) + 200;
  const withFds = `ulimit -n ${fds} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"`;
  let file = 'sh';
  let args = ['-c', withFds, PGBOUNCER_BIN, iniFile];
  if (opts.osUser !== null) {
    const chown = spawnSync('chown', ['-R', opts.osUser, dir], { encoding: 'utf8' });
    if (chown.status !== 0) throw new Error(`chown ${dir}: ${chown.stderr}`);
    file = 'runuser';
    args = ['-u', opts.osUser, '--', 'sh', '-c', withFds, PGBOUNCER_BIN, iniFile];
  }
  const service = startService('pgbouncer', file, args, { logFile, graceMs: 3000 });
  try {
    await waitForPort('127.0.0.1', opts.port, 15_000, () => !service.exited());
  } catch (err) {
    await service.stop();
    throw new Error(`pgbouncer did not start: ${(err as Error).message}\n${tail(logFile)}`);
  }
  let pid: number | null = null;
  for (let i = 0; i < 50 && pid === null; i++) {
    try {
      pid = Number(readFileSync(path.join(dir, 'pgbouncer.pid'), 'utf8').trim()) || null;
    } catch {
      await sleep(100);
    }
  }
  return { port: opts.port, pid, version, service };
}

// ---------------------------------------------------------------------------------------------
// pgbg-proxy
// ---------------------------------------------------------------------------------------------

export interface ProxyProcess {
  port: number;
  metricsPort: number | null;
  service: Service;
}

/** Runs the built CLI (bin/pgbg-proxy.js start) as a separate process; waits until it listens. */
export async function startProxyProcess(opts: {
  repoDir: string;
  port: number;
  upstreamHost: string;
  upstreamPort: number;
  metricsPort: number | null;
  logFile: string;
  env?: Record<string, string>;
  /** YAML written to a file next to the log and passed as --config. */
  configYaml?: string;
  /** --workers: relay processes under a supervisor (1: one process, as without the flag). */
  workers?: number;
}): Promise<ProxyProcess> {
  const args = [
    path.join(opts.repoDir, 'bin/pgbg-proxy.js'),
    'start',
    '--listen',
    `127.0.0.1:${opts.port}`,
    '--upstream',
    `${opts.upstreamHost}:${opts.upstreamPort}`,
    '--log-level',
    'warn',
    '--workers',
    String(opts.workers ?? 1),
  ];
  if (opts.metricsPort !== null) args.push('--metrics-listen', `127.0.0.1:${opts.metricsPort}`);
  if (opts.configYaml !== undefined) {
    const configFile = path.join(path.dirname(opts.logFile), 'proxy.yaml');
    await fs.writeFile(configFile, opts.configYaml);
    args.push('--config', configFile);
  }
  const service = startService('pgbg-proxy', process.execPath, args, {
    cwd: opts.repoDir,
    env: { ...process.env, ...opts.env },
    logFile: opts.logFile,
    graceMs: 5000,
  });
  try {
    await waitForPort('127.0.0.1', opts.port, 30_000, () => !service.exited());
    if (opts.metricsPort !== null) await waitForPort('127.0.0.1', opts.metricsPort, 10_000, () => !service.exited());
  } catch (err) {
    await service.stop();
    throw new Error(`pgbg-proxy did not start: ${(err as Error).message}\n${tail(opts.logFile)}`);
  }
  return { port: opts.port, metricsPort: opts.metricsPort, service };
}

// ---------------------------------------------------------------------------------------------
// The bare relay (bench/bare-relay.ts): the floor for a Node.js relay
// ---------------------------------------------------------------------------------------------

export interface BareRelay {
  port: number;
  service: Service;
}

export async function startBareRelay(opts: { repoDir: string; port: number; upstreamHost: string; upstreamPort: number; logFile: string }): Promise<BareRelay> {
  const script = path.join(opts.repoDir, 'bench/bare-relay.ts');
  const service = startService('bare relay', process.execPath, ['--import', 'tsx', script, String(opts.port), opts.upstreamHost, String(opts.upstreamPort)], {
    cwd: opts.repoDir,
    logFile: opts.logFile,
    graceMs: 2000,
  });
  try {
    await waitForPort('127.0.0.1', opts.port, 30_000, () => !service.exited());
  } catch (err) {
    await service.stop();
    throw new Error(`bare relay did not start: ${(err as Error).message}\n${tail(opts.logFile)}`);
  }
  return { port: opts.port, service };
}
