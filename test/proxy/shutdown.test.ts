/**
 * The real CLI process (`node bin/pgbg-proxy.js start`): graceful shutdown on SIGTERM, reload
 * on SIGHUP, and what its JSON logs hold. dist/ is rebuilt from src/ first (under a lock shared
 * with cli.test.ts).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { eventually, freePort, getCluster } from '../harness/index.js';
import { ensureBuilt } from '../support/build-dist.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const cluster = getCluster();


interface LogLine {
  level: number;
  msg: string;
  session?: string;
  [key: string]: unknown;
}

interface RunningCli {
  child: ChildProcess;
  port: number;
  configPath: string;
  /** Raw stdout lines (every one must be JSON). */
  rawLines: string[];
  lines: LogLine[];
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-shutdown-test-'));
const running = new Set<ChildProcess>();
/** Every log line of every proxy process this file started. */
const allLines: string[] = [];
let configCounter = 0;

async function startCli(configText: string): Promise<RunningCli> {
  const configPath = path.join(dir, `proxy-${configCounter++}.yaml`);
  writeFileSync(configPath, configText);
  const port = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGBG_') && !k.startsWith('PG')));
  const child = spawn(
    process.execPath,
    [path.join(root, 'bin', 'pgbg-proxy.js'), 'start', '--config', configPath, '--listen', `127.0.0.1:${port}`, '--upstream', `${cluster.host}:${cluster.port}`],
    { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  running.add(child);
  const rawLines: string[] = [];
  const lines: LogLine[] = [];
  let partial = '';
  let stderr = '';
  const waiters = new Set<() => void>();
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    const parts = partial.split('\n');
    partial = parts.pop()!;
    for (const line of parts) {
      if (!line) continue;
      rawLines.push(line);
      allLines.push(line);
      try {
        lines.push(JSON.parse(line));
      } catch {
        /* counted by the JSON check */
      }
    }
    for (const w of waiters) w();
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.on('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal, at: Date.now() });
    }),
  );
  const cli: RunningCli = {
    child,
    port,
    configPath,
    rawLines,
    lines,
    stderr: () => stderr,
    exited,
    async waitForLog(pred, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = lines.find(pred);
        if (found) return found;
        if (Date.now() > deadline || child.exitCode !== null) {
          throw new Error(`log line not seen within ${timeoutMs} ms; stdout:\n${rawLines.join('\n')}\nstderr:\n${stderr}`);
        }
        await new Promise<void>((r) => {
          const w = () => {
            waiters.delete(w);
            r();
          };
          waiters.add(w);
          setTimeout(w, 100);
        });
      }
    },
  };
  await cli.waitForLog((l) => l.msg === 'listening', 20_000);
  return cli;
}

function clientOf(cli: RunningCli, user = 'alice'): pg.Client {
  const c = new pg.Client({ ...cluster.clientConfig({ user }), port: cli.port });
  c.on('error', () => undefined);
  return c;
}

async function activeBackend(marker: string): Promise<number> {
  return (await eventually<number | undefined>(async () => {
    const r = await cluster.query("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()", [marker]);
    return r.rows[0]?.pid as number | undefined;
  }))!;
}

function refused(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    s.on('connect', () => {
      s.destroy();
      resolve('connected');
    });
  });
}

beforeAll(async () => {
  await ensureBuilt();
}, 180_000);

afterEach(() => {
  for (const child of running) child.kill('SIGKILL');
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('SIGTERM', () => {
  it('lets a running statement finish, refuses new connections, then exits 0', async () => {
    const cli = await startCli('shutdown:\n  grace: 5s\nlog:\n  level: info\n');
    const client = clientOf(cli);
    await client.connect();
    const marker = 'shutdown_drain_marker';
    const started = Date.now();
    const result = client.query(`SELECT pg_sleep(1.5) AS ${marker}, 'done' AS outcome`).then(
      (r) => ({ r, at: Date.now() }),
      (e) => ({ e, at: Date.now() }),
    );
    const closed = new Promise<number>((resolve) => client.on('end', () => resolve(Date.now())));
    await activeBackend(marker);
    const signalledAt = Date.now();
    cli.child.kill('SIGTERM');
    await cli.waitForLog((l) => /shutting down/.test(l.msg));
    // A new client is not served from now on, and the port stops listening promptly.
    const late = await clientOf(cli, 'bob').connect().then(
      () => 'served',
      (e: Error & { code?: string }) => e.code ?? e.message,
    );
    expect(late).not.toBe('served');
    await eventually(async () => (await refused(cli.port)) === 'ECONNREFUSED', 1000, 20);
    expect(Date.now() - signalledAt).toBeLessThan(1000);
    const outcome = await result;
    expect('e' in outcome ? (outcome as { e: Error }).e.message : null).toBeNull();
    expect((outcome as { r: pg.QueryResult }).r.rows).toEqual([{ [marker]: '', outcome: 'done' }]);
    expect(outcome.at - started).toBeGreaterThanOrEqual(1400);
    const exit = await cli.exited;
    const clientClosedAt = await closed;
    console.log(`[shutdown] drained: statement done ${outcome.at - signalledAt} ms after SIGTERM, exit after ${exit.at - signalledAt} ms`);
    expect(exit.code).toBe(0);
    expect(exit.at).toBeGreaterThanOrEqual(outcome.at);
    // it did not sit out the whole grace once the session was idle
    expect(exit.at - signalledAt).toBeLessThan(4000);
    expect(clientClosedAt).toBeGreaterThanOrEqual(outcome.at);
    expect(cli.lines.some((l) => l.msg === 'stopped')).toBe(true);
  });

  it('ends a statement that outlasts the grace with 57P01, ends its backend, and exits', async () => {
    const cli = await startCli('shutdown:\n  grace: 1s\n');
    const client = clientOf(cli);
    await client.connect();
    const marker = 'shutdown_grace_marker';
    const outcome = client.query(`SELECT pg_sleep(10) AS ${marker}`).then(
      () => null,
      (e) => e,
    );
    const backend = await activeBackend(marker);
    const signalledAt = Date.now();
    cli.child.kill('SIGTERM');
    const err = await outcome;
    const errAt = Date.now();
    expect(err?.code).toBe('57P01');
    expect(err.message).toMatch(/shutdown grace period ended/);
    expect(errAt - signalledAt).toBeGreaterThanOrEqual(900);
    expect(errAt - signalledAt).toBeLessThan(2500);
    const exit = await cli.exited;
    console.log(`[shutdown] grace 1s: client told after ${errAt - signalledAt} ms, exit after ${exit.at - signalledAt} ms`);
    expect(exit.code).toBe(0);
    expect(exit.at - signalledAt).toBeLessThan(4000);
    await eventually(async () => (await cluster.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [backend])).rowCount === 0, 3000);
  });

  it('closes idle sessions at once', async () => {
    const cli = await startCli('shutdown:\n  grace: 20s\n');
    const clients = [clientOf(cli), clientOf(cli, 'bob')];
    for (const c of clients) await c.connect();
    const ended = clients.map((c) => new Promise<void>((resolve) => c.on('end', () => resolve())));
    const signalledAt = Date.now();
    cli.child.kill('SIGTERM');
    await Promise.all(ended);
    const exit = await cli.exited;
    expect(exit.code).toBe(0);
    expect(exit.at - signalledAt).toBeLessThan(3000);
  });
});

describe('SIGHUP', () => {
  it('keeps the old configuration when the new file is invalid, and applies a valid one', async () => {
    const base = `shutdown:\n  grace: 1s\njobs:\n  registryUrl: postgres://pgbg_admin:registry-secret-pw@127.0.0.1:${cluster.port}/app\n  reconcileInterval: 1s\n`;
    const withRule = `${base}rules:\n  - name: no-hup-marker\n    match:\n      pattern: hup_forbidden_marker\n    action: reject\n`;
    const cli = await startCli(withRule);
    const client = clientOf(cli);
    await client.connect();
    const forbidden = "SELECT 'hup_forbidden_marker' AS sql_text_marker_hup";
    expect((await client.query(forbidden).catch((e) => e)).code).toBe('42501');

    writeFileSync(cli.configPath, `${withRule}shutdown_grace: 3s\nlimits:\n  startupTimeout: someday\n`);
    cli.child.kill('SIGHUP');
    const refusedLine = await cli.waitForLog((l) => /reload refused/.test(l.msg));
    expect(refusedLine.level).toBe(50);
    expect(JSON.stringify(refusedLine)).toMatch(/limits\.startupTimeout/);
    expect(JSON.stringify(refusedLine)).toMatch(/shutdown_grace/);
    // still the old rules, still serving
    expect((await client.query(forbidden).catch((e) => e)).code).toBe('42501');
    expect(cli.child.exitCode).toBeNull();

    writeFileSync(cli.configPath, base);
    cli.child.kill('SIGHUP');
    await cli.waitForLog((l) => l.msg === 'configuration reloaded');
    expect((await client.query(forbidden)).rows).toEqual([{ sql_text_marker_hup: 'hup_forbidden_marker' }]);
    // new sessions get the new configuration too
    const fresh = clientOf(cli, 'bob');
    await fresh.connect();
    expect((await fresh.query(forbidden)).rowCount).toBe(1);
    await fresh.end();
    await client.end();
    cli.child.kill('SIGTERM');
    expect((await cli.exited).code).toBe(0);
  });
});

describe('logs', () => {
  it('are JSON lines with session start and end, without passwords or SQL text at info level', async () => {
    const cli = await startCli('log:\n  level: info\nshutdown:\n  grace: 2s\n');
    const ids: string[] = [];
    for (const user of ['alice', 'md5user', 'postgres']) {
      const c = clientOf(cli, user);
      await c.connect();
      await c.query("SELECT 'log_sql_marker_7f3a' AS sql_text_marker_logs");
      await c.query('SELECT 1/0 AS log_error_marker').catch(() => undefined);
      await c.end();
    }
    await eventually(async () => cli.lines.filter((l) => l.msg === 'session ended').length >= 3, 5000);
    cli.child.kill('SIGTERM');
    expect((await cli.exited).code).toBe(0);
    for (const l of cli.lines.filter((x) => x.msg === 'session started')) ids.push(String(l.session));
    expect(ids.length).toBe(3);
    expect(new Set(ids).size).toBe(3);
    for (const id of ids) {
      expect(id).toMatch(/^[0-9a-f]{8}$/);
      const ended = cli.lines.find((l) => l.msg === 'session ended' && l.session === id);
      expect(ended, `session ${id} ended`).toBeDefined();
      expect(typeof ended!.duration_ms).toBe('number');
    }
    const started = cli.lines.filter((l) => l.msg === 'session started');
    expect(started.map((l) => l.user).sort()).toEqual(['alice', 'md5user', 'postgres']);
  });

  it('never held anything but JSON, a password or SQL text (all processes of this file)', () => {
    expect(allLines.length).toBeGreaterThan(20);
    const notJson = allLines.filter((l) => {
      try {
        return typeof JSON.parse(l) !== 'object';
      } catch {
        return true;
      }
    });
    expect(notJson).toEqual([]);
    const levels = new Set(allLines.map((l) => JSON.parse(l).level as number));
    expect(Math.min(...levels)).toBeGreaterThanOrEqual(30);
    for (const secret of ['alice-secret', 'bob-secret', 'md5-secret', "'postgres'", 'registry-secret-pw']) {
      expect(allLines.filter((l) => l.includes(secret)), secret).toEqual([]);
    }
    for (const sql of ['sql_text_marker', 'log_sql_marker_7f3a', 'pg_sleep', 'log_error_marker', 'shutdown_drain_marker']) {
      expect(allLines.filter((l) => l.includes(sql)), sql).toEqual([]);
    }
  });
});
