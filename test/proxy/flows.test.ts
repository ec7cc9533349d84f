import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import pg from 'pg';
import { getCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { authenticatedSocket, copyIn, copyOut, frame, int32, rawExchange, sendAndReadUntilReady, sha, startupPacket } from '../support/wire.js';

let via: TestProxy;
const cluster = getCluster();

beforeAll(async () => {
  via = await startTestProxy(cluster);
  await cluster.query('CREATE TABLE IF NOT EXISTS flows_copy (id int, payload text)');
  await cluster.query('GRANT ALL ON flows_copy TO PUBLIC');
});
afterAll(async () => {
  await via?.close();
});

describe('authentication passes through', () => {
  it('lets SCRAM, md5 and trust users in and reaches the right role', async () => {
    for (const user of ['alice', 'md5user', 'trustuser', 'postgres']) {
      const r = await via.query('SELECT current_user AS u, pg_backend_pid() AS pid', [], { user });
      expect(r.rows[0].u).toBe(user);
    }
  });

  it('passes the server’s own error for a wrong password', async () => {
    const err = await via.query('SELECT 1', [], { user: 'alice', password: 'wrong' }).catch((e) => e);
    expect(err.code).toBe('28P01');
    expect(err.message).toMatch(/password authentication failed for user "alice"/);
  });

  it('works for psql with sslmode=prefer (the proxy answers N) as a SCRAM and as a trust user', async () => {
    for (const user of ['alice', 'trustuser']) {
      const r = await via.psql(['-Atc', 'SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'], {
        user,
        env: { PGSSLMODE: 'prefer' },
      });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe(`${user}|f`);
    }
  });

  it('refuses sslmode=require clearly and a foreign protocol version with an error', async () => {
    const r = await via.psql(['-Atc', 'SELECT 1'], { user: 'alice', env: { PGSSLMODE: 'require' } });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/server does not support SSL/);
    const answer = await rawExchange(via.port, startupPacket(2 << 16, { user: 'alice' }));
    expect(answer[0]).toBe(0x45);
    expect(answer.toString('latin1')).toMatch(/unsupported frontend protocol 2\.0/);
  });

  it('forwards startup parameters (application_name, options)', async () => {
    const client = new pg.Client({ ...via.clientConfig({ user: 'alice' }), application_name: 'flows-test', options: '-c work_mem=7MB' });
    await client.connect();
    const r = await client.query("SELECT current_setting('application_name') AS a, current_setting('work_mem') AS w");
    await client.end();
    expect(r.rows[0]).toEqual({ a: 'flows-test', w: '7MB' });
  });
});

describe('protocol flows', () => {
  it('runs multi-statement simple queries with notices and parameter status', async () => {
    const client = await via.connect({ user: 'alice' });
    const notices: string[] = [];
    client.on('notice', (n) => notices.push(String(n.message)));
    const results = (await client.query("SELECT 1 AS a; DO $$BEGIN RAISE NOTICE 'hello %', 42; END$$; SET application_name = 'changed'; SELECT 'two' AS b")) as unknown as pg.QueryResult[];
    expect(results.map((r) => r.command)).toEqual(['SELECT', 'DO', 'SET', 'SELECT']);
    expect(results[3].rows).toEqual([{ b: 'two' }]);
    expect(notices).toEqual(['hello 42']);
    expect((client as any).processID).toBeGreaterThan(0);
    await client.end();
  });

  it('runs extended queries: named statements, binary results, pipelining, errors mid-pipeline', async () => {
    const client = await via.connect({ user: 'alice' });
    const named = { name: 'flows_named', text: 'SELECT $1::int + $2::int AS s, $3::bytea AS b', values: [20, 22, Buffer.from([0, 1, 255])] };
    expect((await client.query(named)).rows).toEqual([{ s: 42, b: Buffer.from([0, 1, 255]) }]);
    expect((await client.query({ ...named, values: [1, 2, Buffer.from('x')] })).rows[0].s).toBe(3);
    const binary = await client.query({ text: 'SELECT 12345678901::int8 AS n, 1.5::float8 AS f', binary: true } as any);
    expect(binary.rows[0].n).toBeDefined();
    // node-postgres pipelines queued queries; an error in one must not disturb the others.
    const queued = await Promise.allSettled([
      client.query('SELECT $1::text AS v', ['a']),
      client.query('SELECT 1/0'),
      client.query('SELECT $1::text AS v', ['c']),
    ]);
    expect(queued.map((q) => q.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(((queued[1] as PromiseRejectedResult).reason as any).code).toBe('22012');
    expect((queued[2] as PromiseFulfilledResult<pg.QueryResult>).value.rows).toEqual([{ v: 'c' }]);
    await client.end();
  });

  it('relays named portals with row limits and Close, over a raw pipeline', async () => {
    const client = await via.connect({ user: 'alice' });
    await client.query('BEGIN');
    const cursor = await client.query("DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 5) g");
    expect(cursor.command).toBe('DECLARE');
    expect((await client.query('FETCH 2 FROM c')).rows).toEqual([{ g: 1 }, { g: 2 }]);
    await client.query('COMMIT');
    await client.end();
  });

  it('copies 100,000 rows in and out with identical checksums', async () => {
    const client = await via.connect({ user: 'alice' });
    await client.query('TRUNCATE flows_copy');
    const lines: string[] = [];
    for (let i = 0; i < 100_000; i++) lines.push(`${i}\tpayload-${i}-${'x'.repeat(i % 50)}`);
    const input = lines.join('\n') + '\n';
    const copied = await copyIn(via.port, 'trustuser', 'COPY flows_copy FROM STDIN', input);
    expect(copied).toBe('COPY 100000');
    const out = await copyOut(via.port, 'trustuser', 'COPY (SELECT * FROM flows_copy ORDER BY id) TO STDOUT');
    expect(sha(out)).toBe(sha(input));
    const server = await cluster.query("SELECT count(*)::int AS n, md5(string_agg(id || E'\\t' || payload, E'\\n' ORDER BY id) || E'\\n') AS h FROM flows_copy");
    expect(server.rows[0]).toEqual({ n: 100_000, h: createHash('md5').update(input).digest('hex') });
    await client.end();
  });

  it('delivers NOTIFY to a listening client while it is idle', async () => {
    const listener = await via.connect({ user: 'alice' });
    const got = new Promise<pg.Notification>((resolve) => listener.on('notification', resolve));
    await listener.query('LISTEN flows_channel');
    await via.query("SELECT pg_notify('flows_channel', 'hi there')", [], { user: 'bob' });
    const n = await got;
    expect(n).toMatchObject({ channel: 'flows_channel', payload: 'hi there' });
    await listener.end();
  });

  it('relays a FunctionCall message and Terminate', async () => {
    const oid = (await cluster.query("SELECT 'int4pl(int4,int4)'::regprocedure::oid::int AS oid")).rows[0].oid;
    const socket = await authenticatedSocket(via.port, 'trustuser');
    const args = Buffer.alloc(2 + 2 + 2 + (4 + 4) * 2 + 2);
    let p = 0;
    p = args.writeInt16BE(0, p); // all args text? no formats => text
    p = args.writeInt16BE(2, p);
    for (const v of ['40', '2']) {
      const b = Buffer.from(v);
      p = args.writeInt32BE(b.length, p);
      p += b.copy(args, p);
    }
    p = args.writeInt16BE(0, p);
    const body = Buffer.concat([int32(oid), args.subarray(0, p)]);
    const answer = await sendAndReadUntilReady(socket, frame('F', body));
    const v = answer.find((m) => m.type === 'V')!;
    expect(v.body.subarray(4).toString()).toBe('42');
    socket.end(frame('X', Buffer.alloc(0)));
  });
});

