/**
 * pgbench through the proxy: initialisation, then the select-only and the default TPC-B-like
 * scripts in every query mode, 16 clients on 2 threads. Every client must connect, no
 * transaction may fail, and the results must be consistent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { eventually, getCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';

const cluster = getCluster();
let via: TestProxy;
let db: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function pgbench(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(cluster.binDir, 'pgbench'), ['-h', '127.0.0.1', '-p', String(via.port), '-U', 'postgres', ...args, db], {
      env: { ...process.env, PGPASSWORD: 'postgres', PGCONNECT_TIMEOUT: '10', LC_ALL: 'C' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

interface Summary {
  clients: number;
  threads: number;
  mode: string;
  processed: number;
  failed: number;
  tps: number;
}

function summary(out: string): Summary {
  const num = (re: RegExp, what: string) => {
    const m = re.exec(out);
    if (!m) throw new Error(`pgbench output lacks ${what}:\n${out}`);
    return Number(m[1]);
  };
  const mode = /^query mode: (\w+)$/m.exec(out)?.[1];
  if (!mode) throw new Error(`pgbench output lacks the query mode:\n${out}`);
  return {
    clients: num(/^number of clients: (\d+)$/m, 'number of clients'),
    threads: num(/^number of threads: (\d+)$/m, 'number of threads'),
    mode,
    processed: num(/^number of transactions actually processed: (\d+)/m, 'transactions processed'),
    failed: num(/^number of failed transactions: (\d+)/m, 'failed transactions'),
    tps: num(/^tps = ([\d.]+) \(without initial connection time\)$/m, 'tps'),
  };
}

beforeAll(async () => {
  via = await startTestProxy(cluster);
  db = await cluster.createDatabase();
}, 120_000);

afterAll(async () => {
  await via?.close();
});

describe('pgbench through the proxy', () => {
  it('initialises scale 1', async () => {
    const r = await pgbench(['-i', '-s', '1', '-q']);
    expect(r.stderr).toMatch(/done in/);
    expect(r.code).toBe(0);
    const counts = await cluster.query(
      `SELECT (SELECT count(*) FROM pgbench_accounts)::int AS a, (SELECT count(*) FROM pgbench_branches)::int AS b, (SELECT count(*) FROM pgbench_tellers)::int AS t`,
      [],
      { database: db },
    );
    expect(counts.rows[0]).toEqual({ a: 100_000, b: 1, t: 10 });
  });

  const runs: { script: string; args: string[]; mode: string }[] = [];
  for (const mode of ['simple', 'extended', 'prepared']) {
    runs.push({ script: 'select-only', args: ['-S'], mode });
    runs.push({ script: 'tpcb-like', args: [], mode });
  }

  it.each(runs)('$script, -M $mode, -c 16 -j 2 -T 3: every client connects, no transaction fails', async ({ script, args, mode }) => {
    const before = await cluster.query<{ n: string }>('SELECT count(*) AS n FROM pgbench_history', [], { database: db });
    const r = await pgbench([...args, '-M', mode, '-c', '16', '-j', '2', '-T', '3', '-n']);
    const s = summary(r.stdout);
    console.log(`[pgbench] ${script} -M ${mode}: ${s.processed} transactions, tps ${s.tps.toFixed(0)}, failed ${s.failed}`);
    expect(r.stderr).not.toMatch(/error|abort|fatal/i);
    expect(r.code).toBe(0);
    expect(s).toMatchObject({ clients: 16, threads: 2, mode, failed: 0 });
    expect(s.processed).toBeGreaterThan(16);
    expect(s.tps).toBeGreaterThan(0);
    const after = await cluster.query<{ n: string }>('SELECT count(*) AS n FROM pgbench_history', [], { database: db });
    const inserted = Number(after.rows[0].n) - Number(before.rows[0].n);
    // TPC-B inserts one history row per transaction; select-only changes nothing.
    expect(inserted).toBe(script === 'tpcb-like' ? s.processed : 0);
  }, 60_000);

  it('leaves the balances consistent and no session behind', async () => {
    const r = await cluster.query(
      `SELECT (SELECT sum(abalance) FROM pgbench_accounts)::bigint AS a, (SELECT sum(bbalance) FROM pgbench_branches)::bigint AS b,
              (SELECT sum(tbalance) FROM pgbench_tellers)::bigint AS t, (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint AS h`,
      [],
      { database: db },
    );
    const { a, b, t, h } = r.rows[0];
    expect(a).toBe(h);
    expect(b).toBe(h);
    expect(t).toBe(h);
    await eventually(async () => (await via.proxy.sessionCount()) === 0, 3000);
  });
});
