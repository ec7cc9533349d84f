/**
 * The whole job path under unusual but legal client session settings (issue 11, item 9): each
 * test sets one setting in the client's session, submits a hinted job through the proxy and
 * checks that it succeeds with the effect the client would expect. Where it matters, a second
 * job of a rule limited to one at a time is queued too, so the later launch from the same
 * session (pgbg.launch_if_admitted) runs under the setting as well.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { getCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { registryDatabase, submit, waitJob } from '../support/jobs.js';
import { frame, reader, startupPacket } from '../support/wire.js';

const cluster = getCluster();
let db: string;
let observer: pg.Client;
let via: TestProxy;
const clients: pg.Client[] = [];

beforeAll(async () => {
  db = await registryDatabase(cluster);
  observer = await cluster.connect({ database: db });
  await observer.query(`
    CREATE TABLE notes (tag text, v text);
    CREATE TABLE blobs (tag text, b bytea);
    GRANT ALL ON notes, blobs TO PUBLIC;
    -- A schema that shadows pg_catalog's text equality and clock, for search_path tests.
    CREATE SCHEMA shadow;
    GRANT USAGE ON SCHEMA shadow TO PUBLIC;
    CREATE FUNCTION shadow.never_equal(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
    CREATE OPERATOR shadow.= (LEFTARG = text, RIGHTARG = text, FUNCTION = shadow.never_equal);
    CREATE FUNCTION shadow.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$SELECT '2000-01-01 00:00:00+00'::timestamptz$$;
  `);
  via = await startTestProxy(cluster, {
    jobs: { supervisePoll: 20 },
    rules: [{ name: 'gate', match: { pattern: 'ss_gate' }, maxInFlight: 1 }],
  });
});
afterAll(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
  await observer?.end();
  await via?.close();
});

async function session(setup: string[], user = 'alice'): Promise<pg.Client> {
  const c = await via.connect({ user, database: db });
  clients.push(c);
  for (const s of setup) await c.query(s);
  return c;
}

async function note(tag: string): Promise<string[]> {
  return (await observer.query('SELECT v FROM notes WHERE tag = $1 ORDER BY v', [tag])).rows.map((r) => r.v);
}

/** A job of rule "gate" that holds its one slot for a moment, so the next gate job queues. */
async function holdGate(c: pg.Client): Promise<string> {
  return submit(c, 'SELECT pg_sleep(0.3) /* ss_gate */');
}

describe('client session settings do not change what a job does (item 9)', () => {
  it('standard_conforming_strings = off: a hinted statement with \\\' is backgrounded and means what the session says', async () => {
    const c = await session(['SET standard_conforming_strings = off']);
    expect((await c.query('SHOW standard_conforming_strings')).rows[0].standard_conforming_strings).toBe('off');
    const id = await submit(c, "/*+ background */ INSERT INTO notes VALUES ('scs', 'it\\'s')");
    expect(await waitJob(observer, id)).toMatchObject({ state: 'succeeded', command_tag: 'INSERT 0 1' });
    expect(await note('scs')).toEqual(["it's"]);
    // A backslash in a comment or an E'' string is no escape of the literal around it.
    const id2 = await submit(c, "/*+ background */ INSERT INTO notes VALUES ('scs', E'a\\\\b' || 'c\\'d') -- it\\'s");
    expect((await waitJob(observer, id2)).state).toBe('succeeded');
    expect(await note('scs')).toEqual(['a\\bc\'d', "it's"]);
    // A row-returning job whose statement ends in "s" keeps its last letter.
    const rows = await submit(c, "/*+ background */ SELECT v FROM notes WHERE tag = 'scs' AND v LIKE 'it%s'");
    expect((await waitJob(observer, rows)).state).toBe('succeeded');
    expect((await c.query('SELECT r FROM pgbg.result($1) r', [rows])).rows.map((r) => r.r)).toEqual([{ v: "it's" }]);
    // The queued launch path and load-aware admission (pgbg._server_busy) under the setting.
    await holdGate(c);
    const queued = await c.query("INSERT INTO notes VALUES ('scs', 'queued\\'s') /* ss_gate */");
    expect(queued.rows[0].state).toBe('queued');
    expect((await waitJob(observer, String(queued.rows[0].job_id))).state).toBe('succeeded');
    expect(await note('scs')).toContain("queued's");
    const busy = await observer.query(`SELECT pgbg._server_busy('{"busy_active_backends": 1000}') AS b`);
    expect(busy.rows[0].b).toBe(false);
    await observer.query('SET standard_conforming_strings = off');
    expect((await observer.query(`SELECT pgbg._server_busy('{"busy_active_backends": 1000}') AS b`)).rows[0].b).toBe(false);
    await observer.query('RESET standard_conforming_strings');
  });

  it('search_path empty', async () => {
    const c = await session(["SET search_path = ''"]);
    const id = await submit(c, "/*+ background */ INSERT INTO public.notes VALUES ('empty_path', pg_catalog.current_setting('search_path'))");
    expect((await waitJob(observer, id)).state).toBe('succeeded');
    expect(await note('empty_path')).toEqual(['""']);
    await holdGate(c);
    const q = await submit(c, "INSERT INTO public.notes VALUES ('empty_path', 'queued') /* ss_gate */");
    expect((await waitJob(observer, q)).state).toBe('succeeded');
  });

  it('search_path with a schema that shadows pg_catalog operators and functions', async () => {
    const c = await session(['SET search_path = shadow, pg_catalog, public']);
    // The shadowing is real in this session.
    expect((await c.query("SELECT 'a'::text = 'a'::text AS eq")).rows[0].eq).toBe(false);
    const id = await submit(c, "/*+ background */ INSERT INTO notes VALUES ('shadow', 'plain')");
    { const j = await waitJob(observer, id); expect(j.state, JSON.stringify(j)).toBe("succeeded"); }
    const rows = await submit(c, "/*+ background */ SELECT tag, v FROM notes WHERE tag OPERATOR(pg_catalog.=) 'shadow'");
    expect((await waitJob(observer, rows)).state).toBe('succeeded');
    expect((await c.query('SELECT r FROM pgbg.result($1) r', [rows])).rows.map((r) => r.r)).toEqual([{ tag: 'shadow', v: 'plain' }]);
    await holdGate(c);
    const q = await submit(c, "INSERT INTO notes VALUES ('shadow', 'queued') /* ss_gate */");
    expect((await waitJob(observer, q)).state).toBe('succeeded');
    expect(await note('shadow')).toEqual(['plain', 'queued']);
  });

  it('DateStyle SQL, DMY with not_before', async () => {
    const c = await session(["SET DateStyle = 'SQL, DMY'"]);
    const at = new Date(Date.now() + 1500);
    const id = await submit(c, `/*+ background(not_before='${at.toISOString()}') */ INSERT INTO notes VALUES ('datestyle', pg_catalog.current_setting('DateStyle'))`);
    const job = await waitJob(observer, id);
    expect(job.state).toBe('succeeded');
    expect(new Date(job.started_at).getTime()).toBeGreaterThanOrEqual(at.getTime() - 50);
    expect(await note('datestyle')).toEqual(['SQL, DMY']);
  });

  it('IntervalStyle iso_8601', async () => {
    const c = await session(["SET IntervalStyle = 'iso_8601'"]);
    const id = await submit(c, "/*+ background(timeout=90s) */ INSERT INTO notes VALUES ('intervalstyle', (interval '90 minutes')::text)");
    expect((await waitJob(observer, id)).state).toBe('succeeded');
    expect(await note('intervalstyle')).toEqual(['PT1H30M']);
  });

  it('TimeZone far from UTC with not_before', async () => {
    const c = await session(["SET TimeZone = 'Pacific/Chatham'"]);
    const at = new Date(Date.now() + 1000);
    const id = await submit(c, `/*+ background(not_before='${at.toISOString()}') */ INSERT INTO notes VALUES ('timezone', pg_catalog.current_setting('TimeZone'))`);
    const job = await waitJob(observer, id);
    expect(job.state).toBe('succeeded');
    expect(new Date(job.started_at).getTime()).toBeGreaterThanOrEqual(at.getTime() - 50);
    expect(await note('timezone')).toEqual(['Pacific/Chatham']);
  });

  it('extra_float_digits', async () => {
    const c = await session(['SET extra_float_digits = -10']);
    const expected = (await c.query('SELECT (0.1::float8 + 0.2)::text AS v')).rows[0].v;
    const id = await submit(c, "/*+ background */ INSERT INTO notes VALUES ('float', (0.1::float8 + 0.2)::text)");
    expect((await waitJob(observer, id)).state).toBe('succeeded');
    expect(await note('float')).toEqual([expected]);
  });

  it('bytea_output escape with a bytea parameter', async () => {
    const c = await session(["SET bytea_output = 'escape'"]);
    const bytes = Buffer.from([0, 1, 2, 0x5c, 0x27, 0x7f, 0x80, 0xff]);
    const id = await submit(c, "/*+ background */ INSERT INTO blobs VALUES ('escape', $1)", [bytes]);
    expect((await waitJob(observer, id)).state).toBe('succeeded');
    const r = await observer.query("SELECT b FROM blobs WHERE tag = 'escape'");
    expect(Buffer.compare(r.rows[0].b, bytes)).toBe(0);
  });

  it('lc_messages (a superuser setting)', async () => {
    const c = await session(["SET lc_messages = 'C'"], 'postgres');
    const id = await submit(c, '/*+ background */ SELECT 1 / 0');
    expect(await waitJob(observer, id)).toMatchObject({ state: 'failed', sqlstate: '22012', error: 'division by zero' });
    const ok = await submit(c, "/*+ background */ INSERT INTO notes VALUES ('lc_messages', 'ok')");
    expect((await waitJob(observer, ok)).state).toBe('succeeded');
  });

  it('client_encoding LATIN1 with non-ASCII text in the statement', async () => {
    const socket = net.connect(via.port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    const next = reader(socket);
    const untilReady = async () => {
      const out: { type: string; body: Buffer }[] = [];
      for (;;) {
        const m = await next();
        out.push(m);
        if (m.type === 'Z') return out;
      }
    };
    socket.write(startupPacket(3 << 16, { user: 'trustuser', database: db, client_encoding: 'LATIN1' }));
    const hello = await untilReady();
    expect(hello.some((m) => m.type === 'S' && m.body.toString('latin1').startsWith('client_encoding\0LATIN1'))).toBe(true);
    socket.write(frame('Q', Buffer.from("/*+ background */ INSERT INTO notes VALUES ('latin1', 'café ñ ü')\0", 'latin1')));
    const answer = await untilReady();
    const row = answer.find((m) => m.type === 'D');
    expect(answer.find((m) => m.type === 'E')?.body.toString('latin1')).toBeUndefined();
    expect(row).toBeDefined();
    // DataRow: count(2) len(4) job_id ...
    const idLen = row!.body.readInt32BE(2);
    const id = row!.body.subarray(6, 6 + idLen).toString('latin1');
    socket.end(frame('X', Buffer.alloc(0)));
    expect((await waitJob(observer, id)).state).toBe('succeeded');
    expect(await note('latin1')).toEqual(['café ñ ü']);
    const stmt = await observer.query('SELECT statement FROM pgbg.job WHERE id = $1', [id]);
    expect(stmt.rows[0].statement).toContain('café ñ ü');
  });

  it('default_transaction_read_only = on: the job row still commits and the job may write', async () => {
    const c = await session(['SET default_transaction_read_only = on']);
    const id = await submit(c, "/*+ background */ INSERT INTO notes VALUES ('read_only', 'written')");
    expect((await waitJob(observer, id)).state).toBe('succeeded');
    expect(await note('read_only')).toEqual(['written']);
    await holdGate(c);
    const q = await submit(c, "INSERT INTO notes VALUES ('read_only', 'queued') /* ss_gate */");
    expect((await waitJob(observer, q)).state).toBe('succeeded');
    expect(await note('read_only')).toEqual(['queued', 'written']);
    // The session's own setting is untouched.
    expect((await c.query('SHOW default_transaction_read_only')).rows[0].default_transaction_read_only).toBe('on');
    expect((await c.query('SHOW transaction_read_only')).rows[0].transaction_read_only).toBe('on');
  });

  it('default_transaction_isolation = serializable: submissions from many sessions at once all commit', async () => {
    const sessions = await Promise.all(Array.from({ length: 6 }, () => session(["SET default_transaction_isolation = 'serializable'"])));
    const ids = (
      await Promise.all(sessions.map((c, i) => Promise.all([0, 1, 2].map((k) => submit(c, `/*+ background */ INSERT INTO notes VALUES ('serializable', '${i}-${k}')`)))))
    ).flat();
    for (const id of ids) expect((await waitJob(observer, id)).state).toBe('succeeded');
    expect((await note('serializable')).length).toBe(18);
    // A job runs READ COMMITTED whatever the session's default (its worker must see its own
    // row commit after it started); the session keeps its own.
    const c = sessions[0];
    const id = await submit(c, "/*+ background */ INSERT INTO notes VALUES ('serializable_level', pg_catalog.current_setting('transaction_isolation'))");
    expect((await waitJob(observer, id)).state).toBe('succeeded');
    expect(await note('serializable_level')).toEqual(['read committed']);
    expect((await c.query('SHOW transaction_isolation')).rows[0].transaction_isolation).toBe('serializable');
  });

  it("statement_timeout on the session bounds neither the submission nor the job", async () => {
    const c = await session(["SET statement_timeout = '40ms'"]);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await submit(c, "/*+ background */ SELECT pg_sleep(0.3)"));
    for (const id of ids) expect((await waitJob(observer, id)).state).toBe('succeeded');
    await holdGate(c);
    const q = await submit(c, "INSERT INTO notes VALUES ('timeout', 'queued') /* ss_gate */");
    expect((await waitJob(observer, q)).state).toBe('succeeded');
    expect((await c.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('40ms');
  });
});
