/**
 * TLS on both sides of the proxy, against a throwaway cluster of its own that has ssl = on and
 * a pg_hba.conf with hostssl lines only (plain TCP is refused by the server itself).
 * Certificates are made by the test with the openssl CLI: a test CA, a second ("wrong") CA,
 * the server's certificate, two proxy certificates (for the reload test) and a client
 * certificate the proxy shows the server (CN=bob, for a `cert` pg_hba line).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { createHash, X509Certificate } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import pg from 'pg';
import { startCluster, type Cluster } from '../harness/cluster.js';
import { getCluster } from '../harness/index.js';
import { TestPki, type Pem } from '../support/certs.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { startChildProxy, type ChildProxy } from '../support/child-proxy.js';
import { frame, int32, reader, startupPacket, type Msg } from '../support/wire.js';
import type { ProxyConfigInput } from '../../src/config/schema.js';

const pki = new TestPki();
let ca: Pem, wrongCa: Pem, serverCert: Pem, proxyA: Pem, proxyB: Pem, bobCert: Pem;
let cluster: Cluster;
const proxies: TestProxy[] = [];

beforeAll(async () => {
  ca = pki.ca('test-ca');
  wrongCa = pki.ca('wrong-ca');
  serverCert = pki.leaf('server', ca, '1001', 'pgbg-test-server');
  proxyA = pki.leaf('proxy-a', ca, 'a001', 'pgbg-proxy-a');
  proxyB = pki.leaf('proxy-b', ca, 'b002', 'pgbg-proxy-b');
  bobCert = pki.leaf('bob', ca, 'c003', 'bob');
  cluster = await startCluster({
    settings: { ssl: 'on', ssl_cert_file: 'server.crt', ssl_key_file: 'server.key', ssl_ca_file: 'root.crt' },
    dataFiles: { 'server.crt': serverCert.certPem, 'server.key': serverCert.keyPem, 'root.crt': ca.certPem },
    hostHba: [
      'hostssl all trustuser 127.0.0.1/32 trust',
      'hostssl all md5user 127.0.0.1/32 md5',
      'hostssl all bob 127.0.0.1/32 cert',
      'hostssl all all 127.0.0.1/32 scram-sha-256',
    ],
  });
}, 120_000);

afterAll(async () => {
  for (const p of proxies) await p.close().catch(() => {});
  await cluster?.stop();
  pki.remove();
});

async function proxy(tlsConfig: ProxyConfigInput['tls'], extra: ProxyConfigInput = {}): Promise<TestProxy> {
  const p = await startTestProxy(cluster, { ...extra, tls: tlsConfig, jobs: { enabled: false } });
  proxies.push(p);
  return p;
}

const verifyFullUpstream = () => ({ mode: 'verify-full' as const, ca: ca.cert });

/** libpq settings for psql through the proxy. */
function libpq(sslmode: string, extra: Record<string, string> = {}): Record<string, string> {
  return { PGSSLMODE: sslmode, PGSSLROOTCERT: ca.cert, ...extra };
}

const UPSTREAM_SSL = 'SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()';

describe('psql with sslmode=verify-full through the proxy to a hostssl-only server (upstream verify-full)', () => {
  let via: TestProxy;
  beforeAll(async () => {
    via = await proxy({ client: { mode: 'require', cert: proxyA.cert, key: proxyA.key }, server: verifyFullUpstream() });
  });

  it('the server refuses plain TCP itself (the premise)', async () => {
    const r = await cluster.psql(['-c', 'select 1'], { user: 'trustuser', env: { PGSSLMODE: 'disable' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no pg_hba.conf entry for host "127.0.0.1", user "trustuser", database "app", no encryption/);
  });

  it('connects, and both legs are TLS', async () => {
    const r = await via.psql(['-At', '-c', `${UPSTREAM_SSL}`, '-c', 'select current_user'], { user: 'trustuser', env: libpq('verify-full') });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual(['t', 'trustuser']);
  });

  it('SCRAM over TLS on both legs works with channel_binding=disable', async () => {
    const r = await via.psql(['-At', '-c', UPSTREAM_SSL], { user: 'alice', env: libpq('verify-full', { PGCHANNELBINDING: 'disable' }) });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('t');
  });

  it('a libpq client with channel_binding=prefer (the default) gets an error that says why, from the proxy', async () => {
    const r = await via.psql(['-At', '-c', 'select 1'], { user: 'alice', env: libpq('verify-full') });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/SCRAM channel binding negotiation error/);
    expect(r.stderr).toMatch(/pgbg-proxy terminates TLS, so SCRAM channel binding cannot span it/);
    expect(r.stderr).toMatch(/channel_binding=disable/);
  });

  it('channel_binding=require: SCRAM-SHA-256-PLUS is never offered, libpq says so itself', async () => {
    const r = await via.psql(['-At', '-c', 'select 1'], { user: 'alice', env: libpq('verify-full', { PGCHANNELBINDING: 'require' }) });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/channel binding is required, but server did not offer an authentication method that supports channel binding/);
  });

  it('a client that trusts another CA fails verification with a clear error', async () => {
    const r = await via.psql(['-c', 'select 1'], { user: 'trustuser', env: { PGSSLMODE: 'verify-full', PGSSLROOTCERT: wrongCa.cert } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/certificate verify failed/);
  });

  it('upstream verify-full against the wrong CA: the client is told the server could not be reached, and why', async () => {
    const wrong = await proxy({ client: { mode: 'prefer', cert: proxyA.cert, key: proxyA.key }, server: { mode: 'verify-full', ca: wrongCa.cert } });
    const r = await wrong.psql(['-c', 'select 1'], { user: 'trustuser', env: libpq('verify-full') });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/pgbg-proxy could not connect to the server/);
    expect(r.stderr).toMatch(/TLS connection to the server failed \(tls\.server\.mode = verify-full\): .*(self-signed certificate|unable to (get|verify))/);
  });

  it('upstream verify-full by host name (localhost): the name is checked against the certificate', async () => {
    const byName = await startTestProxy(cluster, { tls: { server: verifyFullUpstream() }, jobs: { enabled: false }, upstream: { host: 'localhost', port: cluster.port } });
    proxies.push(byName);
    const r = await byName.psql(['-At', '-c', UPSTREAM_SSL], { user: 'trustuser' });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('t');
  });

  it('upstream disable against the hostssl-only server: the server\'s own refusal reaches the client', async () => {
    const plain = await proxy({ client: { mode: 'prefer', cert: proxyA.cert, key: proxyA.key }, server: { mode: 'disable' } });
    const r = await plain.psql(['-c', 'select 1'], { user: 'trustuser', env: libpq('verify-full') });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no pg_hba.conf entry for host "127.0.0.1", user "trustuser", database "app", no encryption/);
  });

  it('tls.server.cert/key: the proxy shows the server a client certificate (pg_hba `cert` for bob)', async () => {
    const withCert = await proxy({ server: { mode: 'verify-full', ca: ca.cert, cert: bobCert.cert, key: bobCert.key } });
    const r = await withCert.psql(['-At', '-c', 'SELECT client_dn FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()'], { user: 'bob', password: 'wrong-password-unused' });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('/CN=bob');
    const without = await proxy({ server: verifyFullUpstream() });
    const refused = await without.psql(['-c', 'select 1'], { user: 'bob' });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/connection requires a valid client certificate/);
  });

  it('a proxy that shows the server\'s own certificate lets channel binding work end to end', async () => {
    const same = await proxy({ client: { mode: 'require', cert: serverCert.cert, key: serverCert.key }, server: verifyFullUpstream() });
    const r = await same.psql(['-At', '-c', UPSTREAM_SSL], { user: 'alice', env: libpq('verify-full', { PGCHANNELBINDING: 'require' }) });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('t');
  });
});

describe('tls.client require', () => {
  it('refuses sslmode=disable as the server refuses a client without a hostssl entry, and admits sslmode=require', async () => {
    const via = await proxy({ client: { mode: 'require', cert: proxyA.cert, key: proxyA.key }, server: verifyFullUpstream() });
    const refused = await via.psql(['-c', 'select 1'], { user: 'alice', env: { PGSSLMODE: 'disable' } });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/FATAL: {2}no pg_hba.conf entry for host "127.0.0.1", user "alice", database "app", no encryption/);
    const direct = await cluster.psql(['-c', 'select 1'], { user: 'alice', env: { PGSSLMODE: 'disable' } });
    expect(direct.stderr.replace(/connection to server at .*? failed: /, '')).toContain('no pg_hba.conf entry for host "127.0.0.1", user "alice", database "app", no encryption');
    const ok = await via.psql(['-At', '-c', 'select 1'], { user: 'alice', env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'disable' } });
    expect(ok.stderr).toBe('');
    expect(ok.stdout.trim()).toBe('1');
  });

  it('tls.client disable answers N: sslmode=require fails the way it does against a server without TLS', async () => {
    const via = await proxy({ client: { mode: 'disable' }, server: verifyFullUpstream() });
    const r = await via.psql(['-c', 'select 1'], { user: 'trustuser', env: { PGSSLMODE: 'require' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/server does not support SSL, but SSL was required/);
    const plain = await via.psql(['-At', '-c', UPSTREAM_SSL], { user: 'trustuser', env: { PGSSLMODE: 'disable' } });
    expect(plain.stdout.trim()).toBe('t');
  });
});

/** Opens a TLS connection straight away (PostgreSQL 17 `sslnegotiation=direct`). */
function directTls(port: number, alpn: string[] | undefined): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: ca.certPem, ALPNProtocols: alpn, servername: 'localhost' });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
}

function md5hex(s: string | Buffer): string {
  return createHash('md5').update(s).digest('hex');
}

async function untilReady(next: () => Promise<Msg>): Promise<Msg[]> {
  const out: Msg[] = [];
  for (;;) {
    const m = await next();
    out.push(m);
    if (m.type === 'Z') return out;
  }
}

describe('direct TLS (PostgreSQL 17 sslnegotiation=direct, ALPN postgresql)', () => {
  let via: TestProxy;
  beforeAll(async () => {
    via = await proxy({ client: { mode: 'require', cert: proxyA.cert, key: proxyA.key }, server: verifyFullUpstream() });
  });

  it('a client that opens with a ClientHello and ALPN postgresql authenticates (md5) and runs a query', async () => {
    const s = await directTls(via.port, ['postgresql']);
    expect(s.alpnProtocol).toBe('postgresql');
    expect(s.getPeerCertificate().serialNumber).toBe('A001');
    const next = reader(s as unknown as net.Socket);
    s.write(startupPacket(3 << 16, { user: 'md5user', database: 'app' }));
    const auth = await next();
    expect(auth.type).toBe('R');
    expect(auth.body.readInt32BE(0)).toBe(5); // AuthenticationMD5Password
    const salt = auth.body.subarray(4, 8);
    const hashed = 'md5' + md5hex(Buffer.concat([Buffer.from(md5hex('md5-secret' + 'md5user')), salt]));
    s.write(frame('p', Buffer.from(hashed + '\0')));
    const login = await untilReady(next);
    expect(login.find((m) => m.type === 'E')).toBeUndefined();
    expect(login.some((m) => m.type === 'R' && m.body.readInt32BE(0) === 0)).toBe(true);
    const answer = await (async () => {
      s.write(frame('Q', Buffer.from(`SELECT current_user || ' ' || (${UPSTREAM_SSL})::text\0`)));
      return untilReady(next);
    })();
    const row = answer.find((m) => m.type === 'D')!;
    expect(row.body.subarray(6).toString()).toBe('md5user true');
    s.write(frame('X', Buffer.alloc(0)));
    s.end();
  });

  it('ALPN without postgresql gets the no_application_protocol alert, as from PostgreSQL 17', async () => {
    await expect(directTls(via.port, ['http/1.1'])).rejects.toThrow(/no application protocol/i);
  });

  it('no ALPN at all: the handshake completes, then the connection is closed without a word', async () => {
    const s = await directTls(via.port, undefined);
    const got: Buffer[] = [];
    s.on('data', (d) => got.push(d));
    s.write(startupPacket(3 << 16, { user: 'trustuser', database: 'app' }));
    await new Promise((r) => s.once('close', r));
    expect(Buffer.concat(got).length).toBe(0);
  });

  it('with tls.client disable a ClientHello is closed without a word (no plain-text error into a TLS stream)', async () => {
    const off = await proxy({ client: { mode: 'disable' } });
    await expect(directTls(off.port, ['postgresql'])).rejects.toThrow(/socket disconnected|ECONNRESET/i);
  });

  it('a second SSLRequest inside TLS is refused as the server refuses it', async () => {
    const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const raw = net.connect(via.port, '127.0.0.1', () => raw.write(Buffer.concat([int32(8), int32(80877103)])));
      raw.once('data', (d: Buffer) => {
        expect(d.toString()).toBe('S');
        const t = tls.connect({ socket: raw, ca: ca.certPem, servername: 'localhost' });
        t.once('secureConnect', () => resolve(t));
        t.once('error', reject);
      });
    });
    const next = reader(s as unknown as net.Socket);
    s.write(Buffer.concat([int32(8), int32(80877103)]));
    const m = await next();
    expect(m.type).toBe('E');
    expect(m.body.toString()).toMatch(/unsupported frontend protocol 1234\.5679/);
    s.destroy();
  });
});

describe('certificate reload on SIGHUP', () => {
  let child: ChildProxy | null = null;
  afterAll(async () => {
    await child?.kill('SIGTERM');
  });

  it('new sessions see the new certificate, an open session keeps working', async () => {
    const certPath = path.join(pki.dir, 'live.crt');
    const keyPath = path.join(pki.dir, 'live.key');
    copyFileSync(proxyA.cert, certPath);
    copyFileSync(proxyA.key, keyPath);
    child = await startChildProxy(
      ['--upstream', `127.0.0.1:${cluster.port}`, '--tls-client-mode', 'require', '--tls-client-cert', certPath, '--tls-client-key', keyPath],
      { PGBG_TLS_SERVER_MODE: 'verify-full', PGBG_TLS_SERVER_CA: ca.cert, PGBG_LOG_LEVEL: 'info' },
    );
    const clientFor = () =>
      new pg.Client({ host: '127.0.0.1', port: child!.port, user: 'alice', password: 'alice-secret', database: 'app', ssl: { ca: ca.certPem.toString(), servername: 'localhost' } });
    const peerSerial = (c: pg.Client) => ((c as unknown as { connection: { stream: tls.TLSSocket } }).connection.stream.getPeerCertificate().serialNumber);
    const before = clientFor();
    await before.connect();
    expect(peerSerial(before)).toBe('A001');
    expect((await before.query(UPSTREAM_SSL)).rows[0].ssl).toBe(true);

    copyFileSync(proxyB.cert, certPath);
    copyFileSync(proxyB.key, keyPath);
    child.child.kill('SIGHUP');
    const deadline = Date.now() + 10_000;
    while (!/client TLS configuration loaded.*pgbg-proxy-b/s.test(child.output()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(child.output()).toMatch(/client TLS configuration loaded/);

    const after = clientFor();
    await after.connect();
    expect(peerSerial(after)).toBe('B002');
    expect(new X509Certificate(((after as unknown as { connection: { stream: tls.TLSSocket } }).connection.stream.getPeerCertificate() as tls.DetailedPeerCertificate).raw).subject).toBe('CN=pgbg-proxy-b');
    expect((await after.query('select 2 AS n')).rows[0].n).toBe(2);
    // The session opened before the reload keeps its TLS connection and goes on working.
    expect((await before.query('select 1 AS n')).rows[0].n).toBe(1);
    expect(peerSerial(before)).toBe('A001');

    // A reload whose files cannot be used keeps the certificate in use.
    copyFileSync(proxyA.cert, certPath); // key of B with cert of A: they do not match
    child.child.kill('SIGHUP');
    const deadline2 = Date.now() + 10_000;
    while (!/client TLS configuration was not reloaded/.test(child.output()) && Date.now() < deadline2) await new Promise((r) => setTimeout(r, 50));
    expect(child.output()).toMatch(/client TLS configuration was not reloaded/);
    const third = clientFor();
    await third.connect();
    expect(peerSerial(third)).toBe('B002');
    await Promise.all([before.end(), after.end(), third.end()]);
  });
});

describe('tls.server against a server without TLS (the shared cluster, ssl = off)', () => {
  it('prefer goes on in plain text after N; require refuses with libpq\'s words', async () => {
    const plainServer = getCluster();
    const prefer = await startTestProxy(plainServer, { tls: { server: { mode: 'prefer' } }, jobs: { enabled: false } });
    proxies.push(prefer);
    const ok = await prefer.psql(['-At', '-c', 'select current_user'], { user: 'alice' });
    expect(ok.stderr).toBe('');
    expect(ok.stdout.trim()).toBe('alice');
    const require = await startTestProxy(plainServer, { tls: { server: { mode: 'require' } }, jobs: { enabled: false } });
    proxies.push(require);
    const refused = await require.psql(['-c', 'select 1'], { user: 'alice' });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/pgbg-proxy could not connect to the server/);
    expect(refused.stderr).toMatch(/server does not support SSL, but SSL was required \(tls\.server\.mode = require\)/);
  });
});

describe("the proxy's own connections over tls.server", () => {
  it('migrate on start, the admin console login and its registry reads all reach the hostssl-only server', async () => {
    const db = await cluster.createDatabase();
    const registryUrl = cluster.url('postgres', db);
    const via = await startTestProxy(cluster, {
      tls: { client: { mode: 'require', cert: proxyA.cert, key: proxyA.key }, server: verifyFullUpstream() },
      jobs: { enabled: true, registryUrl, migrateOnStart: true },
    });
    proxies.push(via);
    // migrateOnStart ran over TLS (plain TCP is refused by this server): the registry exists.
    const direct = await cluster.psql(['-At', '-c', `SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = 'pgbg'`], { user: 'trustuser', database: db, env: libpq('verify-full') });
    expect(direct.stdout.trim()).toBe('1');
    // The console's login is relayed to the server over TLS, its SHOW JOBS reads the registry over TLS.
    const r = await via.psql(['-At', '-c', 'SHOW JOBS'], { user: 'postgres', database: 'pgbg', env: libpq('verify-full', { PGCHANNELBINDING: 'disable' }) });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const clients = await via.psql(['-At', '-c', 'SHOW HELP'], { user: 'postgres', database: 'pgbg', env: libpq('verify-full', { PGCHANNELBINDING: 'disable' }) });
    expect(clients.stdout).toContain('SHOW JOBS');
  });
});

describe('node-postgres with ssl through the proxy', () => {
  it('verifies the proxy against the CA, authenticates with SCRAM, and the upstream leg is TLS', async () => {
    const via = await proxy({ client: { mode: 'require', cert: proxyA.cert, key: proxyA.key }, server: verifyFullUpstream() });
    const c = new pg.Client({ host: 'localhost', port: via.port, user: 'alice', password: 'alice-secret', database: 'app', ssl: { ca: ca.certPem.toString() } });
    await c.connect();
    try {
      const r = await c.query(`SELECT current_user AS u, (${UPSTREAM_SSL}) AS ssl, $1::int + 1 AS n`, [41]);
      expect(r.rows[0]).toEqual({ u: 'alice', ssl: true, n: 42 });
    } finally {
      await c.end();
    }
    // Cancel: a plain-text CancelRequest (as libpq before 17 sends it) is honoured in require
    // mode, and the proxy's CancelRequest reaches the hostssl-only server over TLS.
    const busy = new pg.Client({ host: 'localhost', port: via.port, user: 'alice', password: 'alice-secret', database: 'app', ssl: { ca: ca.certPem.toString() } });
    await busy.connect();
    try {
      const keys = busy as unknown as { processID: number; secretKey: number };
      const sleeping = busy.query('SELECT pg_sleep(30)');
      const caught = sleeping.catch((e: { code?: string }) => e);
      await new Promise((r) => setTimeout(r, 300));
      const started = Date.now();
      await new Promise<void>((resolve, reject) => {
        const s = net.connect(via.port, '127.0.0.1', () => s.end(Buffer.concat([int32(16), int32(80877102), int32(keys.processID), int32(keys.secretKey)])));
        s.on('close', () => resolve());
        s.on('error', reject);
      });
      expect(((await caught) as { code?: string }).code).toBe('57014');
      expect(Date.now() - started).toBeLessThan(5000);
      expect((await busy.query('select 1 AS n')).rows[0].n).toBe(1);
    } finally {
      await busy.end();
    }
    const wrong = new pg.Client({ host: 'localhost', port: via.port, user: 'alice', password: 'alice-secret', database: 'app', ssl: { ca: wrongCa.certPem.toString() } });
    await expect(wrong.connect()).rejects.toThrow(/self-signed certificate|unable to verify/);
  });
});
