/**
 * A test proxy run as the real CLI with several relay processes (`start --workers N` from dist/),
 * for the whole suite under PGBG_WORKERS=N. Tests reach it only from outside, as an operator
 * would: its listening address, /metrics, the admin console, SIGHUP and SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { ProxyConfigInput } from '../../src/config/schema.js';
import { freePort, type Cluster } from '../harness/cluster.js';
import { ensureBuilt } from './build-dist.js';
import { childrenOf } from './child-pids.js';
import type { ProxyHandle } from './proxy.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

interface LogLine {
  msg?: string;
  [key: string]: unknown;
}

/** "host:0" (or a missing address) becomes "host:<a port free now>": the supervisor must be told where. */
async function concrete(address: string | null | undefined, fallbackHost: string): Promise<string> {
  if (!address) return `${fallbackHost}:${await freePort()}`;
  const colon = address.lastIndexOf(':');
  const host = address.slice(0, colon) || fallbackHost;
  const port = Number(address.slice(colon + 1));
  return port === 0 ? `${host}:${await freePort()}` : `${host}:${port}`;
}

/** Values of one metric in Prometheus text, with their labels. */
export function parseMetric(text: string, name: string): Array<{ labels: Record<string, string>; value: number }> {
  const out: Array<{ labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labels: Record<string, string> = {};
    const brace = line.indexOf('{');
    const close = line.lastIndexOf('}');
    if (brace === name.length && close > brace) {
      for (const m of line.slice(brace + 1, close).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]] = m[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    }
    out.push({ labels, value: Number(line.slice(line.lastIndexOf(' ') + 1)) });
  }
  return out;
}

export async function startSupervisedTestProxy(cluster: Cluster, overrides: ProxyConfigInput, workers: number): Promise<{ handle: ProxyHandle; close(): Promise<void> }> {
  await ensureBuilt();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-supervised-'));
  const configPath = path.join(dir, 'proxy.yaml');
  const listen = await concrete(overrides.listen as string | undefined, '127.0.0.1');
  // Always a metrics endpoint: session counts and counters are read from it. A test that set
  // metricsListen gets its port back; one that did not is not told of it.
  const metricsListen = await concrete(overrides.metricsListen as string | null | undefined, '127.0.0.1');
  const fileFor = (o: ProxyConfigInput) => ({
    upstream: { host: cluster.host, port: cluster.port },
    metricsSnapshotTtl: 0,
    ...o,
    listen,
    metricsListen,
    workers,
    // Info and up on stdout (JSON): the supervisor says when it listens and when a reload took.
    log: { level: 'info', pretty: false },
  });
  // YAML is a superset of JSON.
  writeFileSync(configPath, JSON.stringify(fileFor(overrides)));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGBG_')));
  const child: ChildProcess = spawn(process.execPath, [path.join(root, 'bin', 'pgbg-proxy.js'), 'start', '--config', configPath], {
    cwd: root,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const echo = process.env.PGBG_TEST_LOG !== undefined && process.env.PGBG_TEST_LOG !== 'silent';
  const lines: LogLine[] = [];
  let partial = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    if (echo) process.stderr.write(d);
    partial += d;
    const parts = partial.split('\n');
    partial = parts.pop()!;
    for (const line of parts) {
      try {
        if (line) lines.push(JSON.parse(line) as LogLine);
      } catch {
        /* not a log line */
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const waitForLog = async (pred: (l: LogLine) => boolean, from: number, timeoutMs: number): Promise<LogLine> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = lines.slice(from).find(pred);
      if (found) return found;
      if (Date.now() > deadline || child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`supervised proxy: no such log line within ${timeoutMs} ms (exit ${child.exitCode ?? child.signalCode}); stderr:\n${stderr}\nlast lines:\n${lines.slice(-15).map((l) => JSON.stringify(l)).join('\n')}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  const killAll = () => {
    for (const pid of childrenOf(child.pid!)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    child.kill('SIGKILL');
  };
  try {
    await waitForLog((l) => l.msg === 'all workers listening', 0, 60_000);
  } catch (err) {
    killAll();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
  const host = listen.slice(0, listen.lastIndexOf(':'));
  const mport = Number(metricsListen.slice(metricsListen.lastIndexOf(':') + 1));
  const scrape = async () => {
    const res = await fetch(`http://127.0.0.1:${mport}/metrics`);
    if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
    return res.text();
  };
  const metricValue = async (name: string, labels: Record<string, string> = {}) =>
    parseMetric(await scrape(), name)
      .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
      .reduce((sum, v) => sum + v.value, 0);
  const socketDir = overrides.listenSocketDir as string | undefined;
  const adminDatabase = (overrides.admin as { database?: string } | undefined)?.database ?? 'pgbg';
  const handle: ProxyHandle = {
    address: { host, port },
    metricsPort: overrides.metricsListen ? mport : null,
    socketPath: socketDir ? path.join(socketDir, `.s.PGSQL.${port}`) : null,
    relayPids: () => childrenOf(child.pid!),
    sessionCount: () => metricValue('pgbg_client_connections'),
    async applicationNames() {
      const c = new pg.Client({ ...cluster.clientConfig({ user: 'postgres', database: adminDatabase }), port, application_name: 'pgbg-test-console' });
      await c.connect();
      try {
        const r = await c.query('SHOW CLIENTS');
        return r.rows.filter((row) => row.kind === 'client').map((row) => String(row.application_name ?? ''));
      } finally {
        await c.end();
      }
    },
    isPaused: async () => (await metricValue('pgbg_launching_paused')) > 0,
    metricValue,
    async reload(next) {
      const from = lines.length;
      writeFileSync(configPath, JSON.stringify(fileFor(next)));
      child.kill('SIGHUP');
      await waitForLog((l) => l.msg === 'configuration reloaded' || /reload refused/.test(l.msg ?? ''), from, 15_000).then((l) => {
        if (l.msg !== 'configuration reloaded') throw new Error(`reload refused: ${JSON.stringify(l)}`);
      });
    },
  };
  return {
    handle,
    async close() {
      // As close(0) in one process: the first SIGTERM starts the drain, the second closes now.
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => setTimeout(r, 50));
        if (child.exitCode === null) child.kill('SIGTERM');
        const timer = setTimeout(killAll, 10_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
