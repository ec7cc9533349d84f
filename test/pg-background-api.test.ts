/**
 * pg_background API generations (DESIGN.md decision 9, issue 11 item 13): the registry picks
 * 1.3's v1 API, 1.6-1.10's `_v2` names or 2.x's unsuffixed handle API by which functions exist,
 * never calls 2.x's deprecated `_v2` aliases, supervises non-transactional jobs on every
 * generation, and says exactly which function a role lacks EXECUTE on.
 *
 * Run it against each version the harness offers:
 *   PGBG_TEST_PG_BACKGROUND=2.0 npx vitest run test/pg-background-api.test.ts    # 1.8, 2.0, standin
 * 1.3 cannot be installed on PostgreSQL 15; its API is exercised on the stand-in with its `_v2`
 * functions dropped, which leaves exactly the v1 functions.
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/jobs/migrate.js';
import { STANDIN_SQL_PATH, getCluster, pgBackgroundNames, pgErrorOf } from './harness/index.js';
import { waitJob } from './support/jobs.js';
import { startTestProxy, type TestProxy } from './support/proxy.js';

const cluster = getCluster();
const is2x = /^[2-9]\./.test(cluster.extVersion);
const names = pgBackgroundNames(cluster);
const tag = `${process.pid}_${Date.now().toString(36)}`;
const LIMITED = `pgbapi_limited_${tag}`;
const VIAPROXY = `pgbapi_proxy_${tag}`;
const PASSWORD = 'pgbapi-secret';

const open: pg.Client[] = [];
const databases: string[] = [];

async function session(database: string, user = 'postgres'): Promise<pg.Client> {
  const client = new pg.Client(cluster.clientConfig({ user, database, ...(user === LIMITED || user === VIAPROXY ? { password: PASSWORD } : {}) }));
  client.on('error', () => undefined);
  await client.connect();
  open.push(client);
  return client;
}

async function one<T = any>(c: pg.Client, sql: string, params: unknown[] = []): Promise<T> {
  return (await c.query(sql, params)).rows[0] as T;
}

/** A fresh database with the registry migrated and a table alice may vacuum and index. */
async function registryDatabase(prepare?: (su: pg.Client) => Promise<void>): Promise<string> {
  const db = await cluster.createDatabase();
  databases.push(db);
  const su = await session(db);
  if (prepare) await prepare(su);
  await migrate(su);
  await su.query(`
    CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL) WITH (autovacuum_enabled = off);
    INSERT INTO items SELECT g, g FROM generate_series(1, 1000) g;
    ALTER TABLE items OWNER TO alice;`);
  return db;
}

/** Polls the way the proxy's supervisor does (pgbg.worker_stopped), then records the result. */
async function supervise(c: pg.Client, job: { job_id: string; state: string; api: number; worker_pid: number | null; cookie: string | null }): Promise<string> {
  if (job.worker_pid === null) {
    // Stopped before its launch returned (pg_background's pid 0): the launch recorded the outcome.
    const row = await one(c, 'SELECT state, command_tag FROM pgbg.jobs WHERE id = $1', [job.job_id]);
    expect(row.state).toBe('succeeded');
    return row.command_tag;
  }
  const deadline = Date.now() + 30_000;
  while (!(await one(c, 'SELECT pgbg.worker_stopped($1, $2, $3) AS d', [job.api, job.worker_pid, job.cookie])).d) {
    if (Date.now() > deadline) throw new Error(`worker ${job.worker_pid} did not stop within 30 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const { tag: commandTag } = await one(c, 'SELECT pgbg.worker_result($1, $2, $3) AS tag', [job.api, job.worker_pid, job.cookie]);
  await c.query("SELECT pgbg.finish_supervised($1, 'succeeded', $2, NULL, NULL)", [job.job_id, commandTag]);
  return commandTag;
}

async function submitAndLaunch(c: pg.Client, statement: string, kind: string, transactional: boolean) {
  return one<{ job_id: string; state: string; worker_pid: number | null; cookie: string | null; api: number }>(
    c,
    'SELECT job_id, state, worker_pid, cookie, api FROM pgbg.submit_and_launch($1, $2, $3)',
    [statement, kind, transactional],
  );
}

async function jobState(c: pg.Client, id: string): Promise<string> {
  return (await one(c, "SELECT pgbg.wait($1, '30s') AS s", [id])).s;
}

afterAll(async () => {
  while (open.length) await open.pop()!.end().catch(() => undefined);
  for (const db of databases) await cluster.query(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`).catch(() => undefined);
  await cluster.query(`DROP ROLE IF EXISTS ${LIMITED}`).catch(() => undefined);
  await cluster.query(`DROP ROLE IF EXISTS ${VIAPROXY}`).catch(() => undefined);
});

describe(`pg_background ${cluster.pgBackground === 'real' ? cluster.extVersion : 'stand-in'}: the API the registry uses`, () => {
  let db: string;
  beforeAll(async () => {
    db = await registryDatabase();
  });

  it('pg_background_info names the generation and the functions this database has', async () => {
    const alice = await session(db, 'alice');
    const info = await one(
      alice,
      `SELECT generation, api, launch_function::text AS launch, result_function::text AS result, wait_function::text AS wait,
              detach_function::text AS detach, can_launch, can_supervise, missing_for_launch, missing_for_supervision
         FROM pgbg.pg_background_info()`,
    );
    expect(info).toEqual({
      generation: is2x ? 'handle' : 'v2',
      api: 2,
      // regprocedure text as this session (search_path "$user", public) prints it
      launch: `${names.launch}(text,integer)`,
      result: `${names.result}(integer,bigint)`,
      wait: `${names.wait}(integer,bigint,integer)`,
      detach: `${names.detach}(integer,bigint)`,
      can_launch: true,
      can_supervise: true,
      missing_for_launch: null,
      missing_for_supervision: null,
    });
  });

  it('VACUUM and CREATE INDEX CONCURRENTLY are launched and supervised to their command tags', async () => {
    const alice = await session(db, 'alice');
    const vacuum = await submitAndLaunch(alice, 'VACUUM items', 'VACUUM', false);
    // Running, with its handle; or (the stand-in's VACUUM is quick) already stopped when its
    // launch returned, and then settled by the launch itself, with no handle left.
    expect(vacuum).toMatchObject({ state: vacuum.worker_pid === null ? 'succeeded' : 'running', api: 2 });
    expect(vacuum.cookie === null).toBe(vacuum.worker_pid === null);
    expect(await supervise(alice, vacuum)).toBe('VACUUM');
    const cic = await submitAndLaunch(alice, 'CREATE INDEX CONCURRENTLY items_v ON items (v)', 'CREATE INDEX', false);
    expect(await supervise(alice, cic)).toBe('CREATE INDEX');
    const su = await session(db);
    const jobs = await su.query('SELECT state, command_tag FROM pgbg.job WHERE id = ANY($1::bigint[]) ORDER BY id', [[vacuum.job_id, cic.job_id]]);
    expect(jobs.rows).toEqual([
      { state: 'succeeded', command_tag: 'VACUUM' },
      { state: 'succeeded', command_tag: 'CREATE INDEX' },
    ]);
    expect((await one(su, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_v'::regclass")).indisvalid).toBe(true);
  });

  it("a supervised worker's error comes back as its own SQLSTATE and message", async () => {
    const alice = await session(db, 'alice');
    const job = await submitAndLaunch(alice, 'VACUUM items', 'VACUUM', false);
    // the index expression fails in the worker, and worker_result raises that failure
    const bad = await submitAndLaunch(alice, 'CREATE INDEX CONCURRENTLY items_dup ON items ((1 / 0))', 'CREATE INDEX', false);
    expect(await supervise(alice, job)).toBe('VACUUM');
    if (bad.worker_pid === null) {
      // Stopped before its launch returned (pg_background's pid 0): the launch read the error.
      expect(await one(alice, 'SELECT state, sqlstate, error FROM pgbg.jobs WHERE id = $1', [bad.job_id]))
        .toEqual({ state: 'failed', sqlstate: '22012', error: 'division by zero' });
      return;
    }
    while (!(await one(alice, 'SELECT pgbg.worker_stopped($1, $2, $3) AS d', [bad.api, bad.worker_pid, bad.cookie])).d) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const err = await pgErrorOf(alice.query('SELECT pgbg.worker_result($1, $2, $3)', [bad.api, bad.worker_pid, bad.cookie]));
    expect(err.code).toBe('22012');
    expect(err.message).toBe('division by zero');
    await alice.query("SELECT pgbg.finish_supervised($1, 'failed', NULL, $2, $3)", [bad.job_id, err.code, err.message]);
  });

  it(`uses ${is2x ? "2.x's unsuffixed names, never the deprecated _v2 aliases" : 'the _v2 names, not the v1 API'}`, async () => {
    // Take away what must not be used: if the registry called it, the jobs below would fail 42501.
    const other = await registryDatabase(async (su) => {
      const unwanted = is2x
        ? `SELECT p.oid::regprocedure AS f FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'pg\\_background\\_%\\_v2%'`
        : `SELECT p.oid::regprocedure AS f FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
              AND p.proname IN ('pg_background_launch', 'pg_background_result', 'pg_background_detach')`;
      const fns = (await su.query<{ f: string }>(unwanted)).rows.map((r) => r.f);
      expect(fns.length).toBeGreaterThanOrEqual(3);
      for (const f of fns) await su.query(`REVOKE EXECUTE ON FUNCTION ${f} FROM pgbackground_role, PUBLIC`);
      if (is2x) {
        expect(fns).toEqual(expect.arrayContaining(['pg_background_launch_v2(text,integer)', 'pg_background_wait_v2(integer,bigint,integer)']));
      }
    });
    const alice = await session(other, 'alice');
    const update = await submitAndLaunch(alice, 'UPDATE items SET v = v + 1 WHERE id <= 10', 'UPDATE', true);
    expect(await jobState(alice, update.job_id)).toBe('succeeded');
    const vacuum = await submitAndLaunch(alice, 'VACUUM items', 'VACUUM', false);
    expect(await supervise(alice, vacuum)).toBe('VACUUM');
  });

  it("another role's look-alike functions neither change the detected API nor capture a launch", async () => {
    const trapped = await registryDatabase();
    const su = await session(trapped);
    const trap = `trap_${tag}`;
    await su.query(`CREATE SCHEMA ${trap} AUTHORIZATION alice`);
    const alice = await session(trapped, 'alice');
    // A handle-returning pg_background_launch(text, int4) in alice's schema would make 1.8 look
    // like 2.x; a one-argument launch in public would be a closer match for a one-argument call.
    await alice.query(`
      CREATE TABLE ${trap}.log (who name);
      GRANT USAGE ON SCHEMA ${trap} TO PUBLIC;
      GRANT INSERT ON ${trap}.log TO PUBLIC;
      CREATE TYPE ${trap}.h AS (pid int4, cookie int8);
      CREATE FUNCTION ${trap}.pg_background_launch(sql text, queue_size int4) RETURNS ${trap}.h
        LANGUAGE sql AS $$ INSERT INTO ${trap}.log VALUES (current_user) RETURNING 0, 0::int8 $$;
      CREATE FUNCTION public.${names.launch}(sql text) RETURNS ${trap}.h
        LANGUAGE sql AS $$ INSERT INTO ${trap}.log VALUES (current_user) RETURNING 0, 0::int8 $$;
      GRANT EXECUTE ON FUNCTION ${trap}.pg_background_launch(text, int4), public.${names.launch}(text) TO PUBLIC;`);
    const bob = await session(trapped, 'bob');
    expect(await one(bob, 'SELECT generation, launch_function::text AS launch FROM pgbg.pg_background_info()')).toEqual({
      generation: is2x ? 'handle' : 'v2',
      launch: `${names.launch}(text,integer)`,
    });
    const job = await submitAndLaunch(bob, 'SELECT 1', 'SELECT', true);
    expect(job.worker_pid).toBeGreaterThan(0);
    expect(await jobState(bob, job.job_id)).toBe('succeeded');
    const vacuum = await submitAndLaunch(bob, 'VACUUM pg_catalog.pg_class', 'VACUUM', false);
    if (vacuum.worker_pid === null) expect(vacuum.state).toBe('succeeded'); // stopped when its launch returned: read at once
    else expect(vacuum.worker_pid).toBeGreaterThan(0);
    expect((await su.query(`SELECT who FROM ${trap}.log`)).rows).toEqual([]);
  });

  it('a role that lacks EXECUTE on one pg_background function is told exactly which one', async () => {
    const su = await session(db);
    await su.query(`CREATE ROLE ${LIMITED} LOGIN PASSWORD '${PASSWORD}'`);
    const launch = `public.${names.launch}(text,integer)`;
    const result = `public.${names.result}(integer,bigint)`;
    const wait = `public.${names.wait}(integer,bigint,integer)`;
    await su.query(`GRANT EXECUTE ON FUNCTION ${launch}, ${result}, ${wait} TO ${LIMITED}`);
    await su.query(`REVOKE EXECUTE ON FUNCTION ${wait} FROM ${LIMITED}`);
    const c = await session(db, LIMITED);

    const supervised = await pgErrorOf(c.query("SELECT pgbg.submit('VACUUM items', 'VACUUM', false)"));
    expect(supervised.code).toBe('42501');
    expect(supervised.message).toBe(`permission denied: role ${LIMITED} may not launch pg_background workers in database ${db}`);
    expect(supervised.detail).toBe(`${LIMITED} needs EXECUTE on ${wait}`);
    expect(supervised.hint).toBe(`GRANT EXECUTE ON FUNCTION ${wait} TO ${LIMITED}; (as a superuser)`);
    // a transactional job needs only the launch function
    const { id } = await one(c, "SELECT pgbg.submit('SELECT 1', 'SELECT', true) AS id");
    expect(Number(id)).toBeGreaterThan(0);

    await su.query(`REVOKE EXECUTE ON FUNCTION ${launch} FROM ${LIMITED}`);
    const transactional = await pgErrorOf(c.query("SELECT pgbg.submit('SELECT 1', 'SELECT', true)"));
    expect(transactional.code).toBe('42501');
    expect(transactional.detail).toBe(`${LIMITED} needs EXECUTE on ${launch}`);
    const both = await pgErrorOf(c.query("SELECT pgbg.submit('VACUUM items', 'VACUUM', false)"));
    expect(both.detail).toBe(`${LIMITED} needs EXECUTE on ${launch}, ${wait}`);
    expect(both.hint).toBe(`GRANT EXECUTE ON FUNCTION ${launch} TO ${LIMITED}; GRANT EXECUTE ON FUNCTION ${wait} TO ${LIMITED}; (as a superuser)`);
    await su.query(`DELETE FROM pgbg.job WHERE owner = $1`, [LIMITED]);
    await su.query(`REVOKE ALL ON FUNCTION ${result} FROM ${LIMITED}`);
  });
});

describe('pg_background 1.3 (v1 API), on the stand-in without its _v2 functions', () => {
  let db: string;
  beforeAll(async () => {
    db = await registryDatabase(async (su) => {
      if (cluster.pgBackground === 'real') {
        await su.query('DROP EXTENSION pg_background');
        await su.query(readFileSync(STANDIN_SQL_PATH, 'utf8'));
        await su.query('RESET search_path');
      }
      const v2 = await su.query<{ f: string }>(
        `SELECT p.oid::regprocedure AS f FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'pg\\_background\\_%\\_v2%'`,
      );
      expect(v2.rows.length).toBeGreaterThanOrEqual(5);
      for (const { f } of v2.rows) await su.query(`DROP FUNCTION ${f}`);
    });
  });

  it('is detected as the v1 generation', async () => {
    const alice = await session(db, 'alice');
    const info = await one(
      alice,
      `SELECT generation, api, launch_function::text AS launch, result_function::text AS result, wait_function::text AS wait,
              detach_function::text AS detach, can_launch, can_supervise FROM pgbg.pg_background_info()`,
    );
    expect(info).toEqual({
      generation: 'v1',
      api: 1,
      launch: 'pg_background_launch(text,integer)',
      result: 'pg_background_result(integer)',
      wait: null,
      detach: 'pg_background_detach(integer)',
      can_launch: true,
      can_supervise: true,
    });
  });

  it('runs a transactional job and supervises a VACUUM through pg_background_result(pid)', async () => {
    const alice = await session(db, 'alice');
    const update = await submitAndLaunch(alice, 'UPDATE items SET v = -v WHERE id <= 3', 'UPDATE', true);
    expect(update.api).toBe(1);
    expect(update.cookie).toBeNull();
    expect(await jobState(alice, update.job_id)).toBe('succeeded');
    expect((await one(alice, 'SELECT count(*)::int AS n FROM items WHERE v < 0')).n).toBe(3);
    const vacuum = await submitAndLaunch(alice, 'VACUUM items', 'VACUUM', false);
    expect(vacuum.api).toBe(1);
    expect(await supervise(alice, vacuum)).toBe('VACUUM');
    expect((await one(alice, 'SELECT state FROM pgbg.job WHERE id = $1', [vacuum.job_id])).state).toBe('succeeded');
  });
});

describe(`through the proxy, on pg_background ${cluster.pgBackground === 'real' ? cluster.extVersion : 'stand-in'}`, () => {
  let db: string;
  let via: TestProxy;
  beforeAll(async () => {
    db = await registryDatabase();
    via = await startTestProxy(cluster);
  });
  afterAll(async () => {
    await via?.close();
  });

  it('a role lacking EXECUTE on the wait function gets the exact 42501; with pgbackground_role, VACUUM and CREATE INDEX CONCURRENTLY succeed', async () => {
    const su = await session(db);
    await su.query(`CREATE ROLE ${VIAPROXY} LOGIN PASSWORD '${PASSWORD}'`);
    await su.query(`ALTER TABLE items OWNER TO ${VIAPROXY}`);
    const wait = `public.${names.wait}(integer,bigint,integer)`;
    await su.query(`GRANT EXECUTE ON FUNCTION public.${names.launch}(text,integer), public.${names.result}(integer,bigint) TO ${VIAPROXY}`);
    const client = await via.connect({ user: VIAPROXY, password: PASSWORD, database: db });
    try {
      const err = await pgErrorOf(client.query('/*+ background */ VACUUM items'));
      expect(err.code).toBe('42501');
      expect(err.detail).toBe(`${VIAPROXY} needs EXECUTE on ${wait}`);
      expect(err.hint).toBe(`GRANT EXECUTE ON FUNCTION ${wait} TO ${VIAPROXY}; (as a superuser)`);
      expect((await client.query('SELECT 1 AS still_usable')).rows).toEqual([{ still_usable: 1 }]);

      await su.query(`GRANT pgbackground_role TO ${VIAPROXY}`);
      const vacuum = String((await client.query('/*+ background */ VACUUM items')).rows[0].job_id);
      const cic = String((await client.query('/*+ background */ CREATE INDEX CONCURRENTLY items_proxy_v ON items (v)')).rows[0].job_id);
      expect(await waitJob(su, vacuum)).toMatchObject({ state: 'succeeded', command_tag: 'VACUUM' });
      expect(await waitJob(su, cic)).toMatchObject({ state: 'succeeded', command_tag: 'CREATE INDEX' });
      expect((await one(su, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_proxy_v'::regclass")).indisvalid).toBe(true);
    } finally {
      await client.end();
      await su.query(`REVOKE pgbackground_role FROM ${VIAPROXY}`);
    }
  });
});
