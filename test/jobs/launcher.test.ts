/**
 * The launcher (registry version 6): a pg_background worker per (database, login) that launches,
 * supervises and recovers that login's jobs, driven here straight through SQL (pgbg.enqueue), no
 * proxy in between.
 *
 *   npx vitest run test/jobs/launcher.test.ts
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, getCluster, startCluster } from '../harness/index.js';
import { registryDatabase, submit, waitJob } from '../support/jobs.js';
import { startTestProxy } from '../support/proxy.js';

const cluster = getCluster();
let db: string;
const open: pg.Client[] = [];

async function session(database = db, user = 'postgres'): Promise<pg.Client> {
  const c = new pg.Client(cluster.clientConfig({ user, database }));
  c.on('error', () => undefined);
  await c.connect();
  open.push(c);
  return c;
}

async function enqueue(c: pg.Client, statement: string, kind: string, transactional = true, options: object = {}): Promise<{ job_id: string; state: string; launcher_started: number | null }> {
  const r = await c.query('SELECT * FROM pgbg.enqueue($1, $2, $3, NULL, $4::jsonb, NULL, NULL, NULL, NULL, 2000)', [statement, kind, transactional, JSON.stringify(options)]);
  return r.rows[0];
}

beforeAll(async () => {
  db = await registryDatabase(cluster);
  const c = await session();
  await c.query('CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO counter VALUES (1, 0)');
});

afterAll(async () => {
  for (const c of open) await c.end().catch(() => undefined);
});

describe('launcher', () => {
  it('a submission starts the launcher, which runs the job; the launcher exits when idle', async () => {
    const c = await session();
    const first = await enqueue(c, 'UPDATE counter SET n = n + 5 WHERE id = 1', 'UPDATE');
    expect(first.state).toBe('queued');
    expect(first.launcher_started).toBeGreaterThan(0);
    const done = await waitJob(c, first.job_id, '20 s');
    expect(done.state, JSON.stringify(done)).toBe("succeeded");
    expect((await c.query('SELECT n FROM counter WHERE id = 1')).rows[0].n).toBe('5');
    const launchers = await c.query('SELECT * FROM pgbg.launchers');
    expect(launchers.rows.length).toBe(1);
    expect(launchers.rows[0].launched).toBe('1');
    // idle 2 s: it exits, and says so
    await eventually(async () => {
      const r = await c.query('SELECT alive, exit_reason FROM pgbg.launchers');
      return r.rows[0].alive === false && r.rows[0].exit_reason === 'idle';
    }, 15_000, 200);
  });
});

describe('settings captured at submission (acceptance 5)', () => {
  it('two sessions with different search_path, TimeZone and a custom setting each get their own in their job', async () => {
    const admin = await session();
    await admin.query(`
      CREATE SCHEMA s1 AUTHORIZATION alice; CREATE SCHEMA s2 AUTHORIZATION alice;
      CREATE TABLE s1.seen (tz text, tenant text, stamp text); ALTER TABLE s1.seen OWNER TO alice;
      CREATE TABLE s2.seen (tz text, tenant text, stamp text); ALTER TABLE s2.seen OWNER TO alice;
      CREATE TABLE public.seen (tz text, tenant text, stamp text); ALTER TABLE public.seen OWNER TO alice;
    `);
    const via = await startTestProxy(cluster, { jobs: { carrySettings: ['myapp.tenant'] } });
    try {
      const tokyo = await via.connect({ user: 'alice', database: db });
      const ny = await via.connect({ user: 'alice', database: db });
      const plain = await via.connect({ user: 'alice', database: db });
      await tokyo.query("SET search_path = s1; SET TimeZone = 'Asia/Tokyo'; SET myapp.tenant = 'east'; SET DateStyle = 'German'");
      await ny.query("SET search_path = s2, public; SET TimeZone = 'America/New_York'; SET myapp.tenant = 'west'");
      const statement = "/*+ background */ INSERT INTO seen SELECT current_setting('TimeZone'), current_setting('myapp.tenant', true), '2026-12-03 12:00+00'::timestamptz::text";
      const ids = [await submit(tokyo, statement), await submit(ny, statement), await submit(plain, statement)];
      for (const id of ids) { const j = await waitJob(admin, id); expect(j.state, JSON.stringify(j)).toBe("succeeded"); }
      // The dblink stand-in copies only the settings pg_settings lists into its "workers", so a
      // custom placeholder reaches the launcher but not the job (test/fixtures/README.md).
      const standin = cluster.pgBackground === 'standin';
      expect((await admin.query('SELECT * FROM s1.seen')).rows).toEqual([{ tz: 'Asia/Tokyo', tenant: standin ? null : 'east', stamp: '03.12.2026 21:00:00 JST' }]);
      expect((await admin.query('SELECT * FROM s2.seen')).rows).toEqual([{ tz: 'America/New_York', tenant: standin ? null : 'west', stamp: '2026-12-03 07:00:00-05' }]);
      // Nothing set: the role's and database's own defaults, not the other sessions'.
      const defaults = (await admin.query("SELECT current_setting('TimeZone') AS tz")).rows[0].tz;
      // (A named custom setting the session never set reaches the job empty: a placeholder
      // another job's launch defined cannot be undefined again.)
      const plainRow = (await admin.query('SELECT tz, tenant FROM public.seen')).rows[0];
      expect(plainRow.tz).toBe(defaults);
      expect([null, '']).toContain(plainRow.tenant);
      for (const c of [tokyo, ny, plain]) await c.end();
    } finally {
      await via.close();
    }
  });
});

describe('launches batched in one launcher transaction (registry 7)', () => {
  it('jobs committed together with alternating settings and roles each run with their own, the same settings twice in a row included', async () => {
    const admin = await session();
    await admin.query(`
      CREATE SCHEMA b1 AUTHORIZATION alice; CREATE SCHEMA b2 AUTHORIZATION alice;
      CREATE TABLE b1.bseen (n int, tz text, who text); ALTER TABLE b1.bseen OWNER TO alice;
      CREATE TABLE b2.bseen (n int, tz text, who text); ALTER TABLE b2.bseen OWNER TO alice;
      CREATE TABLE public.bseen (n int, tz text, who text); ALTER TABLE public.bseen OWNER TO alice;
      DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'batch_helper') THEN CREATE ROLE batch_helper NOLOGIN; END IF; END$$;
      GRANT INSERT ON b1.bseen, b2.bseen, public.bseen TO batch_helper; GRANT USAGE ON SCHEMA b1, b2 TO batch_helper;
      GRANT batch_helper TO alice`);
    // (a role of this test's own: roles are the whole cluster's, and other test files rely on
    // alice not being a member of bob)
    await cluster.grantPgBackground('batch_helper');
    const alice = await session(db, 'alice');
    // One transaction: the launcher sees all of them at once and launches them in batches of up
    // to 8, with the previous launch's reset reused only when owner and settings are the same.
    // 'public' = search_path not set by the session: the launcher's own search_path must be put
    // back to the built-in default for each of two such jobs in a row, or the unqualified table
    // is not found. (Not first: the first submission starts the launcher, whose start leaves a
    // few timeouts set in this transaction, so later submissions carry them and the first not.)
    const plan: [string, string, boolean][] = [
      ['b1', 'Asia/Tokyo', false], ['public', 'UTC', false], ['public', 'UTC', false], ['b1', 'Asia/Tokyo', false], ['b2', 'UTC', false], ['b1', 'Asia/Tokyo', false],
      ['b1', 'Asia/Tokyo', true], ['b1', 'Asia/Tokyo', true], ['b2', 'America/New_York', false], ['b2', 'America/New_York', false],
      ['b1', 'Europe/Paris', false], ['b2', 'UTC', true],
    ];
    await alice.query('BEGIN');
    const ids: string[] = [];
    for (const [i, [schema, tz, asHelper]] of plan.entries()) {
      await alice.query(`${schema === 'public' ? 'RESET search_path' : `SET LOCAL search_path = ${schema}`}; SET LOCAL TimeZone = '${tz}'; ${asHelper ? 'SET LOCAL ROLE batch_helper' : 'SET LOCAL ROLE NONE'}`);
      ids.push((await enqueue(alice, `INSERT INTO bseen VALUES (${i}, current_setting('TimeZone'), current_user)`, 'INSERT')).job_id);
    }
    await alice.query('COMMIT');
    for (const id of ids) {
      const j = await waitJob(admin, id);
      expect(j.state, JSON.stringify(j)).toBe('succeeded');
    }
    const rows = (
      await admin.query("SELECT 'b1' AS schema, * FROM b1.bseen UNION ALL SELECT 'b2', * FROM b2.bseen UNION ALL SELECT 'public', * FROM public.bseen ORDER BY n")
    ).rows;
    expect(rows).toEqual(plan.map(([schema, tz, asHelper], n) => ({ schema, n, tz, who: asHelper ? 'batch_helper' : 'alice' })));
    // Every one of them ran exactly once.
    expect((await admin.query('SELECT count(*)::int AS n FROM pgbg.job_attempts WHERE job_id = ANY($1::bigint[])', [ids])).rows[0].n).toBe(ids.length);
  });
});

describe('a terminated launcher (acceptance 4)', () => {
  it('its queued jobs run after the next session of the role; its supervised jobs end as their effect says', { timeout: 60_000 }, async () => {
    const admin = await session();
    await admin.query(`
      CREATE TABLE built (id int PRIMARY KEY, v int); INSERT INTO built SELECT g, g FROM generate_series(1, 100) g;
      ALTER TABLE built OWNER TO alice;
      CREATE TABLE after_call (at timestamptz); ALTER TABLE after_call OWNER TO alice;
      CREATE PROCEDURE slow_call() LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1.5); INSERT INTO after_call VALUES (now()); END $$;
      GRANT EXECUTE ON PROCEDURE slow_call() TO alice;
    `);
    // alice may hold all but one of the 3 slots: the build and the call run, the rest queue.
    const via = await startTestProxy(cluster, { jobs: { maxInFlight: 3 } });
    try {
      const alice = await via.connect({ user: 'alice', database: db });
      // A writer's open transaction holds the index build in its first wait.
      const writer = await session();
      await writer.query('BEGIN; UPDATE built SET v = v WHERE id = 1');
      const build = await submit(alice, '/*+ background */ CREATE INDEX CONCURRENTLY built_v_idx ON built (v)');
      const call = await submit(alice, '/*+ background */ CALL slow_call()');
      const state = async (id: string) => (await admin.query('SELECT state, waiting_for_launcher FROM pgbg.jobs WHERE id = $1', [id])).rows[0];
      await eventually(async () => (await state(build)).state === 'running' && (await state(call)).state === 'running', 10_000, 50);
      const queued = [await submit(alice, "/*+ background */ INSERT INTO after_call VALUES ('2000-01-01')"), await submit(alice, '/*+ background */ SELECT 1')];
      await alice.end();
      const launcher = (await admin.query("SELECT pid FROM pgbg.launchers WHERE login = 'alice' AND alive")).rows[0].pid;
      expect((await admin.query('SELECT pg_terminate_backend($1) AS t', [launcher])).rows[0].t).toBe(true);
      await eventually(async () => (await admin.query("SELECT alive FROM pgbg.launchers WHERE login = 'alice'")).rows[0].alive === false, 5000, 50);
      // Nobody launches them now: they say they wait for a launcher.
      for (const id of queued) expect(await state(id)).toEqual({ state: 'queued', waiting_for_launcher: true });
      await writer.query('COMMIT');
      // The next session of alice (after this proxy's 2 s between looks) starts a new launcher.
      await new Promise((r) => setTimeout(r, 2100));
      const next = await via.connect({ user: 'alice', database: db });
      await next.query('SELECT 1');
      for (const id of queued) expect((await waitJob(admin, id)).state).toBe('succeeded');
      const built = await waitJob(admin, build);
      const valid = (await admin.query("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass('built_v_idx')")).rows[0]?.indisvalid;
      // The build's outcome was never read by anyone; the catalog says what happened.
      if (built.state === 'succeeded') expect(valid).toBe(true);
      else expect(built.state === 'failed' ? valid : undefined).toBe(built.state === 'failed' ? false : undefined);
      expect(['succeeded', 'failed']).toContain(built.state);
      const called = await waitJob(admin, call);
      expect(called.state).toBe('lost');
      expect(called.lost_reason).toMatch(/launcher ended/);
      await next.end();
    } finally {
      await via.close();
    }
  });
});

describe('what a submission looks at (registry 10)', () => {
  it("a transactional job without the launch right gets the 42501 that names the missing function", async () => {
    const su = await session();
    await su.query("CREATE ROLE enq_no_launch LOGIN PASSWORD 'enq-no-launch'");
    // (spelled as the error spells it: schema-qualified)
    await su.query('SET search_path = pg_catalog');
    const launch = (await su.query('SELECT launch_function::text AS f FROM pgbg.pg_background_info()')).rows[0].f as string;
    await su.query('RESET search_path');
    expect((await su.query("SELECT has_function_privilege('enq_no_launch', $1, 'EXECUTE') AS ok", [launch])).rows[0].ok).toBe(false);
    const c = new pg.Client({ ...cluster.clientConfig({ user: 'enq_no_launch', database: db }), password: 'enq-no-launch' });
    c.on('error', () => undefined);
    await c.connect();
    open.push(c);
    const err = await c.query("SELECT * FROM pgbg.enqueue('SELECT 1', 'SELECT', true)").then(() => null, (e) => e);
    expect(err?.code).toBe('42501');
    expect(err?.message).toBe(`permission denied: role enq_no_launch may not launch pg_background workers in database ${db}`);
    expect(err?.detail).toBe(`enq_no_launch needs EXECUTE on ${launch}`);
    expect((await su.query("SELECT count(*)::int AS n FROM pgbg.job WHERE owner = 'enq_no_launch'")).rows[0].n).toBe(0);
  });

  it("a probe's shared hold of a launcher lock is not a live launcher; the launcher's exclusive hold is", async () => {
    const su = await session();
    const holder = await session();
    await su.query("CREATE ROLE probe_only LOGIN PASSWORD 'probe-only'");
    const key = (await su.query("SELECT pgbg._launcher_key('probe_only') AS k")).rows[0].k as number;
    const alive = async () => (await su.query("SELECT pgbg._launcher_alive('probe_only') AS a, pgbg._launcher_probe('probe_only') AS p")).rows[0];
    expect(await alive()).toEqual({ a: false, p: false });
    await holder.query('SELECT pg_advisory_lock_shared(1885825635, $1)', [key]);
    expect(await alive()).toEqual({ a: false, p: false });
    await holder.query('SELECT pg_advisory_unlock_shared(1885825635, $1)', [key]);
    await holder.query('SELECT pg_advisory_lock(1885825635, $1)', [key]);
    expect(await alive()).toEqual({ a: true, p: true });
    await holder.query('SELECT pg_advisory_unlock(1885825635, $1)', [key]);
    expect(await alive()).toEqual({ a: false, p: false });
    // the probe leaves nothing behind
    expect((await su.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885825635 AND objid = $1", [key])).rows[0].n).toBe(0);
  });
});

describe("settings copied from the session's previous job (registry 10)", () => {
  const enqueueFrom = (c: pg.Client, sessionId: string, from: string | null) =>
    c.query("SELECT job_id FROM pgbg.enqueue('SELECT 1', 'SELECT', true, NULL, NULL, NULL, NULL, $1, NULL, 10000, NULL, $2)", [sessionId, from]).then((r) => String(r.rows[0].job_id));
  const timeZoneOf = async (c: pg.Client, id: string) => (await c.query("SELECT settings->>'TimeZone' AS tz FROM pgbg.job WHERE id = $1", [id])).rows[0].tz;

  it('settings_from copies an earlier job of the same session, owner and login; anything else reads them afresh', async () => {
    const su = await session();
    const c = await session();
    await c.query("SET TimeZone = 'Asia/Tokyo'");
    const first = await enqueueFrom(c, 'copy-1', null);
    expect(await timeZoneOf(su, first)).toBe('Asia/Tokyo');
    await c.query("SET TimeZone = 'America/New_York'");
    // the caller vouches that its settings are still those of `first`: they are copied
    expect(await timeZoneOf(su, await enqueueFrom(c, 'copy-1', first))).toBe('Asia/Tokyo');
    // another session id, no job, another owner's job: read afresh
    expect(await timeZoneOf(su, await enqueueFrom(c, 'copy-2', first))).toBe('America/New_York');
    expect(await timeZoneOf(su, await enqueueFrom(c, 'copy-1', '999999999'))).toBe('America/New_York');
    const bob = await session(db, 'bob');
    await bob.query("SET TimeZone = 'Europe/Paris'");
    expect(await timeZoneOf(su, await enqueueFrom(bob, 'copy-1', first))).toBe('Europe/Paris');
    // after the session read its configuration files again, the copy would be stale: afresh
    await su.query('SELECT pg_reload_conf()');
    await eventually(async () => (await c.query('SELECT pg_conf_load_time() > (SELECT submitted_at FROM pgbg.job WHERE id = $1) AS reloaded', [first])).rows[0].reloaded, 10_000, 50);
    expect(await timeZoneOf(su, await enqueueFrom(c, 'copy-1', first))).toBe('America/New_York');
  });

  it('through the proxy, back-to-back submissions read the settings once; anything relayed in between makes the next one read them again', { timeout: 60_000 }, async () => {
    // A cluster of its own that counts function calls (track_functions is the server's setting,
    // so every session and launcher has the same value and a job never needs to set it).
    const counted = await startCluster({ settings: { track_functions: 'all' } });
    try {
      const cdb = await registryDatabase(counted);
      const su = await counted.connect({ database: cdb });
      await su.query('CREATE TABLE copied (tz text, n int); GRANT INSERT ON copied TO alice');
      const calls = async () =>
        Number((await su.query("SELECT COALESCE(sum(calls), 0) AS n FROM pg_stat_user_functions WHERE schemaname = 'pgbg' AND funcname = 'session_settings'")).rows[0].n);
      const via = await startTestProxy(counted, {});
      try {
        const c = await via.connect({ user: 'alice', database: cdb });
        c.on('error', () => undefined);
        await c.query("SET TimeZone = 'Asia/Tokyo'");
        const before = await calls();
        const ids: string[] = [];
        for (let i = 1; i <= 3; i++) ids.push(await submit(c, `/*+ background */ INSERT INTO copied VALUES (current_setting('TimeZone'), ${i})`));
        await c.query("SET TimeZone = 'America/New_York'"); // relayed: the next submission reads again
        ids.push(await submit(c, "/*+ background */ INSERT INTO copied VALUES (current_setting('TimeZone'), 4)"));
        for (const id of ids) {
          const j = await waitJob(su, id);
          expect(j.state, JSON.stringify(j)).toBe('succeeded');
        }
        expect((await su.query('SELECT tz, n FROM copied ORDER BY n')).rows).toEqual([
          { tz: 'Asia/Tokyo', n: 1 },
          { tz: 'Asia/Tokyo', n: 2 },
          { tz: 'Asia/Tokyo', n: 3 },
          { tz: 'America/New_York', n: 4 },
        ]);
        // a session's function counts reach the shared statistics once it has been idle a while
        await eventually(async () => (await calls()) - before >= 2, 15_000, 200);
        await new Promise((r) => setTimeout(r, 2500));
        expect((await calls()) - before).toBe(2);
        await c.end();
      } finally {
        await via.close();
        await su.end();
      }
    } finally {
      await counted.stop();
    }
  });
});
