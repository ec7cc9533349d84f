/**
 * `workers: 2` (issue 14, acceptance 2): the real CLI (`node bin/pgbg-proxy.js start --workers 2`)
 * as a supervisor with two relay processes on one listening address. Sessions, a job
 * submission, cancel from a connection that lands on the other worker, /metrics aggregated over
 * both, SHOW CLIENTS of both, RELOAD and SIGHUP reaching both (a bad file changing nothing),
 * PAUSE shared, a killed worker replaced without touching the other's clients, SIGTERM draining.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { eventually, freePort, getCluster } from '../harness/index.js';
import { ensureBuilt } from '../support/build-dist.js';
import { childrenOf } from '../support/child-pids.js';
import { registryDatabase, submit, waitJob } from '../support/jobs.js';
import { int32 } from '../support/wire.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const cluster = getCluster();
const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-workers-test-'));
const running = new Set<ChildProcess>();

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

interface Supervised {
  child: ChildProcess;
  port: number;
  metricsPort: number;
  configPath: string;
  lines: LogLine[];
  exited: Promise<{ code: number | null; at: number }>;
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
}

const BASE = 'log:\n  level: debug\nshutdown:\n  grace: 5s\nmetricsSnapshotTtl: 0\n';
const REJECT_RULE = 'rules:\n  - name: no-workers-marker\n    match:\n      pattern: workers_forbidden_marker\n    action: reject\n';
const BAD = 'limits:\n  startupTimeout: someday\n';

/** `meanwhile` runs once the supervisor is spawned, before all its workers listen. */
async function startSupervised(configText: string, meanwhile?: (sup: Supervised) => Promise<void>): Promise<Supervised> {
  const configPath = path.join(dir, `proxy-${running.size}.yaml`);
  writeFileSync(configPath, configText);
  const port = await freePort();
  const metricsPort = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGBG_') && !k.startsWith('PG')));
  const child = spawn(
    process.execPath,
    [
      path.join(root, 'bin', 'pgbg-proxy.js'),
      'start',
      '--workers',
      '2',
      '--config',
      configPath,
      '--listen',
      `127.0.0.1:${port}`,
      '--metrics-listen',
      `127.0.0.1:${metricsPort}`,
      '--upstream',
      `${cluster.host}:${cluster.port}`,
    ],
    { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  running.add(child);
  const lines: LogLine[] = [];
  let partial = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    const parts = partial.split('\n');
    partial = parts.pop()!;
    for (const line of parts) {
      try {
        if (line) lines.push(JSON.parse(line));
      } catch {
        /* not JSON: ignored here */
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<{ code: number | null; at: number }>((resolve) =>
    child.on('exit', (code) => {
      running.delete(child);
      resolve({ code, at: Date.now() });
    }),
  );
  const sup: Supervised = {
    child,
    port,
    metricsPort,
    configPath,
    lines,
    exited,
    async waitForLog(pred, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = lines.find(pred);
        if (found) return found;
        if (Date.now() > deadline || child.exitCode !== null) {
          throw new Error(`log line not seen within ${timeoutMs} ms; stderr:\n${stderr}\nlast lines:\n${lines.slice(-20).map((l) => JSON.stringify(l)).join('\n')}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
  await meanwhile?.(sup);
  await sup.waitForLog((l) => l.msg === 'all workers listening', 60_000);
  return sup;
}


function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function metricsText(sup: Supervised): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${sup.metricsPort}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

function metricValue(text: string, name: string): number[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .map((l) => Number(l.slice(l.lastIndexOf(' ') + 1)));
}

/** A raw CancelRequest on a new connection (which the shared address hands to either worker). */
function sendCancel(port: number, pid: number, key: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', reject);
    s.on('close', () => resolve());
    s.on('connect', () => s.write(Buffer.concat([int32(16), int32(80877102), int32(pid), int32(key)])));
  });
}

let db: string;
let sup: Supervised;
let admin: pg.Client;
const clients: pg.Client[] = [];

async function clientOf(app: string, user = 'alice'): Promise<pg.Client> {
  const c = new pg.Client({ ...cluster.clientConfig({ user, database: db }), port: sup.port, application_name: app });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

async function consoleClient(): Promise<pg.Client> {
  const c = new pg.Client({ ...cluster.clientConfig({ user: 'postgres', database: 'pgbg' }), port: sup.port, application_name: 'workers-console' });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/** SHOW CLIENTS rows of kind client, by application_name. */
async function clientRows(): Promise<Map<string, { worker: number; id: string }>> {
  const r = await admin.query('SHOW CLIENTS');
  return new Map(r.rows.filter((row) => row.kind === 'client').map((row) => [row.application_name as string, { worker: row.worker as number, id: row.id as string }]));
}

async function forbidden(c: pg.Client): Promise<string> {
  return c.query("SELECT 'workers_forbidden_marker' AS m").then(
    () => 'allowed',
    (e: { code?: string }) => e.code ?? 'error',
  );
}

beforeAll(async () => {
  await ensureBuilt();
  db = await registryDatabase(cluster);
  const setup = await cluster.connect({ database: db });
  await setup.query('CREATE TABLE wk (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO wk VALUES (1, 0); ALTER TABLE wk OWNER TO alice');
  await setup.end();
  sup = await startSupervised(BASE);
  admin = await consoleClient();
  for (let i = 0; i < 4; i++) clients.push(await clientOf(`wk-${i}`));
}, 240_000);

afterAll(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
  await admin?.end().catch(() => undefined);
  for (const child of running) {
    for (const pid of childrenOf(child.pid!)) process.kill(pid, 'SIGKILL');
    child.kill('SIGKILL');
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('workers: 2', () => {
  it('serves sessions from two worker processes, both children of the supervisor, on one port', async () => {
    const workers = childrenOf(sup.child.pid!);
    expect(workers).toHaveLength(2);
    // each worker runs with the young generation capped (src/supervisor/primary.ts workerExecArgv)
    for (const w of workers) expect(readFileSync(`/proc/${w}/cmdline`, 'utf8').split('\0')).toContain('--max-semi-space-size=4');
    const rows = await clientRows();
    for (let i = 0; i < 4; i++) expect(rows.get(`wk-${i}`), `wk-${i} in SHOW CLIENTS`).toBeDefined();
    const serving = new Set([...rows.values()].map((r) => r.worker));
    // SHOW CLIENTS (asked of whichever worker the console landed on) lists both workers' sessions
    expect(serving.size).toBe(2);
    expect([...serving].sort()).toEqual([...workers].sort());
    for (const c of clients) expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });

  it('aggregates /metrics over the supervisor and both workers, names unchanged', async () => {
    const rows = await clientRows();
    const text = await metricsText(sup);
    // one series per name, summed: the gauge counts every worker's sessions
    expect(metricValue(text, 'pgbg_client_connections')).toEqual([rows.size]);
    expect(rows.size).toBeGreaterThanOrEqual(4);
    expect(metricValue(text, 'pgbg_build_info')).toEqual([1]);
    expect(metricValue(text, 'pgbg_launching_paused')).toEqual([0]);
    // process metrics: CPU summed over the processes, the start time the earliest (once)
    expect(metricValue(text, 'pgbg_proxy_process_start_time_seconds')).toHaveLength(1);
    expect(metricValue(text, 'pgbg_proxy_process_cpu_seconds_total')[0]).toBeGreaterThan(0);
    expect(text.match(/^# TYPE pgbg_statements_total counter$/gm)).toHaveLength(1);
    // SHOW STATS (in whichever worker the console landed on) shows the same sums
    const stats = await admin.query('SHOW STATS');
    expect(stats.rows.find((row) => row.stat === 'pgbg_client_connections')?.value).toBe(rows.size);
    const forwarded = metricValue(text, 'pgbg_statements_total{action="forwarded"}')[0] ?? -1;
    for (const c of clients) await c.query('SELECT 2');
    const after = await metricsText(sup);
    expect(metricValue(after, 'pgbg_statements_total{action="forwarded"}')[0]).toBeGreaterThanOrEqual(forwarded + 4);
  });

  it('submits a hinted job from sessions of both workers; each gets a job id and succeeds', async () => {
    const observer = await cluster.connect({ database: db });
    try {
      const ids: string[] = [];
      for (const c of clients.slice(0, 2)) ids.push(await submit(c, '/*+ background */ UPDATE wk SET v = v + 1 WHERE id = 1'));
      expect(new Set(ids).size).toBe(2);
      for (const id of ids) expect((await waitJob(observer, id)).state).toBe('succeeded');
      expect((await observer.query('SELECT v FROM wk WHERE id = 1')).rows[0].v).toBe(2);
    } finally {
      await observer.end();
    }
  });

  it('cancels a query whichever worker the CancelRequest lands on', async () => {
    const c = clients[0]!;
    const conn = c as unknown as { processID: number; secretKey: number };
    for (let round = 0; round < 4; round++) {
      const started = Date.now();
      const query = c.query('SELECT pg_sleep(30) AS workers_cancel_marker').then(
        () => 'finished',
        (e: { code?: string }) => e.code ?? 'error',
      );
      await eventually(async () => (await cluster.query("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%workers_cancel_marker%' AND pid <> pg_backend_pid()")).rowCount === 1);
      await sendCancel(sup.port, conn.processID, conn.secretKey);
      expect(await query).toBe('57014');
      expect(Date.now() - started).toBeLessThan(10_000);
    }
    // Consecutive connections alternate between the workers: some of the four CancelRequests
    // landed on the worker that does not serve the session, and went through the supervisor.
    await eventually(async () => sup.lines.some((l) => l.msg === 'cancel request relayed from another worker: matched here'));
    expect(sup.lines.some((l) => l.msg === 'cancel request not for this worker: handed to the supervisor')).toBe(true);
    // a wrong key cancels nothing, on any worker
    const query = c.query('SELECT pg_sleep(1.5) AS workers_cancel_marker, 1 AS done');
    await eventually(async () => (await cluster.query("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%workers_cancel_marker%' AND pid <> pg_backend_pid()")).rowCount === 1);
    await sendCancel(sup.port, conn.processID, conn.secretKey ^ 1);
    await sendCancel(sup.port, conn.processID, conn.secretKey ^ 1);
    expect((await query).rows[0].done).toBe(1);
  });

  it('RELOAD from the console applies in every worker; a bad file changes nothing anywhere', async () => {
    for (const c of clients) expect(await forbidden(c)).toBe('allowed');
    writeFileSync(sup.configPath, BASE + REJECT_RULE);
    const r = await admin.query('RELOAD');
    expect(r.rows[0].result).toMatch(/^OK: configuration reloaded \(1 rules\) in 2 workers/);
    for (const c of clients) expect(await forbidden(c)).toBe('42501');

    writeFileSync(sup.configPath, BASE + BAD);
    const refused = await admin.query('RELOAD').then(
      () => null,
      (e: { code?: string; detail?: string }) => e,
    );
    expect(refused?.code).toBe('F0000');
    expect(refused?.detail).toMatch(/limits\.startupTimeout/);
    for (const c of clients) expect(await forbidden(c)).toBe('42501');
    const rules = await admin.query('SHOW RULES');
    expect(rules.rows.map((row) => row.name)).toEqual(['no-workers-marker']);
  });

  it('SIGHUP to the supervisor applies a good file in every worker and refuses a bad one', async () => {
    const reloads = () => sup.lines.filter((l) => l.msg === 'configuration reloaded' && l.supervisor === true).length;
    const before = reloads();
    writeFileSync(sup.configPath, BASE);
    sup.child.kill('SIGHUP');
    await eventually(async () => reloads() === before + 1);
    await eventually(async () => {
      for (const c of clients) if ((await forbidden(c)) !== 'allowed') return false;
      return true;
    }, 5000);

    writeFileSync(sup.configPath, BASE + REJECT_RULE + BAD);
    const refusedBefore = sup.lines.filter((l) => /reload refused/.test(l.msg)).length;
    sup.child.kill('SIGHUP');
    await eventually(async () => sup.lines.filter((l) => /reload refused/.test(l.msg)).length === refusedBefore + 1);
    await new Promise((r) => setTimeout(r, 300));
    for (const c of clients) expect(await forbidden(c)).toBe('allowed');
    expect(reloads()).toBe(before + 1);
    writeFileSync(sup.configPath, BASE);
  });

  it('PAUSE in one worker holds in every worker and shows in /metrics', async () => {
    const other = await consoleClient();
    try {
      expect((await admin.query('PAUSE')).rows[0].result).toMatch(/paused/);
      expect(metricValue(await metricsText(sup), 'pgbg_launching_paused')).toEqual([1]);
      // the next console connection lands on the other worker; both say paused
      for (const c of [admin, other]) {
        const cfg = await c.query('SHOW CONFIG');
        expect(cfg.rows.find((row) => row.key === 'paused').value).toBe('true');
      }
      expect((await other.query('RESUME')).rows[0].result).toMatch(/resumed/);
      for (const c of [admin, other]) {
        const cfg = await c.query('SHOW CONFIG');
        expect(cfg.rows.find((row) => row.key === 'paused').value).toBe('false');
      }
      expect(metricValue(await metricsText(sup), 'pgbg_launching_paused')).toEqual([0]);
    } finally {
      await other.end();
    }
  });

  it('replaces a killed worker; only the clients it served lose their connection', async () => {
    const rows = await clientRows();
    const victimPid = rows.get('wk-0')!.worker;
    const lost = clients.filter((_, i) => rows.get(`wk-${i}`)!.worker === victimPid);
    const kept = clients.filter((_, i) => rows.get(`wk-${i}`)!.worker !== victimPid);
    expect(lost.length).toBeGreaterThan(0);
    expect(kept.length).toBeGreaterThan(0);
    const ended = lost.map((c) => new Promise<void>((resolve) => c.once('end', () => resolve())));
    process.kill(victimPid, 'SIGKILL');
    await Promise.all(ended);
    for (const c of kept) expect((await c.query('SELECT 3 AS three')).rows).toEqual([{ three: 3 }]);
    await sup.waitForLog((l) => l.msg === 'worker exited; starting a replacement' && l.signal === 'SIGKILL');
    await eventually(async () => childrenOf(sup.child.pid!).length === 2 && !childrenOf(sup.child.pid!).includes(victimPid), 30_000, 100);
    await eventually(async () => sup.lines.filter((l) => l.msg === 'worker listening').length === 3, 30_000, 100);
    // new sessions are served by both workers again, the replacement among them
    const fresh: pg.Client[] = [];
    for (let i = 0; i < 4; i++) fresh.push(await clientOf(`fresh-${i}`));
    const now = await clientRows();
    const serving = new Set([...now.entries()].filter(([app]) => app.startsWith('fresh-')).map(([, r]) => r.worker));
    expect([...serving].sort()).toEqual(childrenOf(sup.child.pid!).sort());
    for (const c of fresh) expect((await c.query('SELECT 4 AS four')).rows).toEqual([{ four: 4 }]);
    for (const c of lost) clients.splice(clients.indexOf(c), 1);
    clients.push(...fresh);
  });

  it('SIGTERM to the supervisor drains every worker, then exits 0', async () => {
    const workers = childrenOf(sup.child.pid!);
    expect(workers).toHaveLength(2);
    const rows = await clientRows();
    // one statement running on each worker
    const busy = workers.map((w) => clients.find((c) => rows.get((c as unknown as { connectionParameters: { application_name: string } }).connectionParameters.application_name)?.worker === w)!);
    expect(busy.every(Boolean)).toBe(true);
    const results = busy.map((c) => c.query('SELECT pg_sleep(1.5) AS workers_drain, 7 AS done').then((r) => ({ rows: r.rows, at: Date.now() })));
    await eventually(async () => (await cluster.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%workers_drain%' AND pid <> pg_backend_pid()")).rows[0].n === 2);
    const signalled = Date.now();
    sup.child.kill('SIGTERM');
    const done = await Promise.all(results);
    for (const r of done) expect(r.rows).toEqual([{ workers_drain: '', done: 7 }]);
    const exit = await sup.exited;
    expect(exit.code).toBe(0);
    // it waited for both statements, and did not sit out the 5 s grace once they were done
    for (const r of done) expect(exit.at).toBeGreaterThanOrEqual(r.at);
    expect(exit.at - signalled).toBeLessThan(4500);
    for (const w of workers) expect(alive(w)).toBe(false);
    expect(sup.lines.filter((l) => l.msg === 'worker draining sessions')).toHaveLength(2);
    expect(sup.lines.some((l) => l.msg === 'stopped' && l.supervisor === true)).toBe(true);
    await admin.end().catch(() => undefined);
  });
});

describe('workers: 2, the whole proxy\'s limits and signals', () => {
  it('limits.maxClients is the whole proxy\'s: a session over it is refused whichever worker takes it, and a closed one frees its slot', async () => {
    const limited = await startSupervised(`${BASE}limits:\n  maxClients: 3\n`);
    const opened: pg.Client[] = [];
    const open = async (app: string) => {
      const c = new pg.Client({ ...cluster.clientConfig({ user: 'alice', database: db }), port: limited.port, application_name: app });
      c.on('error', () => undefined);
      await c.connect();
      opened.push(c);
      return c;
    };
    try {
      for (let i = 0; i < 3; i++) await open(`limit-${i}`);
      // Per worker, 3 would admit up to 6; every further session is refused, on either worker.
      for (let i = 0; i < 4; i++) {
        const err = await open(`over-${i}`).then(
          () => null,
          (e: { code?: string; message: string }) => e,
        );
        expect(err?.code).toBe('53300');
        expect(err?.message).toMatch(/limits\.maxClients = 3/);
      }
      // The workers' log lines reach the supervisor's stdout a moment after the refusals.
      const refused = () => limited.lines.filter((l) => l.msg === 'client refused: max clients reached');
      await eventually(async () => refused().length >= 4, 5000);
      const refusals = refused();
      expect(refusals).toHaveLength(4);
      // both workers refused (round robin hands consecutive connections to both)
      expect(new Set(refusals.map((l) => l.worker)).size).toBe(2);
      await opened.shift()!.end();
      const again = await eventually(async () => open('limit-again').catch(() => null), 5000);
      expect((await again!.query('SELECT 5 AS five')).rows).toEqual([{ five: 5 }]);
    } finally {
      for (const c of opened) await c.end().catch(() => undefined);
      limited.child.kill('SIGTERM');
      await limited.exited;
    }
  });

  it('a SIGHUP while the workers are still starting reloads, and does not end the supervisor', async () => {
    // The port accepts once the first worker listens; the second is held (SIGSTOP) before it
    // can, so the SIGHUP surely comes while the supervisor still waits for it.
    let reloadedBeforeAll = false;
    const early = await startSupervised(BASE, async (s) => {
      // Stopped between fork and exec, the worker would hold the supervisor itself (its spawn
      // waits for the exec): wait until the second worker runs its own command line (the
      // supervisor adds a V8 flag to the workers') before stopping it.
      const own = readFileSync(`/proc/${s.child.pid}/cmdline`, 'utf8');
      const kids = await eventually(async () => {
        const k = childrenOf(s.child.pid!);
        if (k.length !== 2) return undefined;
        try {
          return readFileSync(`/proc/${k[1]}/cmdline`, 'utf8') !== own ? k : undefined;
        } catch {
          return undefined;
        }
      }, 20_000, 5);
      process.kill(kids![1], 'SIGSTOP');
      try {
        await s.waitForLog((l) => l.msg === 'worker listening', 60_000);
        s.child.kill('SIGHUP');
        await s.waitForLog((l) => l.msg === 'configuration reloaded' && l.supervisor === true);
        reloadedBeforeAll = !s.lines.some((l) => l.msg === 'all workers listening');
      } finally {
        process.kill(kids![1], 'SIGCONT');
      }
    });
    try {
      expect(reloadedBeforeAll).toBe(true);
      expect(early.child.exitCode).toBeNull();
      expect(childrenOf(early.child.pid!)).toHaveLength(2);
      const c = new pg.Client({ ...cluster.clientConfig({ user: 'alice', database: db }), port: early.port });
      await c.connect();
      expect((await c.query('SELECT 6 AS six')).rows).toEqual([{ six: 6 }]);
      await c.end();
    } finally {
      early.child.kill('SIGTERM');
      expect((await early.exited).code).toBe(0);
    }
  });

  it('listenSocketDir: both workers serve the one socket file, which the supervisor removes when it stops', async () => {
    const socketDir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-wsock-'));
    try {
      const sock = await startSupervised(`${BASE}listenSocketDir: ${socketDir}\n`);
      const file = path.join(socketDir, `.s.PGSQL.${sock.port}`);
      try {
        expect(lstatSync(file).isSocket()).toBe(true);
        expect(lstatSync(file).mode & 0o777).toBe(0o777);
        const held: pg.Client[] = [];
        let pids = new Set<number>();
        try {
          for (let i = 0; i < 6; i++) {
            const c = new pg.Client({ ...cluster.clientConfig({ user: 'alice', database: db }), host: socketDir, port: sock.port, application_name: `wsock-${i}` });
            c.on('error', () => undefined);
            await c.connect();
            held.push(c);
            expect((await c.query('SELECT 8 AS eight')).rows).toEqual([{ eight: 8 }]);
          }
          const console = new pg.Client({ ...cluster.clientConfig({ user: 'postgres', database: 'pgbg' }), host: socketDir, port: sock.port });
          console.on('error', () => undefined);
          await console.connect();
          const rows = (await console.query('SHOW CLIENTS')).rows.filter((r) => String(r.application_name).startsWith('wsock-'));
          await console.end();
          expect(rows).toHaveLength(6);
          pids = new Set(rows.map((r) => r.worker as number));
        } finally {
          for (const c of held) await c.end().catch(() => undefined);
        }
        // round robin: sessions over the socket reached both workers
        expect([...pids].sort()).toEqual(childrenOf(sock.child.pid!).sort());
      } finally {
        sock.child.kill('SIGTERM');
        expect((await sock.exited).code).toBe(0);
      }
      expect(existsSync(file)).toBe(false);
    } finally {
      rmSync(socketDir, { recursive: true, force: true });
    }
  });
});
