/**
 * postgres.js (the `postgres` npm package) through the proxy: TLS verified against a test CA,
 * the Unix-domain socket, and a hinted statement over its extended protocol (named prepared
 * statements by default, unnamed with prepare: false).
 */
import { mkdtempSync, rmSync, chmodSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROLE_PASSWORDS } from '../harness/cluster.js';
import { getCluster } from '../harness/index.js';
import { TestPki, type Pem } from '../support/certs.js';
import { registryDatabase, waitJob } from '../support/jobs.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';

const cluster = getCluster();
const pki = new TestPki();
let ca: Pem, wrongCa: Pem, proxyCert: Pem;
let via: TestProxy;
let db: string;
let socketDir: string;
const sqls: postgres.Sql[] = [];

function connect(options: postgres.Options<Record<string, never>>): postgres.Sql {
  const sql = postgres({ user: 'alice', password: ROLE_PASSWORDS.alice, database: db, max: 1, connect_timeout: 10, onnotice: () => {}, ...options });
  sqls.push(sql);
  return sql;
}

beforeAll(async () => {
  ca = pki.ca('pgjs-ca');
  wrongCa = pki.ca('pgjs-wrong-ca');
  proxyCert = pki.leaf('pgjs-proxy', ca, 'd004', 'pgbg-proxy-pgjs');
  db = await registryDatabase(cluster);
  socketDir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-pgjs-sock-'));
  chmodSync(socketDir, 0o755);
  via = await startTestProxy(cluster, {
    listenSocketDir: socketDir,
    tls: { client: { mode: 'require', cert: proxyCert.cert, key: proxyCert.key } },
  });
}, 120_000);

afterAll(async () => {
  await Promise.all(sqls.map((s) => s.end({ timeout: 1 }).catch(() => undefined)));
  await via?.close();
  rmSync(socketDir, { recursive: true, force: true });
  pki.remove();
});

describe('postgres.js through the proxy', () => {
  it('connects over TLS verified against the test CA, and the proxy shows its own certificate', async () => {
    const sql = connect({ host: '127.0.0.1', port: via.port, ssl: { ca: ca.certPem, rejectUnauthorized: true, servername: '' } });
    const [row] = await sql`SELECT 41 + 1 AS answer, current_user AS who`;
    expect(row).toEqual({ answer: 42, who: 'alice' });
  });

  it('refuses a proxy certificate signed by another CA', async () => {
    const sql = connect({ host: '127.0.0.1', port: via.port, ssl: { ca: wrongCa.certPem, rejectUnauthorized: true, servername: '' } });
    await expect(sql`SELECT 1`).rejects.toThrow(/certificate/i);
  });

  it('is refused without TLS when tls.client.mode is require, with the server-like 28000', async () => {
    const sql = connect({ host: '127.0.0.1', port: via.port, ssl: false });
    await expect(sql`SELECT 1`).rejects.toMatchObject({ code: '28000' });
  });

  it('connects over the Unix-domain socket (no TLS there, as the server)', async () => {
    const sql = connect({ path: path.join(socketDir, `.s.PGSQL.${via.port}`) });
    const [row] = await sql`SELECT current_user AS who`;
    expect(row.who).toBe('alice');
  });

  for (const prepare of [true, false]) {
    it(`submits a hinted statement with a bound parameter (prepare: ${prepare}) and the job succeeds`, async () => {
      const sql = connect({ host: '127.0.0.1', port: via.port, ssl: { ca: ca.certPem, rejectUnauthorized: true, servername: '' }, prepare });
      const rows = await sql.unsafe('/*+ background */ SELECT $1::int * 2 AS doubled', [21]);
      expect(rows).toHaveLength(1);
      expect(Object.keys(rows[0]!)).toEqual(['job_id', 'state']);
      const id = String(rows[0]!.job_id);
      const checker = await cluster.connect({ user: 'alice', database: db });
      try {
        const job = await waitJob(checker, id);
        expect(job.state).toBe('succeeded');
        const result = await checker.query('SELECT r FROM pgbg.result($1) r', [id]);
        expect(result.rows.map((r) => r.r)).toEqual([{ doubled: 42 }]);
      } finally {
        await checker.end();
      }
    });
  }
});
