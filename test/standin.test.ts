/**
 * The pg_background API of the test cluster -- the real extension where the server has it,
 * the dblink stand-in (test/fixtures) otherwise or with PGBG_TEST_PG_BACKGROUND=standin. The
 * same assertions must hold for both; where they are known to differ, the test says so and
 * checks each side (the list is in test/fixtures/README.md). The stand-in mirrors 1.8; on 2.x
 * the handle API has the unsuffixed names, and where 2.x behaves differently from 1.8 the test
 * checks 2.x's behaviour (measured on 2.0).
 *
 *   npx vitest run test/standin.test.ts                                  # default: real extension where installed
 *   PGBG_TEST_PG_BACKGROUND=2.0 npx vitest run test/standin.test.ts      # 1.8, 2.0 or standin
 */
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { eventually, getCluster, pgBackgroundNames, pgErrorOf, type ConnectOptions } from './harness/index.js';

const cluster = getCluster();
const standin = cluster.pgBackground === 'standin';
/** pg_background 2.x: the v1 API is gone and the unsuffixed names are the handle API. */
const is2x = /^[2-9]\./.test(cluster.extVersion);
const api = pgBackgroundNames(cluster);
/** Waits until the worker stops (2.x: wait with timeout 0 blocks; 1.8: wait_v2 has no timeout). */
const WAIT_BLOCKING = is2x ? 'pg_background_wait' : 'pg_background_wait_v2';
/** A wait that returns at once (2.x treats a timeout of 0 as "for ever"). */
const POLL_MS = is2x ? 1 : 0;
let db: string;
const open: pg.Client[] = [];

async function session(user = 'postgres', extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const client = new pg.Client({ ...cluster.clientConfig({ user, database: db }), ...extra });
  await client.connect();
  open.push(client);
  return client;
}

function q<R extends pg.QueryResultRow = any>(sql: string, params: unknown[] = [], opts: ConnectOptions = {}) {
  return cluster.query<R>(sql, params, { database: db, ...opts });
}

interface Handle {
  pid: number;
  cookie: string;
}

async function launch(c: pg.Client, sql: string, fn = api.launch): Promise<Handle> {
  const r = await c.query<Handle>(`select (h).pid, (h).cookie from (select ${fn}($1) h) s`, [sql]);
  return r.rows[0]!;
}

async function resultText(c: pg.Client, h: Handle): Promise<string[]> {
  const r = await c.query<{ r: string }>(`select * from ${api.result}($1, $2) as (r text)`, [h.pid, h.cookie]);
  return r.rows.map((x) => x.r);
}

beforeAll(async () => {
  db = await cluster.createDatabase();
  await q(`
    create table accounts (id int primary key, balance int not null, touched_by text);
    insert into accounts select g, 100, null from generate_series(1, 5) g;
    grant select, update on accounts to alice;
    create table events (id serial primary key, note text, by_user text default current_user,
                         by_session text default session_user, app text default current_setting('application_name'));
    grant select, insert, update on events to alice, bob;
    grant usage on sequence events_id_seq to alice, bob;
    create schema elsewhere;
    create table elsewhere.marker (v text);
    insert into elsewhere.marker values ('found via search_path');
    grant usage on schema elsewhere to alice;
    grant select on elsewhere.marker to alice;
  `);
});

afterEach(async () => {
  while (open.length) await open.pop()!.end().catch(() => undefined);
});

afterAll(async () => {
  await cluster.query(`drop database if exists "${db}" with (force)`).catch(() => undefined);
});

describe(`pg_background API (${standin ? 'dblink stand-in' : 'real extension'})`, () => {
  it('launches an UPDATE as the calling role and returns its command tag', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `update accounts set balance = balance + 1, touched_by = current_user where id <= 3`);
    expect(h.pid).toBeGreaterThan(0);
    expect(h.pid).not.toBe((await alice.query('select pg_backend_pid() p')).rows[0].p);
    expect(await resultText(alice, h)).toEqual(['UPDATE 3']);
    const r = await q<{ n: string }>(`select count(*) n from accounts where touched_by = 'alice' and balance = 101`);
    expect(r.rows[0]!.n).toBe('3');
  });

  it('a role without privilege on the table gets 42501 from the result', async () => {
    const bob = await session('bob');
    const h = await launch(bob, `update accounts set balance = 0`);
    const err = await pgErrorOf(resultText(bob, h));
    expect(err.code).toBe('42501');
    expect(err.message).toBe('permission denied for table accounts');
    expect((await q<{ n: string }>('select count(*) n from accounts where balance = 0')).rows[0]!.n).toBe('0');
  });

  it('a role without pg_background privileges cannot launch (42501)', async () => {
    const role = `nobg_${process.pid}_${Date.now().toString(36)}`;
    await q(`create role ${role} login password 'x'`);
    try {
      const err = await pgErrorOf(q(`select ${api.launch}('select 1')`, [], { user: role, password: 'x' }));
      expect(err.code).toBe('42501');
      expect(err.message).toBe(`permission denied for function ${api.launch}`);
    } finally {
      await q(`drop role ${role}`);
    }
  });

  it(`${is2x ? 'pg_background_grant_privileges' : 'grant_pg_background_privileges'}() is the other way to give a role access`, async () => {
    const role = `direct_${process.pid}_${Date.now().toString(36)}`;
    // 2.0 renamed the privilege helpers (grant_/revoke_pg_background_privileges -> pg_background_grant_/revoke_privileges)
    const [grant, revoke] = is2x
      ? ['pg_background_grant_privileges', 'pg_background_revoke_privileges']
      : ['grant_pg_background_privileges', 'revoke_pg_background_privileges'];
    await q(`create role ${role} login password 'x'`);
    try {
      await q(`select ${grant}($1)`, [role]);
      const r = await q<{ x: string }>(
        is2x
          ? `select r.x from (select pg_background_launch('select current_user::text') h) s, pg_background_result((s.h).pid, (s.h).cookie) as r(x text)`
          : `select * from pg_background_result(pg_background_launch('select current_user::text')) as (x text)`,
        [],
        { user: role, password: 'x' },
      );
      expect(r.rows).toEqual([{ x: role }]);
      await q(`select ${revoke}($1)`, [role]);
      expect((await pgErrorOf(q(`select pg_background_launch('select 1')`, [], { user: role, password: 'x' }))).code).toBe('42501');
    } finally {
      await q(`drop owned by ${role}; drop role ${role}`);
    }
  });

  it('runs as current_user after SET ROLE, authenticated as session_user', async () => {
    const admin = await session('postgres');
    await admin.query('set role alice');
    const h = await launch(admin, `insert into events(note) values ('set role')`);
    expect(await resultText(admin, h)).toEqual(['INSERT 0 1']);
    const r = await q<{ by_user: string; by_session: string }>(`select by_user, by_session from events where note = 'set role'`);
    expect(r.rows).toEqual([{ by_user: 'alice', by_session: 'postgres' }]);
  });

  it(`carries the launching session's search_path${is2x ? '; 2.x names the worker pg_background:<worker pid>' : ' and application_name'}`, async () => {
    const alice = await session('alice', { application_name: 'pgbg-test-app' });
    await alice.query('set search_path = elsewhere, public');
    const h = await launch(alice, `select v || ' / ' || current_setting('application_name') from marker`);
    expect(await resultText(alice, h)).toEqual([`found via search_path / ${is2x ? `pg_background:${h.pid}` : 'pgbg-test-app'}`]);
  });

  it('returns the rows of a SELECT with the caller’s column definition list', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `select id, balance, touched_by from accounts where id in (4, 5) order by id`);
    const r = await alice.query(`select * from ${api.result}($1, $2) as (id int, balance int, touched_by text)`, [h.pid, h.cookie]);
    expect(r.rows).toEqual([
      { id: 4, balance: 100, touched_by: null },
      { id: 5, balance: 100, touched_by: null },
    ]);
  });

  it('returns the rows of the last statement of a multi-statement string', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `update accounts set balance = balance where id = 1; select 7 as seven`);
    const r = await alice.query(`select * from ${api.result}($1, $2) as (x int)`, [h.pid, h.cookie]);
    expect(r.rows).toEqual([{ x: 7 }]);
  });

  it('re-raises the worker’s error with its SQLSTATE (division_by_zero = 22012)', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `select 1/0`);
    const err = await pgErrorOf(resultText(alice, h));
    expect(err.code).toBe('22012');
    expect(err.message).toBe('division by zero');
  });

  it('re-raises errors with detail (unique_violation = 23505) and commits nothing', async () => {
    const admin = await session('postgres');
    const h = await launch(admin, `update accounts set balance = 1 where id = 2; insert into accounts values (1, 1)`);
    const err = await pgErrorOf(resultText(admin, h));
    expect(err.code).toBe('23505');
    expect(err.message).toBe('duplicate key value violates unique constraint "accounts_pkey"');
    expect(err.detail).toBe('Key (id)=(1) already exists.');
    expect((await q<{ b: number }>('select balance b from accounts where id = 2')).rows[0]!.b).not.toBe(1);
  });

  it(`${api.wait} with a timeout is false while the worker runs and true once it is done`, async () => {
    const alice = await session('alice');
    const h = await launch(alice, `select pg_sleep(0.7)`);
    const busy = await alice.query(`select ${api.wait}($1, $2, ${POLL_MS}) done`, [h.pid, h.cookie]);
    expect(busy.rows[0].done).toBe(false);
    const shortWait = await alice.query(`select ${api.wait}($1, $2, 100) done`, [h.pid, h.cookie]);
    expect(shortWait.rows[0].done).toBe(false);
    const started = Date.now();
    const done = await alice.query(`select ${api.wait}($1, $2, 10000) done`, [h.pid, h.cookie]);
    expect(done.rows[0].done).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
    await alice.query(`select ${WAIT_BLOCKING}($1, $2)`, [h.pid, h.cookie]);
    await alice.query(`select ${api.detach}($1, $2)`, [h.pid, h.cookie]);
  });

  it('cancel stops a running worker and its work does not commit', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `insert into events(note) values ('cancelled'); select pg_sleep(30)::text`);
    expect((await alice.query(`select ${api.wait}($1, $2, 200) d`, [h.pid, h.cookie])).rows[0].d).toBe(false);
    const started = Date.now();
    // never with a grace period: before 2.0.2 it escalates to SIGKILL, which restarts the server
    await alice.query(`select ${api.cancel}($1, $2)`, [h.pid, h.cookie]);
    const done = await alice.query(`select ${api.wait}($1, $2, 10000) d`, [h.pid, h.cookie]);
    expect(done.rows[0].d).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
    const err = await pgErrorOf(resultText(alice, h));
    if (is2x) {
      // 2.x workers turn SIGTERM into a query cancel
      expect(err.code).toBe('57014');
      expect(err.message).toBe('canceling statement due to user request');
    } else {
      expect(err.code).toBe('57P01');
      expect(err.message).toMatch(/terminating .* due to administrator command/);
    }
    expect((await q(`select 1 from events where note = 'cancelled'`)).rowCount).toBe(0);
  });

  it('handles: results once, wrong cookies and unknown pids are refused', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `select '1'`);
    const wrongCookie = (BigInt(h.cookie) + 1n).toString();
    expect((await pgErrorOf(alice.query(`select ${WAIT_BLOCKING}($1, $2)`, [h.pid, wrongCookie]))).code).toBe('55000');
    // 1.8 says the wrong cookie's handle is not attached (42704), 2.x says "cookie mismatch" (55000)
    expect((await pgErrorOf(resultText(alice, { pid: h.pid, cookie: wrongCookie }))).code).toBe(is2x ? '55000' : '42704');
    expect(await resultText(alice, h)).toEqual(['1']);
    const gone = await pgErrorOf(resultText(alice, h));
    expect(gone.code).toBe('42704');
    expect(gone.message).toBe(`PID ${h.pid} is not attached to this session`);
    expect((await pgErrorOf(alice.query(`select ${api.detach}(1, 1)`))).code).toBe('42704');
  });

  it('another role cannot use a handle it does not have the privileges of (42501)', async () => {
    const admin = await session('postgres');
    const h = await launch(admin, `select 'one'`);
    await admin.query('set role alice');
    const err = await pgErrorOf(resultText(admin, h));
    expect(err.code).toBe('42501');
    expect(err.message).toBe(`permission denied for background worker with PID "${h.pid}"`);
    await admin.query('reset role');
    expect(await resultText(admin, h)).toEqual(['one']);
  });

  it(`v1 API: ${is2x ? 'gone in 2.x, whose unsuffixed launch returns a handle' : 'launch, result, detach'}`, async () => {
    const alice = await session('alice');
    if (is2x) {
      expect((await q<{ f: string | null }>(`select to_regprocedure('public.pg_background_result(integer)')::text f`)).rows[0]!.f).toBeNull();
      expect((await q<{ f: string | null }>(`select to_regprocedure('public.pg_background_detach(integer)')::text f`)).rows[0]!.f).toBeNull();
      expect(await resultText(alice, await launch(alice, 'select (40 + 2)::text', 'pg_background_launch'))).toEqual(['42']);
      return;
    }
    const r = await alice.query(`select * from pg_background_result(pg_background_launch('select 40 + 2')) as (x int)`);
    expect(r.rows).toEqual([{ x: 42 }]);
    const pid = (await alice.query<{ p: number }>(`select pg_background_launch('select 1') p`)).rows[0]!.p;
    await alice.query('select pg_background_detach($1)', [pid]);
    expect((await pgErrorOf(alice.query('select pg_background_detach($1)', [pid]))).code).toBe('42704');
  });

  it(`${api.submit} runs the statement; its results are disabled (0A000)`, async () => {
    const alice = await session('alice');
    const h = await launch(alice, `insert into events(note) values ('submitted')`, api.submit);
    await alice.query(`select ${WAIT_BLOCKING}($1, $2)`, [h.pid, h.cookie]);
    const err = await pgErrorOf(resultText(alice, h));
    expect(err.code).toBe('0A000');
    expect(err.message).toBe(`results are disabled for PID ${h.pid} (submitted via ${is2x ? 'pg_background_submit' : 'submit_v2'})`);
    await alice.query(`select ${api.detach}($1, $2)`, [h.pid, h.cookie]);
    expect((await q(`select 1 from events where note = 'submitted'`)).rowCount).toBe(1);
  });

  it(`${is2x ? 'the pg_background_list view' : 'list_v2'} shows the session’s workers, running then stopped`, async () => {
    const alice = await session('alice');
    const sql = `select pg_sleep(0.5)`;
    const h = await launch(alice, sql);
    const list = () =>
      alice.query(
        is2x
          ? `select pid, cookie, launched_at, user_id, queue_size, state, sql_preview, last_error, consumed from pg_background_list`
          : `select * from pg_background_list_v2() as (pid int4, cookie int8, launched_at timestamptz, user_id oid,
           queue_size int4, state text, sql_preview text, last_error text, consumed bool)`,
      );
    const running = await list();
    expect(running.rows).toHaveLength(1);
    expect(running.rows[0]).toMatchObject({ pid: h.pid, cookie: h.cookie, queue_size: 65536, state: 'running', sql_preview: sql, consumed: false });
    const aliceOid = (await alice.query(`select oid::text o from pg_roles where rolname = 'alice'`)).rows[0].o;
    expect(String(running.rows[0].user_id)).toBe(aliceOid);
    await alice.query(`select ${WAIT_BLOCKING}($1, $2)`, [h.pid, h.cookie]);
    expect((await list()).rows[0]).toMatchObject({ pid: h.pid, state: 'stopped' });
    await alice.query(`select ${api.detach}($1, $2)`, [h.pid, h.cookie]);
    expect((await list()).rows).toHaveLength(0);
  });

  it('the worker runs autonomously: the launcher’s rollback does not undo it', async () => {
    const alice = await session('alice');
    await alice.query('begin');
    const h = await launch(alice, `insert into events(note) values ('autonomous')`);
    await alice.query(`select ${WAIT_BLOCKING}($1, $2)`, [h.pid, h.cookie]);
    await alice.query('rollback');
    expect((await q(`select 1 from events where note = 'autonomous'`)).rowCount).toBe(1);
  });

  it('the worker finishes and commits after the launching session has gone', async () => {
    const alice = await session('alice');
    await launch(alice, `select pg_sleep(0.5); insert into events(note) values ('outlived')`);
    await alice.end();
    open.splice(open.indexOf(alice), 1);
    await eventually(async () => ((await q(`select 1 from events where note = 'outlived'`)).rowCount ?? 0) > 0, 10_000);
  });

  it('enforces pg_background.max_workers per session (53400)', async () => {
    const alice = await session('alice');
    await alice.query('set pg_background.max_workers = 2');
    const a = await launch(alice, 'select 1');
    const b = await launch(alice, 'select 2');
    const err = await pgErrorOf(launch(alice, 'select 3'));
    expect(err.code).toBe('53400');
    expect(err.message).toBe('too many background workers');
    await alice.query(`select ${api.detach}($1, $2)`, [a.pid, a.cookie]);
    await launch(alice, 'select 3');
    await alice.query(`select ${api.detach}($1, $2)`, [b.pid, b.cookie]);
  });

  it('VACUUM runs alone, but not after another statement (25001)', async () => {
    const admin = await session('postgres');
    expect(await resultText(admin, await launch(admin, 'vacuum accounts'))).toEqual(['VACUUM']);
    const err = await pgErrorOf(resultText(admin, await launch(admin, 'select 1; vacuum accounts')));
    expect(err.code).toBe('25001');
  });
});

describe(`known differences between the real extension and the stand-in (${standin ? 'stand-in' : 'real'} side)`, () => {
  it('pg_stat_activity: backend_type of the worker', async () => {
    const alice = await session('alice', { application_name: 'pgbg-activity' });
    const h = await launch(alice, 'select pg_sleep(0.5)');
    const r = await q<{ backend_type: string; application_name: string; query: string }>(
      'select backend_type, application_name, query from pg_stat_activity where pid = $1',
      [h.pid],
    );
    expect(r.rows[0]).toMatchObject({
      backend_type: standin ? 'client backend' : 'pg_background',
      // 2.x sets the worker's application_name to pg_background:<its own pid>
      application_name: is2x ? `pg_background:${h.pid}` : 'pgbg-activity',
      query: 'select pg_sleep(0.5)',
    });
    await alice.query(`select ${api.detach}($1, $2)`, [h.pid, h.cookie]);
  });

  it('column types: real requires exact types, the stand-in converts through text', async () => {
    const alice = await session('alice');
    const h = await launch(alice, 'select 7');
    const p = alice.query(`select * from ${api.result}($1, $2) as (x bigint)`, [h.pid, h.cookie]);
    if (standin) {
      expect((await p).rows).toEqual([{ x: '7' }]);
    } else {
      const err = await pgErrorOf(p);
      expect(err.code).toBe('42804');
      expect(err.message).toBe('remote query result rowtype does not match the specified FROM clause rowtype');
    }
  });

  it('a utility/DML result read into a non-text column is 42804 on both', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `update accounts set balance = balance where id = 1`);
    const err = await pgErrorOf(alice.query(`select * from ${api.result}($1, $2) as (x int)`, [h.pid, h.cookie]));
    expect(err.code).toBe('42804');
    expect(err.message).toBe('remote query did not return a result set, but result rowtype is not a single text column');
  });

  it('multi-statement DML: real returns every command tag, the stand-in only the last', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `update accounts set balance = balance where id = 1; update accounts set balance = balance where id in (2, 3)`);
    expect(await resultText(alice, h)).toEqual(standin ? ['UPDATE 2'] : ['UPDATE 1', 'UPDATE 2']);
  });

  it('multi-statement strings: real runs every statement with the same command id, so later statements do not see earlier ones', async () => {
    const alice = await session('alice');
    const h = await launch(alice, `insert into events(note) values ('cci'); select count(*)::text from events where note = 'cci'`);
    // pg_background 1.8 calls CommandCounterIncrement only after the last statement.
    expect(await resultText(alice, h)).toEqual(standin ? ['1'] : ['0']);
    expect((await q(`select 1 from events where note = 'cci'`)).rowCount).toBe(1);
  });

  it('transaction control: real refuses it (0A000), the stand-in runs it', async () => {
    const admin = await session('postgres');
    const h = await launch(admin, 'begin; select 1; commit');
    const p = resultText(admin, h);
    if (standin) {
      expect(await p).toEqual(['COMMIT']);
    } else {
      const err = await pgErrorOf(p);
      expect(err.code).toBe('0A000');
      expect(err.message).toBe('transaction control statements are not allowed in pg_background');
    }
  });

  it('notices: real relays the worker’s notices to the launcher, the stand-in does not', async () => {
    const alice = await session('alice');
    const notices: string[] = [];
    alice.on('notice', (n) => notices.push(n.message ?? ''));
    const h = await launch(alice, `do $$ begin raise notice 'hello from the worker'; end $$`);
    expect(await resultText(alice, h)).toEqual(['DO']);
    expect(notices).toEqual(standin ? [] : ['hello from the worker']);
  });
});
