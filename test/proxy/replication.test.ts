/**
 * Replication connections through the proxy, relayed untouched: pg_basebackup (physical, with
 * WAL streamed over a second replication connection), pg_recvlogical (logical decoding over a
 * CopyBoth stream), psql with replication=true. `replication=false|off|no|0` is an ordinary
 * connection. A refusal by the server is counted. These need wal_level=logical and wal senders,
 * so this file starts a throwaway cluster of its own instead of changing the shared one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startCluster, type Cluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { frame, startupPacket } from '../support/wire.js';

let cluster: Cluster;
let via: TestProxy;

beforeAll(async () => {
  cluster = await startCluster({ settings: { wal_level: 'logical', max_wal_senders: '6', max_replication_slots: '4' } });
  via = await startTestProxy(cluster);
});
afterAll(async () => {
  await via?.close();
  await cluster?.stop();
});

function runTool(tool: string, args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(path.join(cluster.binDir, tool), args, {
      env: { ...process.env, PGPASSWORD: 'postgres', PGCONNECT_TIMEOUT: '10', LC_ALL: 'C' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function replicationCount(outcome: string): Promise<number> {
  return via.proxy.metricValue('pgbg_replication_connections_total', { outcome });
}

describe('physical replication', () => {
  it('pg_basebackup through the proxy (WAL streamed on a second connection) makes a complete backup', async () => {
    const target = mkdtempSync(path.join(os.tmpdir(), 'pgbg-basebackup-'));
    try {
      const started = await replicationCount('started');
      const r = await runTool('pg_basebackup', ['-h', '127.0.0.1', '-p', String(via.port), '-U', 'postgres', '-D', path.join(target, 'data'), '-X', 'stream', '-c', 'fast', '--no-sync']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(readFileSync(path.join(target, 'data', 'PG_VERSION'), 'utf8').trim()).toBe('15');
      expect(existsSync(path.join(target, 'data', 'backup_manifest'))).toBe(true);
      // the manifest's WAL range was streamed: pg_verifybackup checks files and WAL
      const verify = await runTool('pg_verifybackup', [path.join(target, 'data')]);
      expect(verify.stdout + verify.stderr).toMatch(/successfully verified/);
      expect(verify.code).toBe(0);
      // the base backup and the WAL stream: two replication connections, both started
      expect(await replicationCount('started')).toBeGreaterThanOrEqual(started + 2);
    } finally {
      rmSync(target, { recursive: true, force: true });
    }
  });

  it('psql replication=true: IDENTIFY_SYSTEM answers as it does directly', async () => {
    const conn = (port: number) => `host=127.0.0.1 port=${port} user=postgres dbname=postgres replication=true`;
    const direct = await runTool('psql', ['-X', '-A', '-t', '-d', conn(cluster.port), '-c', 'IDENTIFY_SYSTEM']);
    const proxied = await runTool('psql', ['-X', '-A', '-t', '-d', conn(via.port), '-c', 'IDENTIFY_SYSTEM']);
    expect(direct.code).toBe(0);
    const systemId = (s: string) => s.trim().split('|')[0];
    expect(systemId(proxied.stdout)).toMatch(/^\d{10,}$/);
    expect(systemId(proxied.stdout)).toBe(systemId(direct.stdout));
    expect(proxied.code).toBe(0);
  });
});

describe('logical replication', () => {
  it('pg_recvlogical through the proxy: create a slot, stream the decoded changes to an end LSN (same output as directly), drop the slot', async () => {
    const args = (port: number, slot: string) => ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'app', '--slot', slot];
    const created = await runTool('pg_recvlogical', [...args(via.port, 'pgbg_proxy_test'), '--create-slot', '-P', 'test_decoding']);
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    expect((await runTool('pg_recvlogical', [...args(cluster.port, 'pgbg_direct_test'), '--create-slot', '-P', 'test_decoding'])).code).toBe(0);
    await cluster.query('CREATE TABLE repl_t (id int PRIMARY KEY, note text)');
    await cluster.query("INSERT INTO repl_t SELECT g, 'row ' || g FROM generate_series(1, 500) g");
    await cluster.query("UPDATE repl_t SET note = repeat('x', 3000) WHERE id % 50 = 0");
    const lsn = (await cluster.query('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0].lsn as string;
    const stream = ['--start', '--endpos', lsn, '-f', '-', '--no-loop'];
    const [streamed, direct] = await Promise.all([
      runTool('pg_recvlogical', [...args(via.port, 'pgbg_proxy_test'), ...stream]),
      runTool('pg_recvlogical', [...args(cluster.port, 'pgbg_direct_test'), ...stream]),
    ]);
    expect(direct.code).toBe(0);
    expect(streamed.stderr).toBe(direct.stderr);
    expect(streamed.code).toBe(0);
    const inserts = streamed.stdout.split('\n').filter((l) => l.startsWith('table public.repl_t: INSERT:'));
    expect(inserts.length).toBeGreaterThan(0);
    expect(inserts[0]).toBe("table public.repl_t: INSERT: id[integer]:1 note[text]:'row 1'");
    expect(streamed.stdout).toBe(direct.stdout);
    const dropped = await runTool('pg_recvlogical', [...args(via.port, 'pgbg_proxy_test'), '--drop-slot']);
    expect(dropped.code).toBe(0);
    expect((await runTool('pg_recvlogical', [...args(cluster.port, 'pgbg_direct_test'), '--drop-slot'])).code).toBe(0);
    expect((await cluster.query("SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = 'pgbg_proxy_test'")).rows[0].n).toBe(0);
  });
});

describe('the replication parameter', () => {
  /** Connects with a raw startup packet; runs one Query; returns the message types and the first error. */
  async function withReplication(value: string, sql: string, port = via.port) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    await new Promise((r) => s.once('connect', r));
    s.write(Buffer.concat([startupPacket(3 << 16, { user: 'trustuser', database: 'app', replication: value }), frame('Q', Buffer.from(sql + '\0')), frame('X', Buffer.alloc(0))]));
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5000))]);
    s.destroy();
    const all = Buffer.concat(chunks);
    const types: string[] = [];
    const errors: string[] = [];
    const rows: string[] = [];
    for (let pos = 0; pos + 5 <= all.length; ) {
      const len = all.readInt32BE(pos + 1);
      const type = String.fromCharCode(all[pos]);
      const body = all.subarray(pos + 5, pos + 1 + len);
      types.push(type);
      if (type === 'E') errors.push(/C([0-9A-Z]{5})\0/.exec(body.toString('latin1'))![1]);
      if (type === 'D') rows.push(body.toString('latin1', 6));
      pos += 1 + len;
    }
    return { types, errors, rows };
  }

  it.each(['false', 'off', 'no', '0', 'OFF'])('replication=%s is an ordinary connection', async (value) => {
    const r = await withReplication(value, "SELECT current_setting('application_name') || 'ordinary'");
    expect(r.errors).toEqual([]);
    expect(r.rows).toEqual(['ordinary']);
  });

  it('a replication connection refused by the server is relayed as the server said it, and counted', async () => {
    const before = await replicationCount('refused');
    // trustuser lacks the REPLICATION attribute: the server's own FATAL 42501
    const r = await withReplication('database', 'IDENTIFY_SYSTEM');
    expect(r.errors).toEqual(['42501']);
    expect(await replicationCount('refused')).toBe(before + 1);
  });

  it('a replication connection the proxy refuses (limits.maxClients) is counted too', async () => {
    const small = await startTestProxy(cluster, { limits: { maxClients: 1 } });
    const holder = await small.connect({ user: 'trustuser' });
    try {
      const count = async () => {
        return small.proxy.metricValue('pgbg_replication_connections_total', { outcome: 'refused' });
      };
      const r = await withReplication('true', 'IDENTIFY_SYSTEM', small.port);
      expect(r.errors).toEqual(['53300']);
      expect(await count()).toBe(1);
    } finally {
      await holder.end();
      await small.close();
    }
  });
});
