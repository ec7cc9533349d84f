/**
 * pgbg-proxy benchmark: `npm run bench` (node --import tsx bench/run.ts).
 *
 *  1. pgbench -S (simple, extended, prepared protocol) against PostgreSQL directly, through
 *     PgBouncer (session mode) and through pgbg-proxy, alternating targets in rotating order
 *     for several rounds; median/min/max tps and the proxy's ratios.
 *  2. Cost of Prometheus scraping: pgbench -S -M simple through the proxy with and without a
 *     loop fetching /metrics every 100 ms, alternating rounds.
 *  1b. TLS on both sides: the same pgbench -S with sslmode=require to the proxy (tls.client
 *     require, tls.server verify-full) and to PgBouncer (client_tls_sslmode require,
 *     server_tls_sslmode verify-full), and direct with sslmode=require; the proxy/PgBouncer ratio
 *     is reported beside the plain one. BENCH_TLS=0 skips it; BENCH_TLS_MODES (simple),
 *     BENCH_TLS_ROUNDS (BENCH_ROUNDS).
 *  3. "Time to job id": round trip of a hinted statement through the proxy until the job-id row
 *     arrives, against a raw pg_background launch on a direct connection; sequential p50/p99 and
 *     launches per second, sequential and with concurrent clients.
 *  1c. CPU per transaction at a fixed rate (pgbench -S -R BENCH_FIXED_RATE) of PgBouncer, the bare
 *     relay and the proxy: at full speed a middle's CPU per transaction falls as its throughput
 *     rises (more messages per read, fewer wake-ups), so part 1 compares middles at different
 *     loads; at one rate all of them hold, each does the same work in the same pattern.
 *  Part 1 also measures a bare relay (bench/bare-relay.ts: no parsing, no inspection, the same
 *  Node.js and socket settings), the floor for what a Node.js relay can do.
 *  4. Added latency per query with one client (SELECT 1, p50/p99) over direct, for PgBouncer,
 *     the bare relay and the proxy.
 *  5. Connection cost: BENCH_IDLE_CLIENTS sessions opened through the proxy and through PgBouncer
 *     and left idle: time to open a session (p50/p99) and resident memory per idle session.
 *
 * Environment: BENCH_QUICK=1 (2 rounds x 2 s, 40 jobs), BENCH_ROUNDS (5), BENCH_SECONDS (5),
 * BENCH_CLIENTS (16), BENCH_THREADS (2), BENCH_SCALE (10), BENCH_MODES (simple,extended,prepared),
 * BENCH_WARMUP (seconds per target before the rounds; 2, quick 0), BENCH_JOBS (200, quick 40),
 * BENCH_JOB_SQL ("SELECT 1"), BENCH_JOB_CLIENTS (4), BENCH_SCRAPE_MS (100), BENCH_SCRAPE_ROUNDS (10),
 * BENCH_SCRAPE_CPU_WINDOWS (3), BENCH_SCRAPE_CPU_SECONDS (10), BENCH_SCRAPER (curl|fetch), BENCH_SKIP_BUILD=1,
 * BENCH_MAX_WORKER_PROCESSES (the harness's 24), BENCH_PGBOUNCER (/usr/sbin/pgbouncer),
 * BENCH_LATENCY_ROUNDS (5, quick 2), BENCH_LATENCY_QUERIES (2000 per target and round, quick 300),
 * BENCH_IDLE_CLIENTS (2000, quick 200; 0 skips part 5),
 * BENCH_FIXED_RATE (6000 transactions per second; 0 skips part 1c), BENCH_FIXED_RATE_ROUNDS (5, quick 2),
 * BENCH_WORKERS (1: --workers for the proxy; its CPU and memory are then those of the supervisor
 * and all its workers together),
 * BENCH_OUT (bench/results/latest.json; the proxy's log goes next to it as proxy.log).
 * Everything it starts (cluster, PgBouncer, proxy) is stopped on exit, on error and on Ctrl-C.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startCluster, freePort, ROLE_PASSWORDS, type Cluster } from '../test/harness/cluster.js';
import { TestPki } from '../test/support/certs.js';
import { cleanupAll, installSignalHandlers, onCleanup, wasInterrupted } from './cleanup.js';
import { cpuSeconds, runCommand, sleep, startBareRelay, startPgBouncer, startProxyProcess, tail, type BareRelay, type Bouncer, type ProxyProcess } from './procs.js';
import { scraperKind, startScraper, type ScrapeStats } from './scraper.js';
import { measureScrapeCpu, type ScrapeCpuResult } from './scrape-cpu.js';
import { initPgbench, runPgbench, type PgbenchMode, type PgbenchRun, type PgbenchTarget } from './pgbench.js';
import { drain, runJobBench, type JobBenchResult } from './jobs.js';
import { fmt, max, median, min, percentile, ratio, table } from './stats.js';
import { measureLatency, type LatencySamples } from './latency.js';
import { measureIdleSessions, type IdleSessionResult } from './connections.js';

const repoDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function intEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, not "${raw}"`);
  return n;
}

const quick = process.env.BENCH_QUICK === '1';
const cfg = {
  quick,
  rounds: intEnv('BENCH_ROUNDS', quick ? 2 : 5),
  seconds: intEnv('BENCH_SECONDS', quick ? 2 : 5),
  clients: intEnv('BENCH_CLIENTS', 16),
  threads: intEnv('BENCH_THREADS', 2),
  scale: intEnv('BENCH_SCALE', 10),
  warmupSeconds: intEnv('BENCH_WARMUP', quick ? 0 : 2),
  modes: (process.env.BENCH_MODES ?? 'simple,extended,prepared').split(',').map((m) => m.trim()).filter(Boolean) as PgbenchMode[],
  jobs: intEnv('BENCH_JOBS', quick ? 40 : 200),
  jobBlock: 20,
  jobClients: intEnv('BENCH_JOB_CLIENTS', 4),
  jobSql: process.env.BENCH_JOB_SQL ?? 'SELECT 1',
  scrapeMs: intEnv('BENCH_SCRAPE_MS', 100),
  /** More rounds than part 1: the effect looked for (2%) is smaller than run-to-run noise. */
  scrapeRounds: intEnv('BENCH_SCRAPE_ROUNDS', quick ? 2 : 10),
  scrapeCpuWindows: intEnv('BENCH_SCRAPE_CPU_WINDOWS', quick ? 1 : 3),
  scrapeCpuSeconds: intEnv('BENCH_SCRAPE_CPU_SECONDS', quick ? 3 : 10),
  /** 0: the test harness's value (24). */
  maxWorkerProcesses: intEnv('BENCH_MAX_WORKER_PROCESSES', 0),
  latencyRounds: intEnv('BENCH_LATENCY_ROUNDS', quick ? 2 : 5),
  latencyQueries: intEnv('BENCH_LATENCY_QUERIES', quick ? 300 : 2000),
  idleClients: intEnv('BENCH_IDLE_CLIENTS', quick ? 200 : 2000),
  fixedRate: intEnv('BENCH_FIXED_RATE', 6000),
  fixedRateRounds: intEnv('BENCH_FIXED_RATE_ROUNDS', quick ? 2 : 5),
  workers: intEnv('BENCH_WORKERS', 1),
  out: process.env.BENCH_OUT ?? path.join(repoDir, 'bench/results/latest.json'),
  tls: process.env.BENCH_TLS !== '0',
  tlsModes: (process.env.BENCH_TLS_MODES ?? 'simple').split(',').map((m) => m.trim()).filter(Boolean) as PgbenchMode[],
  tlsRounds: intEnv('BENCH_TLS_ROUNDS', intEnv('BENCH_ROUNDS', quick ? 2 : 5)),
};
for (const m of cfg.tlsModes) if (!['simple', 'extended', 'prepared'].includes(m)) throw new Error(`BENCH_TLS_MODES: unknown mode "${m}"`);
for (const m of cfg.modes) if (!['simple', 'extended', 'prepared'].includes(m)) throw new Error(`BENCH_MODES: unknown mode "${m}"`);

type TargetName = 'direct' | 'pgbouncer' | 'bare' | 'proxy';

interface RoundRun extends PgbenchRun {
  round: number;
  mode: PgbenchMode;
  target: TargetName;
  order: number;
  /** CPU used by the middle process (proxy or PgBouncer) during the run, % of one core. */
  cpuPct: number;
  /** Its CPU time per processed transaction, microseconds. */
  cpuUsPerTx: number;
}

interface TlsPart {
  modes: PgbenchMode[];
  rounds: number;
  skipped?: string;
  bouncerSkipped?: string;
  runs: (PgbenchRun & { round: number; mode: PgbenchMode; target: string; order: number; cpuPct: number; cpuUsPerTx: number })[];
  summary: Record<string, Record<string, { median: number; min: number; max: number; failed: number; cpuUsPerTx: number }>>;
  ratios?: Record<string, { proxyOverPgbouncerTls: number; proxyOverPgbouncerPlain: number; proxyOverDirectTls: number }>;
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const log = (line = '') => console.log(line);

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], cwd: repoDir }).trim();
  } catch {
    return '';
  }
}

function rotate<T>(items: T[], by: number): T[] {
  const k = by % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

async function build(): Promise<void> {
  if (process.env.BENCH_SKIP_BUILD === '1') {
    log('build: skipped (BENCH_SKIP_BUILD=1)');
    return;
  }
  const tsc = path.join(repoDir, 'node_modules/.bin/tsc');
  const t0 = nowMs();
  const res = existsSync(tsc)
    ? await runCommand(tsc, ['-p', 'tsconfig.build.json'], { cwd: repoDir })
    : await runCommand('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: repoDir });
  if (res.code !== 0) {
    const out = (res.stdout + res.stderr).trim().split('\n').slice(0, 20).join('\n');
    if (!existsSync(path.join(repoDir, 'dist/cli/main.js'))) throw new Error(`tsc -p tsconfig.build.json failed:\n${out}`);
    log(`build: tsc reported errors (dist/ was still emitted; benchmarking it anyway):\n${out}`);
  } else {
    log(`build: tsc -p tsconfig.build.json ok (${((nowMs() - t0) / 1000).toFixed(1)} s)`);
  }
}

/** Checks that a target accepts a login and a query; returns the error message if not. */
async function probe(target: PgbenchTarget): Promise<string | null> {
  const { sslmode, ...conn } = target;
  const client = new pg.Client({ ...conn, connectionTimeoutMillis: 10_000, ssl: sslmode && sslmode !== 'disable' ? { rejectUnauthorized: false } : false });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT count(*) FROM pgbench_branches');
    return null;
  } catch (err) {
    return (err as Error).message;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function describeRun(r: PgbenchRun): string {
  if (r.error && !Number.isFinite(r.tps)) return `ERROR (${r.error.split('\n').pop()})`;
  return `${fmt(r.tps)} tps${r.failed ? ` (${r.failed} failed)` : ''}${r.error ? ' [pgbench error]' : ''}`;
}

async function main(): Promise<number> {
  installSignalHandlers();
  const startedAt = new Date();
  const t0 = nowMs();
  const env = {
    date: startedAt.toISOString(),
    host: os.hostname(),
    uptimeAtStart: sh('uptime', []),
    loadavgAtStart: os.loadavg(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? '',
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    git: `${sh('git', ['rev-parse', '--short', 'HEAD'])}${sh('git', ['status', '--porcelain']) ? ' (working tree has uncommitted changes)' : ''}`,
    postgres: '',
    pgBackground: '',
    pgbouncer: '',
    uptimeAtEnd: '',
  };
  log(`pgbg-proxy benchmark${quick ? ' (quick mode)' : ''}  ${env.date}`);
  log(`machine: ${env.cpus} CPUs (${env.cpuModel}), ${env.memoryGiB} GiB, node ${env.node}, git ${env.git}`);
  log(`load at start: ${env.uptimeAtStart}`);
  log(
    `settings: pgbench -S -c ${cfg.clients} -j ${cfg.threads}, ${cfg.rounds} rounds x ${cfg.seconds} s, modes ${cfg.modes.join('/')}, scale ${cfg.scale}, ` +
      `warm-up ${cfg.warmupSeconds} s; ${cfg.jobs} jobs (${cfg.jobSql}), ${cfg.jobClients} concurrent job clients; /metrics every ${cfg.scrapeMs} ms`,
  );
  log();

  await build();

  // ---- Certificates (part 1b) -----------------------------------------------------------------
  // One test CA; the server's certificate and the one the proxy and PgBouncer show clients.
  const pki = new TestPki();
  onCleanup('certificates', async () => pki.remove());
  const ca = pki.ca('bench-ca');
  const serverCert = pki.leaf('server', ca, '5001', 'localhost');
  const frontCert = pki.leaf('front', ca, '5002', 'localhost');

  // ---- PostgreSQL ---------------------------------------------------------------------------
  // ssl = on for part 1b; every plain target says sslmode=disable (bench/pgbench.ts).
  const cluster: Cluster = await startCluster({
    dataFiles: { 'server.crt': serverCert.certPem, 'server.key': serverCert.keyPem },
    settings: {
      ssl: 'on',
      ssl_cert_file: 'server.crt',
      ssl_key_file: 'server.key',
      // Every proxied session has its own server connection: part 5's idle clients need theirs.
      max_connections: String(Math.max(200, cfg.idleClients + 150)),
      shared_buffers: '256MB',
      max_wal_size: '4GB',
      checkpoint_timeout: '30min',
      autovacuum: 'off',
      track_io_timing: 'off',
      ...(cfg.maxWorkerProcesses > 0 ? { max_worker_processes: String(cfg.maxWorkerProcesses) } : {}),
    },
  });
  onCleanup('PostgreSQL cluster', () => cluster.stop());
  // PgBouncer runs as the server's OS user and must read the certificates.
  if (cluster.osUser !== null) execFileSync('chown', ['-R', cluster.osUser, pki.dir]);
  const pgVersion = (await cluster.query<{ v: string }>('SELECT version() AS v')).rows[0].v;
  const mwp = (await cluster.query<{ s: string }>(`SELECT current_setting('max_worker_processes') AS s`)).rows[0].s;
  env.postgres = pgVersion.split(',')[0];
  env.pgBackground = `${cluster.pgBackground === 'real' ? 'pg_background' : 'pg_background STAND-IN (dblink test fixture)'} ${cluster.extVersion}`;
  log(`cluster: ${env.postgres} on 127.0.0.1:${cluster.port}, ${env.pgBackground}, max_worker_processes ${mwp}, data in ${cluster.dataDir}`);

  const db = await cluster.createDatabase('pgbench');
  const user = 'postgres';
  const password = ROLE_PASSWORDS.postgres!;
  const direct: PgbenchTarget = { host: '127.0.0.1', port: cluster.port, user, password, database: db };
  const ti = nowMs();
  await initPgbench(cluster.binDir, direct, cfg.scale);
  log(`pgbench -i -s ${cfg.scale} into "${db}": ${((nowMs() - ti) / 1000).toFixed(1)} s`);

  const registryUrl = cluster.url('postgres', db);
  const mig = await runCommand(process.execPath, [path.join(repoDir, 'bin/pgbg-proxy.js'), 'migrate', '--database', registryUrl], { cwd: repoDir, timeoutMs: 120_000 });
  const migrated = mig.code === 0;
  log(`migrate: ${(mig.stdout + mig.stderr).trim() || `exit status ${mig.code}`}`);

  // ---- pgbg-proxy ---------------------------------------------------------------------------
  const proxyLog = path.join(path.dirname(cfg.out), 'proxy.log');
  await fs.mkdir(path.dirname(proxyLog), { recursive: true });
  await fs.writeFile(proxyLog, '');
  const proxy: ProxyProcess = await startProxyProcess({
    repoDir,
    port: await freePort(),
    upstreamHost: '127.0.0.1',
    upstreamPort: cluster.port,
    metricsPort: await freePort(),
    logFile: proxyLog,
    // The registry connection serves job metrics at scrape time and reconciliation, as in production.
    env: migrated ? { PGBG_REGISTRY_URL: registryUrl } : {},
    configYaml: `limits:\n  maxClients: ${Math.max(1000, cfg.idleClients + 100)}\n`,
    workers: cfg.workers,
  });
  log(`proxy: 127.0.0.1:${proxy.port} (metrics 127.0.0.1:${proxy.metricsPort}), ${cfg.workers} worker${cfg.workers === 1 ? '' : 's'}${migrated ? ', jobs.registryUrl = the benchmark database' : ''}`);

  // ---- PgBouncer ----------------------------------------------------------------------------
  let bouncer: Bouncer | null = null;
  let bouncerSkipped: string | undefined;
  try {
    bouncer = await startPgBouncer({
      port: await freePort(),
      upstreamHost: '127.0.0.1',
      upstreamPort: cluster.port,
      user,
      password,
      osUser: cluster.osUser,
      maxClientConn: Math.max(200, cfg.idleClients + 100),
    });
    env.pgbouncer = bouncer.version;
    log(`pgbouncer: ${bouncer.version} on 127.0.0.1:${bouncer.port} (session mode, pool 100)`);
  } catch (err) {
    bouncerSkipped = (err as Error).message;
    log(`pgbouncer: SKIPPED, ${bouncerSkipped}`);
  }

  // ---- bare relay -----------------------------------------------------------------------------
  const bare: BareRelay = await startBareRelay({
    repoDir,
    port: await freePort(),
    upstreamHost: '127.0.0.1',
    upstreamPort: cluster.port,
    logFile: path.join(path.dirname(cfg.out), 'bare-relay.log'),
  });
  onCleanup('bare relay', () => bare.service.stop());
  log(`bare relay: 127.0.0.1:${bare.port} (no parsing, no inspection)`);

  const targets: Partial<Record<TargetName, PgbenchTarget>> = { direct, bare: { ...direct, port: bare.port }, proxy: { ...direct, port: proxy.port } };
  if (bouncer) targets.pgbouncer = { ...direct, port: bouncer.port };
  for (const [name, target] of Object.entries(targets) as [TargetName, PgbenchTarget][]) {
    const problem = await probe(target);
    if (problem === null) continue;
    if (name === 'pgbouncer') {
      bouncerSkipped = `login through pgbouncer failed: ${problem}\n${tail(bouncer!.service.logFile, 10)}`;
      log(`pgbouncer: SKIPPED, ${bouncerSkipped}`);
      delete targets.pgbouncer;
      await bouncer!.service.stop();
      bouncer = null;
    } else {
      throw new Error(`cannot query through ${name}: ${problem}${name === 'proxy' ? `\n${tail(proxyLog)}` : ''}`);
    }
  }
  const targetNames = (['direct', 'pgbouncer', 'bare', 'proxy'] as TargetName[]).filter((t) => targets[t]);
  log();

  /** Part 1b: pgbench -S with TLS on both sides of the proxy and of PgBouncer, and direct with TLS. */
  async function runTlsPart(): Promise<TlsPart> {
    type TlsTarget = 'direct-tls' | 'pgbouncer-tls' | 'proxy-tls';
    const result: TlsPart = { modes: cfg.tlsModes, rounds: cfg.tlsRounds, summary: {}, runs: [] };
    const tlsProxyLog = path.join(path.dirname(cfg.out), 'proxy-tls.log');
    await fs.writeFile(tlsProxyLog, '');
    let tlsProxy: ProxyProcess;
    try {
      tlsProxy = await startProxyProcess({
        repoDir,
        port: await freePort(),
        upstreamHost: '127.0.0.1',
        upstreamPort: cluster.port,
        metricsPort: null,
        logFile: tlsProxyLog,
        env: {
          PGBG_TLS_CLIENT_MODE: 'require',
          PGBG_TLS_CLIENT_CERT: frontCert.cert,
          PGBG_TLS_CLIENT_KEY: frontCert.key,
          PGBG_TLS_SERVER_MODE: 'verify-full',
          PGBG_TLS_SERVER_CA: ca.cert,
          ...(migrated ? { PGBG_REGISTRY_URL: registryUrl } : {}),
        },
      });
    } catch (err) {
      result.skipped = `TLS proxy did not start: ${(err as Error).message}`;
      log(`part 1b: SKIPPED, ${result.skipped}`);
      return result;
    }
    let tlsBouncer: Bouncer | null = null;
    try {
      tlsBouncer = await startPgBouncer({
        port: await freePort(),
        upstreamHost: '127.0.0.1',
        upstreamPort: cluster.port,
        user,
        password,
        osUser: cluster.osUser,
        tls: { cert: frontCert.cert, key: frontCert.key, serverCa: ca.cert },
      });
    } catch (err) {
      result.bouncerSkipped = (err as Error).message;
      log(`part 1b: pgbouncer with TLS SKIPPED, ${result.bouncerSkipped.split('\n')[0]}`);
    }
    const tlsTargets: Partial<Record<TlsTarget, PgbenchTarget>> = {
      'direct-tls': { ...direct, sslmode: 'require' },
      'proxy-tls': { ...direct, port: tlsProxy.port, sslmode: 'require' },
      ...(tlsBouncer ? { 'pgbouncer-tls': { ...direct, port: tlsBouncer.port, sslmode: 'require' } } : {}),
    };
    for (const [name, target] of Object.entries(tlsTargets) as [TlsTarget, PgbenchTarget][]) {
      const problem = await probe(target);
      if (problem === null) continue;
      log(`part 1b: ${name} SKIPPED, login failed: ${problem}`);
      delete tlsTargets[name];
    }
    const names = (['direct-tls', 'pgbouncer-tls', 'proxy-tls'] as TlsTarget[]).filter((t) => tlsTargets[t]);
    const pid = (t: TlsTarget) => (t === 'proxy-tls' ? tlsProxy.service.child.pid : t === 'pgbouncer-tls' ? tlsBouncer?.pid : null);
    log(`part 1b: TLS on both sides (clients sslmode=require, upstream verify-full), ${cfg.tlsRounds} rounds, modes ${cfg.tlsModes.join('/')}`);
    if (cfg.warmupSeconds > 0) for (const t of names) await runPgbench(cluster.binDir, tlsTargets[t]!, pgbenchOpts('simple', cfg.warmupSeconds));
    for (let round = 0; round < cfg.tlsRounds; round++) {
      for (const mode of cfg.tlsModes) {
        const parts: string[] = [];
        for (const [i, t] of rotate(names, round).entries()) {
          if (wasInterrupted()) return result;
          const c0 = cpuSeconds(pid(t));
          const r = await runPgbench(cluster.binDir, tlsTargets[t]!, pgbenchOpts(mode));
          const cpu = cpuSeconds(pid(t)) - c0;
          result.runs.push({ ...r, round: round + 1, mode, target: t, order: i, cpuPct: (cpu / cfg.seconds) * 100, cpuUsPerTx: r.processed > 0 ? (cpu / r.processed) * 1e6 : NaN });
          parts.push(`${t} ${describeRun(r)}`);
          if (r.error) log(`    ${t}/${mode}: pgbench reported: ${r.error.replace(/\n/g, ' | ')}`);
        }
        log(`  round ${round + 1}/${cfg.tlsRounds} ${mode.padEnd(8)} ${parts.join(', ')}`);
      }
    }
    for (const mode of cfg.tlsModes) {
      result.summary[mode] = {};
      for (const t of names) {
        const rs = result.runs.filter((r) => r.mode === mode && r.target === t);
        const tps = rs.map((r) => r.tps).filter(Number.isFinite);
        result.summary[mode][t] = {
          median: median(tps),
          min: min(tps),
          max: max(tps),
          failed: rs.reduce((a, r) => a + r.failed, 0),
          cpuUsPerTx: median(rs.map((r) => r.cpuUsPerTx).filter(Number.isFinite)),
        };
      }
    }
    await tlsProxy.service.stop();
    await tlsBouncer?.service.stop();
    return result;
  }

  const pgbenchOpts = (mode: PgbenchMode, seconds = cfg.seconds) => ({ mode, clients: cfg.clients, threads: cfg.threads, seconds });
  const pidOf = (t: TargetName) =>
    t === 'proxy' ? proxy.service.child.pid : t === 'pgbouncer' ? bouncer?.pid : t === 'bare' ? bare.service.child.pid : null;
  /** One pgbench run, with the CPU the proxy or PgBouncer used meanwhile. */
  const measured = async (t: TargetName, mode: PgbenchMode, rate?: number) => {
    const pid = pidOf(t);
    const c0 = cpuSeconds(pid);
    const r = await runPgbench(cluster.binDir, targets[t]!, { ...pgbenchOpts(mode), rate });
    const cpu = cpuSeconds(pid) - c0;
    return { ...r, cpuPct: (cpu / cfg.seconds) * 100, cpuUsPerTx: r.processed > 0 ? (cpu / r.processed) * 1e6 : NaN };
  };

  // ---- Part 1: pgbench -S ---------------------------------------------------------------------
  if (cfg.warmupSeconds > 0) {
    for (const t of targetNames) await runPgbench(cluster.binDir, targets[t]!, pgbenchOpts('simple', cfg.warmupSeconds));
    log(`warm-up: ${cfg.warmupSeconds} s per target (not counted)`);
  }
  const runs: RoundRun[] = [];
  log(`part 1: pgbench -S, ${cfg.rounds} rounds; in round r the target order rotates by r`);
  for (let round = 0; round < cfg.rounds; round++) {
    for (const mode of cfg.modes) {
      const order = rotate(targetNames, round);
      const parts: string[] = [];
      for (const [i, target] of order.entries()) {
        if (wasInterrupted()) return 130;
        const r = await measured(target, mode);
        runs.push({ ...r, round: round + 1, mode, target, order: i });
        parts.push(`${target} ${describeRun(r)}`);
        if (r.error) log(`    ${target}/${mode}: pgbench reported: ${r.error.replace(/\n/g, ' | ')}`);
      }
      log(`  round ${round + 1}/${cfg.rounds} ${mode.padEnd(8)} ${parts.join(', ')}`);
    }
  }
  log();

  // ---- Part 1c: CPU per transaction at a fixed rate ----------------------------------------------
  const fixedRuns: RoundRun[] = [];
  const middles = targetNames.filter((t) => t !== 'direct');
  if (cfg.fixedRate > 0) {
    log(`part 1c: pgbench -S -R ${cfg.fixedRate} (a fixed rate), ${cfg.fixedRateRounds} rounds; CPU per transaction of each middle`);
    for (let round = 0; round < cfg.fixedRateRounds; round++) {
      for (const mode of cfg.modes) {
        const parts: string[] = [];
        for (const [i, target] of rotate(middles, round).entries()) {
          if (wasInterrupted()) return 130;
          const r = await measured(target, mode, cfg.fixedRate);
          fixedRuns.push({ ...r, round: round + 1, mode, target, order: i });
          parts.push(`${target} ${fmt(r.cpuUsPerTx, 1)} us/tx (${fmt(r.tps)} tps)`);
          if (r.error) log(`    ${target}/${mode}: pgbench reported: ${r.error.replace(/\n/g, ' | ')}`);
        }
        log(`  round ${round + 1}/${cfg.fixedRateRounds} ${mode.padEnd(8)} ${parts.join(', ')}`);
      }
    }
    log();
  }

  // ---- Part 1b: TLS on both sides ---------------------------------------------------------------
  const tlsPart = cfg.tls ? await runTlsPart() : null;

  // ---- Part 2: scrape cost ----------------------------------------------------------------------
  const metricsUrl = `http://127.0.0.1:${proxy.metricsPort}/metrics`;
  const scrape: { off: number[]; on: number[]; cpu: { off: number[]; on: number[] }; roundRatios: number[]; stats: ScrapeStats; skipped?: string } = {
    off: [],
    on: [],
    cpu: { off: [], on: [] },
    roundRatios: [],
    stats: { scrapes: 0, errors: 0, bytes: 0, ms: [] },
  };
  let scrapeCpu: ScrapeCpuResult | null = null;
  try {
    const res = await fetch(metricsUrl);
    await res.text();
    if (!res.ok) throw new Error(`GET /metrics answered ${res.status}`);
  } catch (err) {
    scrape.skipped = (err as Error).message;
  }
  if (!scrape.skipped) {
    log(`part 2: pgbench -S -M simple through the proxy, with and without GET ${metricsUrl} every ${cfg.scrapeMs} ms (scraper: ${scraperKind()})`);
    for (let round = 0; round < cfg.scrapeRounds; round++) {
      const order: ('off' | 'on')[] = round % 2 === 0 ? ['off', 'on'] : ['on', 'off'];
      const parts: string[] = [];
      const thisRound: { off?: number; on?: number } = {};
      for (const state of order) {
        if (wasInterrupted()) return 130;
        const scraper = state === 'on' ? startScraper(metricsUrl, cfg.scrapeMs) : null;
        const r = await measured('proxy', 'simple');
        if (scraper) {
          await scraper.stop();
          scrape.stats.scrapes += scraper.stats.scrapes;
          scrape.stats.errors += scraper.stats.errors;
          scrape.stats.bytes = scraper.stats.bytes;
          scrape.stats.ms.push(...scraper.stats.ms);
        }
        if (Number.isFinite(r.tps)) {
          scrape[state].push(r.tps);
          thisRound[state] = r.tps;
        }
        if (Number.isFinite(r.cpuUsPerTx)) scrape.cpu[state].push(r.cpuUsPerTx);
        parts.push(`scrape ${state} ${describeRun(r)}`);
      }
      if (thisRound.on !== undefined && thisRound.off !== undefined) scrape.roundRatios.push(thisRound.on / thisRound.off);
      log(`  round ${round + 1}/${cfg.scrapeRounds} ${parts.join(', ')}`);
    }
    log(`part 2b: CPU of scraping with no other load, ${cfg.scrapeCpuWindows} x ${cfg.scrapeCpuSeconds} s windows with and without`);
    scrapeCpu = await measureScrapeCpu(metricsUrl, cfg.scrapeMs, proxy.service.child.pid, cfg.scrapeCpuWindows, cfg.scrapeCpuSeconds);
  } else {
    log(`part 2: SKIPPED (metrics endpoint: ${scrape.skipped})`);
  }
  log();

  // ---- Part 3: time to job id ------------------------------------------------------------------
  let jobs: JobBenchResult | null = null;
  let jobsSkipped: string | undefined;
  if (!migrated) {
    jobsSkipped = `migrate failed: ${(mig.stdout + mig.stderr).trim()}`;
    log(`part 3: SKIPPED (${jobsSkipped})`);
  } else {
    log(`part 3: time to job id, ${cfg.jobs} statements per kind in alternating blocks of ${cfg.jobBlock}, then ${cfg.jobClients} concurrent clients`);
    const perClient = Math.max(1, Math.ceil(cfg.jobs / cfg.jobClients / 2));
    try {
      jobs = await runJobBench(
        {
          proxy: { host: '127.0.0.1', port: proxy.port, user, password, database: db },
          direct: { host: '127.0.0.1', port: cluster.port, user, password, database: db },
          monitor: { host: '127.0.0.1', port: cluster.port, user, password, database: db },
          count: cfg.jobs,
          block: cfg.jobBlock,
          concurrency: cfg.jobClients,
          perClient,
          jobSql: cfg.jobSql,
        },
        log,
      );
    } catch (err) {
      jobsSkipped = (err as Error).message;
      log(`part 3: FAILED: ${jobsSkipped}`);
    }
    // Leave nothing running behind (and report if jobs never finished).
    const monitor = new pg.Client({ host: '127.0.0.1', port: cluster.port, user, password, database: db });
    await monitor.connect();
    const d = await drain(monitor, 30_000);
    if (d.timedOut) log(`  warning: after part 3, still ${d.left}`);
    if (jobs && !jobs.proxySkipped) {
      const states = await monitor.query<{ state: string; n: string }>(`SELECT state, count(*) AS n FROM pgbg.jobs GROUP BY 1 ORDER BY 1`);
      log(`  job states in the registry: ${states.rows.map((r) => `${r.state} ${r.n}`).join(', ')}`);
      jobs.registryStates = Object.fromEntries(states.rows.map((r) => [r.state, Number(r.n)]));
    }
    await monitor.end();
  }
  log();

  // ---- Part 4: added latency per query, one client ---------------------------------------------
  log(`part 4: latency of SELECT 1 with one client, ${cfg.latencyRounds} rounds x ${cfg.latencyQueries} queries per target`);
  // Plain text everywhere (the bench server has ssl = on for part 1b; node-postgres asks for none).
  const plainConfig = (t: TargetName, application_name: string): pg.ClientConfig => {
    const { sslmode: _sslmode, ...conn } = targets[t]!;
    return { ...conn, ssl: false, application_name };
  };
  const latencyTargets = targetNames.map((t) => ({ name: t, config: plainConfig(t, 'pgbg-bench latency') }));
  const latency: LatencySamples[] = await measureLatency(latencyTargets, { rounds: cfg.latencyRounds, queries: cfg.latencyQueries, warmup: 100 }, log);
  log();

  // ---- Part 5: connection cost --------------------------------------------------------------------
  const idle: IdleSessionResult[] = [];
  if (cfg.idleClients > 0) {
    log(`part 5: ${cfg.idleClients} idle sessions through each middle (opened 50 at a time)`);
    const middles: [TargetName, number | null | undefined][] = [['proxy', proxy.service.child.pid]];
    if (bouncer) middles.unshift(['pgbouncer', bouncer.pid]);
    for (const [t, pid] of middles) {
      if (wasInterrupted()) return 130;
      const r = await measureIdleSessions(t, plainConfig(t, 'pgbg-bench idle'), pid, cfg.idleClients, 50);
      idle.push(r);
      log(
        `  ${t}: ${r.opened} open (${r.failures} failed${r.firstFailure ? `: ${r.firstFailure}` : ''}), open p50 ${fmt(r.openMsP50, 2)} ms / p99 ${fmt(r.openMsP99, 2)} ms, ` +
          `RSS ${fmt(r.rssBeforeMiB, 1)} -> ${fmt(r.rssIdleMiB, 1)} MiB (${fmt(r.kibPerSession, 1)} KiB per idle session), PSS ${fmt(r.pssBeforeMiB, 1)} -> ${fmt(r.pssIdleMiB, 1)} MiB`,
      );
      await sleep(2000);
    }
    log();
  }

  // ---- Report ---------------------------------------------------------------------------------
  env.uptimeAtEnd = sh('uptime', []);
  const durationS = (nowMs() - t0) / 1000;
  const summary: Record<
    string,
    Record<string, { median: number; min: number; max: number; failed: number; errors: number; rounds: number[]; cpuPct: number; cpuUsPerTx: number }>
  > = {};
  for (const mode of cfg.modes) {
    summary[mode] = {};
    for (const t of targetNames) {
      const rs = runs.filter((r) => r.mode === mode && r.target === t);
      const tps = rs.map((r) => r.tps).filter(Number.isFinite);
      summary[mode][t] = {
        median: median(tps),
        min: min(tps),
        max: max(tps),
        failed: rs.reduce((a, r) => a + r.failed, 0),
        errors: rs.filter((r) => r.error).length,
        rounds: rs.map((r) => r.tps),
        cpuPct: median(rs.map((r) => r.cpuPct).filter(Number.isFinite)),
        cpuUsPerTx: median(rs.map((r) => r.cpuUsPerTx).filter(Number.isFinite)),
      };
    }
  }

  log('='.repeat(100));
  log(`RESULTS  (${env.postgres}; ${env.cpus} CPUs; load at start: ${env.loadavgAtStart.map((l) => l.toFixed(2)).join(', ')}; at end: ${os.loadavg().map((l) => l.toFixed(2)).join(', ')})`);
  log();
  log(`pgbench -S -c ${cfg.clients} -j ${cfg.threads} -T ${cfg.seconds}, ${cfg.rounds} rounds per target and mode, scale ${cfg.scale}; tps without initial connection time`);
  if (bouncerSkipped) log(`pgbouncer rows skipped: ${bouncerSkipped.split('\n')[0]}`);
  const rows: string[][] = [];
  for (const mode of cfg.modes) {
    for (const t of targetNames) {
      const s = summary[mode][t];
      rows.push([
        mode,
        t,
        fmt(s.median),
        fmt(s.min),
        fmt(s.max),
        String(s.failed) + (s.errors ? ` (${s.errors} runs with errors)` : ''),
        t === 'direct' ? '-' : fmt(s.cpuPct),
        t === 'direct' ? '-' : fmt(s.cpuUsPerTx, 1),
      ]);
    }
  }
  log(table(['mode', 'target', 'median tps', 'min tps', 'max tps', 'failed tx', 'middle CPU %', 'CPU us/tx'], rows));
  log('(middle CPU: the proxy or PgBouncer process, median over rounds; % of one core; us of its CPU per transaction)');
  log();
  const ratioRows = cfg.modes.map((mode) => {
    const s = summary[mode];
    const p = s.proxy?.median ?? NaN;
    const d = s.direct?.median ?? NaN;
    const b = s.pgbouncer?.median ?? NaN;
    return [mode, fmt(ratio(p, d), 3), fmt(ratio(p, b), 3), fmt(ratio(b, d), 3)];
  });
  log(table(['mode', 'proxy/direct', 'proxy/pgbouncer', 'pgbouncer/direct'], ratioRows));
  log('(ratios of medians)');
  log();
  const floorRows = cfg.modes.map((mode) => {
    const s = summary[mode];
    return [
      mode,
      fmt(ratio(s.proxy?.median ?? NaN, s.bare?.median ?? NaN), 3),
      fmt(s.bare?.cpuUsPerTx ?? NaN, 1),
      fmt(s.proxy?.cpuUsPerTx ?? NaN, 1),
      fmt(ratio(s.proxy?.cpuUsPerTx ?? NaN, s.bare?.cpuUsPerTx ?? NaN), 3),
    ];
  });
  log(table(['mode', 'proxy/bare tps', 'bare CPU us/tx', 'proxy CPU us/tx', 'proxy/bare CPU per tx'], floorRows));
  log('(the floor: a Node.js relay that parses and inspects nothing; goal: proxy CPU per transaction within 1.10x of it)');
  log();
  const fixedSummary: Record<string, Record<string, { cpuUsPerTx: number; tps: number; heldRate: boolean }>> = {};
  if (fixedRuns.length > 0) {
    const fixedRows: string[][] = [];
    for (const mode of cfg.modes) {
      fixedSummary[mode] = {};
      for (const t of middles) {
        const rs = fixedRuns.filter((r) => r.mode === mode && r.target === t);
        const tps = median(rs.map((r) => r.tps).filter(Number.isFinite));
        // pgbench -R schedules transactions at the rate; a middle that cannot keep up falls behind it
        fixedSummary[mode][t] = { cpuUsPerTx: median(rs.map((r) => r.cpuUsPerTx).filter(Number.isFinite)), tps, heldRate: tps >= cfg.fixedRate * 0.97 };
      }
      const s = fixedSummary[mode];
      fixedRows.push([
        mode,
        ...middles.map((t) => fmt(s[t].cpuUsPerTx, 1) + (s[t].heldRate ? '' : ' (behind)')),
        fmt(ratio(s.proxy?.cpuUsPerTx ?? NaN, s.bare?.cpuUsPerTx ?? NaN), 3),
        fmt(ratio(s.proxy?.cpuUsPerTx ?? NaN, s.pgbouncer?.cpuUsPerTx ?? NaN), 3),
      ]);
    }
    log(table(['mode', ...middles.map((t) => `${t} CPU us/tx`), 'proxy/bare CPU per tx', 'proxy/pgbouncer CPU per tx'], fixedRows));
    log(`(part 1c: pgbench -S -c ${cfg.clients} -R ${cfg.fixedRate}, medians over ${cfg.fixedRateRounds} rounds; every middle at the same rate, so the same wake-ups per transaction; "behind": it did not hold the rate)`);
    log();
  }
  const direct50 = latency.find((l) => l.name === 'direct');
  log(
    table(
      ['target', 'p50 ms', 'p99 ms', 'added p50 ms', 'added p99 ms'],
      latency.map((l) => [
        l.name,
        fmt(l.p50Ms, 3),
        fmt(l.p99Ms, 3),
        l.name === 'direct' || !direct50 ? '-' : fmt(l.p50Ms - direct50.p50Ms, 3),
        l.name === 'direct' || !direct50 ? '-' : fmt(l.p99Ms - direct50.p99Ms, 3),
      ]),
    ),
  );
  log('(one client, SELECT 1, simple protocol; added = minus the direct connection\'s percentile)');
  log();
  if (idle.length > 0) {
    log(
      table(
        ['middle', 'idle sessions', 'failed', 'open p50 ms', 'open p99 ms', 'RSS before MiB', 'RSS idle MiB', 'KiB/session', 'PSS before MiB', 'PSS idle MiB'],
        idle.map((r) => [r.name, String(r.opened), String(r.failures), fmt(r.openMsP50, 2), fmt(r.openMsP99, 2), fmt(r.rssBeforeMiB, 1), fmt(r.rssIdleMiB, 1), fmt(r.kibPerSession, 1), fmt(r.pssBeforeMiB, 1), fmt(r.pssIdleMiB, 1)]),
      ),
    );
    log('(time to open = TCP connect + startup + SCRAM authentication until ReadyForQuery; RSS and PSS of the process and its children: RSS counts pages shared between processes, such as the Node.js binary under workers > 1, in each; PSS divides them among their sharers)');
    log();
  }

  if (tlsPart && !tlsPart.skipped) {
    log(`TLS on both sides: pgbench -S -c ${cfg.clients} -j ${cfg.threads} -T ${cfg.seconds}, sslmode=require to each target, upstream verify-full; ${cfg.tlsRounds} rounds`);
    const trows: string[][] = [];
    for (const mode of cfg.tlsModes) {
      for (const [t, s] of Object.entries(tlsPart.summary[mode] ?? {})) {
        trows.push([mode, t, fmt(s.median), fmt(s.min), fmt(s.max), String(s.failed), t === 'direct-tls' ? '-' : fmt(s.cpuUsPerTx, 1)]);
      }
    }
    log(table(['mode', 'target', 'median tps', 'min tps', 'max tps', 'failed tx', 'CPU us/tx'], trows));
    const rrows = cfg.tlsModes.map((mode) => {
      const t = tlsPart.summary[mode] ?? {};
      const plain = summary[mode];
      const tlsRatio = ratio(t['proxy-tls']?.median ?? NaN, t['pgbouncer-tls']?.median ?? NaN);
      const plainRatio = plain ? ratio(plain.proxy?.median ?? NaN, plain.pgbouncer?.median ?? NaN) : NaN;
      tlsPart.ratios = { ...tlsPart.ratios, [mode]: { proxyOverPgbouncerTls: tlsRatio, proxyOverPgbouncerPlain: plainRatio, proxyOverDirectTls: ratio(t['proxy-tls']?.median ?? NaN, t['direct-tls']?.median ?? NaN) } };
      return [mode, fmt(tlsRatio, 3), plain ? fmt(plainRatio, 3) : 'n/a', fmt(ratio(t['proxy-tls']?.median ?? NaN, t['direct-tls']?.median ?? NaN), 3)];
    });
    log(table(['mode', 'proxy/pgbouncer, TLS', 'proxy/pgbouncer, plain (part 1)', 'proxy/direct, TLS'], rrows));
    log();
  }

  let scrapeSummary: Record<string, unknown> = { skipped: scrape.skipped };
  if (!scrape.skipped) {
    const off = median(scrape.off);
    const on = median(scrape.on);
    scrapeSummary = {
      tpsWithout: scrape.off,
      tpsWith: scrape.on,
      medianWithout: off,
      medianWith: on,
      ratio: ratio(on, off),
      scraper: scraperKind(),
      cpu: scrapeCpu,
      roundRatios: scrape.roundRatios,
      medianRoundRatio: median(scrape.roundRatios),
      scrapes: scrape.stats.scrapes,
      scrapeErrors: scrape.stats.errors,
      scrapeBytes: scrape.stats.bytes,
      scrapeMsP50: median(scrape.stats.ms),
      scrapeMsP99: percentile(scrape.stats.ms, 99),
      proxyCpuUsPerTxWithout: scrape.cpu.off,
      proxyCpuUsPerTxWith: scrape.cpu.on,
    };
    log(`/metrics scrape cost: pgbench -S -M simple through the proxy, ${cfg.scrapeRounds} alternating rounds`);
    log(
      table(
        ['scraping', 'median tps', 'min tps', 'max tps', 'proxy CPU us/tx'],
        [
          [`off`, fmt(off), fmt(min(scrape.off)), fmt(max(scrape.off)), fmt(median(scrape.cpu.off), 1)],
          [`every ${cfg.scrapeMs} ms`, fmt(on), fmt(min(scrape.on)), fmt(max(scrape.on)), fmt(median(scrape.cpu.on), 1)],
        ],
      ),
    );
    log(
      `ratio with/without: ${fmt(ratio(on, off), 3)} (median of the per-round ratios ${fmt(median(scrape.roundRatios), 3)}); ${scrape.stats.scrapes} scrapes (${scrape.stats.errors} errors), ` +
        `${fmt(scrape.stats.bytes / 1024, 1)} KiB each, scrape time p50 ${fmt(median(scrape.stats.ms), 1)} ms / p99 ${fmt(percentile(scrape.stats.ms, 99), 1)} ms`,
    );
    if (scrapeCpu) {
      log(
        `CPU of scraping every ${cfg.scrapeMs} ms, no other load (${scrapeCpu.windows} x ${scrapeCpu.windowSeconds} s each way, ${scrapeCpu.scrapes} scrapes): ` +
          `machine ${fmt(scrapeCpu.machineMsPerSecondWithout, 1)} -> ${fmt(scrapeCpu.machineMsPerSecondWith, 1)} ms CPU per second = ` +
          `${fmt(scrapeCpu.machineShare * 100, 2)}% of the machine; proxy ${fmt(scrapeCpu.proxyMsPerScrape, 2)} ms CPU per scrape`,
      );
    }
    log();
  }

  if (jobs) {
    log(`time to job id (${cfg.jobs} sequential statements per kind, alternating blocks of ${cfg.jobBlock}; workers drained between blocks)`);
    log(`  proxy:  ${jobs.proxyStatement}`);
    log(`  direct: ${jobs.directStatement}`);
    if (jobs.proxySkipped) log(`  proxy half SKIPPED: ${jobs.proxySkipped}`);
    const jrows: string[][] = [];
    for (const kind of ['proxy', 'direct'] as const) {
      const s = jobs.sequential[kind];
      const c = jobs.concurrent[kind];
      if (!s) continue;
      jrows.push([
        kind === 'proxy' ? 'proxy, hinted' : 'direct, raw launch',
        String(s.n),
        fmt(s.p50Ms, 1),
        fmt(s.p99Ms, 1),
        fmt(s.meanMs, 1),
        fmt(s.sequentialPerSecond, 1),
        c ? fmt(c.perSecond, 1) : 'n/a',
        c ? fmt(c.donePerSecond, 1) : 'n/a',
        String(s.errors + (c?.errors ?? 0)),
      ]);
    }
    log(table(['kind', 'n', 'p50 ms', 'p99 ms', 'mean ms', 'jobs/s seq', `ids/s ${cfg.jobClients} clients`, `done/s ${cfg.jobClients} clients`, 'errors'], jrows));
    for (const kind of ['proxy', 'direct'] as const) {
      const e = jobs.sequential[kind]?.firstError ?? jobs.concurrent[kind]?.firstError;
      if (e) log(`  first ${kind} error: ${e}`);
    }
    if (jobs.sequential.proxy && jobs.sequential.direct) {
      log(
        `  proxy/direct: p50 ${fmt(ratio(jobs.sequential.proxy.p50Ms, jobs.sequential.direct.p50Ms), 2)}x, ` +
          `p50 difference ${fmt(jobs.sequential.proxy.p50Ms - jobs.sequential.direct.p50Ms, 1)} ms; ` +
          `concurrent rate ${fmt(ratio(jobs.concurrent.proxy?.perSecond ?? NaN, jobs.concurrent.direct?.perSecond ?? NaN), 2)}x (ids), ` +
          `${fmt(ratio(jobs.concurrent.proxy?.donePerSecond ?? NaN, jobs.concurrent.direct?.donePerSecond ?? NaN), 2)}x (jobs done, drain included)`,
      );
    }
    log(`  longest wait for workers to finish between blocks: ${fmt(jobs.maxDrainMs)} ms${jobs.drainTimeouts ? ` (${jobs.drainTimeouts} timeouts)` : ''}`);
    const states = jobs.registryStates;
    if (states) log(`  final job states in pgbg.jobs: ${Object.entries(states).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    log();
  } else if (jobsSkipped) {
    log(`time to job id: SKIPPED (${jobsSkipped.split('\n')[0]})`);
    log();
  }
  if (proxy.service.exited()) log(`WARNING: the proxy process exited during the run (${proxy.service.exitReason()}); see ${proxyLog}`);
  log(`total run time: ${fmt(durationS, 1)} s; load at end: ${env.uptimeAtEnd}`);

  const output = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    durationS,
    environment: env,
    proxyExit: proxy.service.exitReason(),
    config: cfg,
    pgbench: { targets: targetNames, pgbouncerSkipped: bouncerSkipped, summary, runs },
    fixedRate: cfg.fixedRate > 0 ? { rate: cfg.fixedRate, summary: fixedSummary, runs: fixedRuns } : { skipped: 'BENCH_FIXED_RATE=0' },
    tls: tlsPart ?? { skipped: 'BENCH_TLS=0' },
    scrape: scrapeSummary,
    timeToJobId: jobs ?? { skipped: jobsSkipped },
    latency,
    idleSessions: idle,
  };
  await fs.mkdir(path.dirname(cfg.out), { recursive: true });
  await fs.writeFile(cfg.out, JSON.stringify(output, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
  log(`results written to ${path.relative(process.cwd(), cfg.out) || cfg.out}`);
  const proxyErrors = tail(proxyLog, 8).trim();
  if (proxyErrors && !proxyErrors.startsWith('(no log')) log(`proxy log ${proxyLog} (last lines; level warn and above):\n${proxyErrors}`);
  return 0;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(`bench: ${(err as Error).stack ?? err}`);
  code = 1;
} finally {
  await cleanupAll();
}
process.exit(code);
