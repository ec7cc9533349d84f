/**
 * Cancel through the proxy: clients get the server's own BackendKeyData, a CancelRequest with
 * it cancels the statement running upstream (the proxy forwards only pairs it handed out), and
 * any other key cancels nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { eventually, getCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { int32 } from '../support/wire.js';

const cluster = getCluster();
let via: TestProxy;

beforeAll(async () => {
  via = await startTestProxy(cluster);
});
afterAll(async () => {
  await via?.close();
});

/** Sends a CancelRequest to the proxy; resolves with whatever came back before the close. */
function cancelRequest(port: number, pid: number, key: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error('the proxy did not close the cancel connection'));
    }, 3000);
    s.on('data', (d) => chunks.push(d));
    s.on('error', reject);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    s.write(Buffer.concat([int32(16), int32(80877102), int32(pid), int32(key)]));
  });
}

async function activeBackend(marker: string): Promise<number> {
  return (await eventually<number | undefined>(async () => {
    const r = await cluster.query("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()", [marker]);
    return r.rows[0]?.pid as number | undefined;
  }))!;
}

interface Keyed {
  processID: number;
  secretKey: number;
}

describe('psql', () => {
  it('cancels a running statement on Ctrl-C in well under a second', async () => {
    const marker = 'cancel_psql_marker';
    const child = spawn(
      path.join(cluster.binDir, 'psql'),
      ['-X', '-w', '-h', '127.0.0.1', '-p', String(via.port), '-U', 'alice', '-d', 'app', '-c', `SELECT pg_sleep(30) AS ${marker}`],
      { env: { ...process.env, PGPASSWORD: 'alice-secret', PGCONNECT_TIMEOUT: '10' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const exited = new Promise<{ code: number | null; at: number }>((resolve) => child.on('exit', (code) => resolve({ code, at: Date.now() })));
    const spawnedAt = Date.now();
    const backend = await activeBackend(marker);
    await new Promise((r) => setTimeout(r, Math.max(0, 500 - (Date.now() - spawnedAt))));
    const signalledAt = Date.now();
    child.kill('SIGINT');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const { code, at } = await exited;
    clearTimeout(timer);
    const latency = at - signalledAt;
    console.log(`[cancel] psql exited ${latency} ms after SIGINT`);
    expect(stderr).toMatch(/canceling statement due to user request/);
    expect(code).toBe(1);
    expect(latency).toBeLessThan(1000);
    // the backend survives the cancel (only the statement ended), and is idle again
    await eventually(async () => {
      const r = await cluster.query('SELECT state FROM pg_stat_activity WHERE pid = $1', [backend]);
      return r.rowCount === 0 || r.rows[0].state === 'idle';
    }, 3000);
  });
});

describe('node-postgres', () => {
  it('gets the server’s own BackendKeyData: the pid is pg_backend_pid()', async () => {
    const client = await via.connect({ user: 'alice' });
    try {
      const { processID, secretKey } = client as unknown as Keyed;
      const pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      expect(typeof secretKey).toBe('number');
      expect(processID).toBe(pid);
      const row = await cluster.query('SELECT usename, application_name FROM pg_stat_activity WHERE pid = $1', [processID]);
      expect(row.rows).toEqual([{ usename: 'alice', application_name: '' }]);
      // two sessions never share a key
      const other = await via.connect({ user: 'alice' });
      expect((other as unknown as Keyed).processID).not.toBe(processID);
      expect((other as unknown as Keyed).processID).toBe((await other.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
      await other.end();
    } finally {
      await client.end();
    }
  });

  it('cancels with pg.Client#cancel, and the session stays usable', async () => {
    const client = await via.connect({ user: 'bob' });
    const marker = 'cancel_pg_marker';
    const query = new pg.Query({ text: `SELECT pg_sleep($1) AS ${marker}`, values: [30] });
    const outcome = new Promise<any>((resolve) => {
      query.on('error', resolve);
      query.on('end', () => resolve(null));
    });
    client.query(query);
    await activeBackend(marker);
    const started = Date.now();
    const canceller = new pg.Client(via.clientConfig({ user: 'bob' }));
    (canceller as unknown as { cancel(c: pg.Client, q: pg.Query): void }).cancel(client, query);
    const err = await outcome;
    const latency = Date.now() - started;
    console.log(`[cancel] node-postgres cancel took ${latency} ms`);
    expect(err?.code).toBe('57014');
    expect(err.message).toMatch(/canceling statement due to user request/);
    expect(latency).toBeLessThan(1000);
    expect((await client.query('SELECT 7 AS n')).rows).toEqual([{ n: 7 }]);
    await client.end();
  });

  it('cancels with a raw CancelRequest carrying the key the client got; the proxy answers nothing', async () => {
    const client = await via.connect({ user: 'alice' });
    const { processID, secretKey } = client as unknown as Keyed;
    await client.query('BEGIN');
    const marker = 'cancel_raw_marker';
    const outcome = client.query(`SELECT pg_sleep(30) AS ${marker}`).then(
      () => null,
      (e) => e,
    );
    await activeBackend(marker);
    const started = Date.now();
    const answer = await cancelRequest(via.port, processID, secretKey);
    expect(answer.length).toBe(0);
    const err = await outcome;
    expect(err?.code).toBe('57014');
    expect(Date.now() - started).toBeLessThan(1000);
    // the transaction is aborted, as it would be without the proxy
    expect((await client.query('SELECT 1').catch((e) => e)).code).toBe('25P02');
    await client.query('ROLLBACK');
    expect((await client.query('SELECT 2 AS n')).rows).toEqual([{ n: 2 }]);
    await client.end();
  });

  it('cancels nothing for a wrong key or an unknown pid, and forwards no unknown pair', async () => {
    const client = await via.connect({ user: 'alice' });
    const other = await via.connect({ user: 'bob' });
    const { processID, secretKey } = client as unknown as Keyed;
    const otherKey = other as unknown as Keyed;
    const marker = 'cancel_wrong_marker';
    const started = Date.now();
    const q = client.query(`SELECT pg_sleep(1.5) AS ${marker}`);
    await activeBackend(marker);
    const answers = await Promise.all([
      cancelRequest(via.port, processID, secretKey ^ 1),
      cancelRequest(via.port, processID, ~secretKey),
      // another live session's key does not cancel this one
      cancelRequest(via.port, processID, otherKey.secretKey),
      cancelRequest(via.port, otherKey.processID, secretKey),
      cancelRequest(via.port, processID + 1, secretKey),
      cancelRequest(via.port, 0, 0),
    ]);
    for (const a of answers) expect(a.length).toBe(0);
    const r = await q;
    expect(r.rows).toHaveLength(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
    await client.end();
    await other.end();
  });

  it('a CancelRequest sent straight to the server with the key the proxy handed out works too', async () => {
    // The key is the server's own: a client that cancels through another route reaches it.
    const client = await via.connect({ user: 'alice' });
    const { processID, secretKey } = client as unknown as Keyed;
    const marker = 'cancel_direct_marker';
    const outcome = client.query(`SELECT pg_sleep(30) AS ${marker}`).then(
      () => null,
      (e) => e,
    );
    await activeBackend(marker);
    expect((await cancelRequest(cluster.port, processID, secretKey)).length).toBe(0);
    expect((await outcome)?.code).toBe('57014');
    expect((await client.query('SELECT 3 AS n')).rows).toEqual([{ n: 3 }]);
    await client.end();
  });

  it('forgets a key when its session ends', async () => {
    const gone = await via.connect({ user: 'alice' });
    const { processID, secretKey } = gone as unknown as Keyed;
    await gone.end();
    const client = await via.connect({ user: 'alice' });
    const marker = 'cancel_stale_marker';
    const q = client.query(`SELECT pg_sleep(1) AS ${marker}`);
    await activeBackend(marker);
    expect((await cancelRequest(via.port, processID, secretKey)).length).toBe(0);
    expect((await q).rows).toHaveLength(1);
    await client.end();
  });
});
