/**
 * Privilege-escape campaign (issue 11): attempts by an ordinary role (alice, who holds
 * pgbackground_role and may CREATE in schema public) to gain rights she does not have: registry
 * functions called directly with forged arguments, the admin console, hints, session settings and
 * the extended protocol. Each `it` is one attempt. Each asserts that it fails with the SQLSTATE
 * a PostgreSQL operator would expect AND that nothing happened: no signal delivered (the victim's
 * query completes), no row changed, nothing learned.
 *
 *   npx vitest run test/security/privilege-campaign.test.ts
 *   PGBG_TEST_STANDIN=1 npx vitest run test/security/privilege-campaign.test.ts
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getCluster, pgErrorOf } from '../harness/index.js';
import { registryDatabase, submit as submitHinted, waitJob } from '../support/jobs.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';

const cluster = getCluster();
const tag = `${process.pid}_${Date.now().toString(36)}`;
/** A login role without pg_background privileges, of this file only. */
const NOPRIV = `camp_nopriv_${tag}`;
const PASSWORD = 'camp-secret';

let db: string;
let via: TestProxy;
const open: pg.Client[] = [];

async function session(user: string, extra: pg.ClientConfig = {}): Promise<pg.Client> {
  const c = new pg.Client({ ...cluster.clientConfig({ user, database: db, ...(user === NOPRIV ? { password: PASSWORD } : {}) }), ...extra });
  c.on('error', () => undefined);
  await c.connect();
  open.push(c);
  return c;
}

async function one<T = any>(c: pg.Client, sql: string, params: unknown[] = []): Promise<T> {
  return (await c.query(sql, params)).rows[0] as T;
}

/** The registry's row as the superuser sees it (every column). */
async function row(id: string): Promise<Record<string, unknown> | undefined> {
  return (await cluster.query('SELECT * FROM pgbg.job WHERE id = $1', [id], { database: db })).rows[0];
}

async function count(sql: string, params: unknown[] = []): Promise<number> {
  return Number((await cluster.query(sql, params, { database: db })).rows[0].n);
}

/** A job of `c`'s role through pgbg.submit_and_launch (running unless options keep it queued). */
async function launch(c: pg.Client, statement: string, options: object = {}): Promise<{ job_id: string; worker_pid: number; cookie: string; state: string }> {
  return one(c, "SELECT * FROM pgbg.submit_and_launch($1, 'SELECT', true, NULL, $2::jsonb)", [statement, JSON.stringify(options)]);
}

const FUTURE = { not_before: '2099-01-01T00:00:00Z' };

/**
 * A superuser backend busy with `SELECT pg_sleep(seconds)`: the target of signal attempts.
 * done() resolves to the error code it ended with, or 'ok' when the sleep completed.
 */
async function victim(seconds = 1.5): Promise<{ pid: number; start: Date; done: Promise<string> }> {
  const su = await session('postgres');
  const { pid, start } = await one(su, 'SELECT pg_backend_pid() AS pid, backend_start AS start FROM pg_stat_activity WHERE pid = pg_backend_pid()');
  const done = su.query(`SELECT pg_sleep(${seconds})`).then(
    () => 'ok',
    (e: { code?: string }) => e.code ?? 'error',
  );
  // wait until it is really sleeping
  for (let i = 0; i < 100; i++) {
    const s = await cluster.query("SELECT state FROM pg_stat_activity WHERE pid = $1", [pid], { database: db });
    if (s.rows[0]?.state === 'active') break;
    await new Promise((r) => setTimeout(r, 10));
  }
  return { pid, start, done };
}

let alice: pg.Client;
let bob: pg.Client;
/** bob's running job (pg_sleep) and queued job, the targets of cross-role attempts. */
let bobRunning: { job_id: string; worker_pid: number; cookie: string; state: string };
let bobQueued: string;

beforeAll(async () => {
  db = await registryDatabase(cluster);
  await cluster.query(
    `DO $$BEGIN
       IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${NOPRIV}') THEN
         CREATE ROLE ${NOPRIV} LOGIN PASSWORD '${PASSWORD}';
       END IF;
     END$$`,
    [],
    { database: db },
  );
  // the setting: the console's auth database is one where the role may CREATE
  await cluster.query(`GRANT CREATE ON DATABASE "${db}" TO alice`, [], { database: db });
  via = await startTestProxy(cluster, {
    jobs: { registryUrl: cluster.url('postgres', db) },
    admin: { authDatabase: db },
  });
  alice = await session('alice');
  bob = await session('bob');
  bobRunning = await launch(bob, 'SELECT pg_sleep(30)');
  expect(bobRunning.state).toBe('running');
  bobQueued = (await launch(bob, 'SELECT 1', FUTURE)).job_id;
});

afterAll(async () => {
  await cluster.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [db], { database: 'postgres' }).catch(() => undefined);
  for (const c of open) await c.end().catch(() => undefined);
  await via?.close();
  await cluster.query(`DROP ROLE IF EXISTS ${NOPRIV}`).catch(() => undefined);
});

describe('forged pids, cookies and states (registry functions called directly)', () => {
  it("1. mark_launched with a superuser backend's pid: 42501; no signal, the job still queued", async () => {
    const v = await victim();
    const { job_id } = await launch(alice, 'SELECT 2', FUTURE);
    const e = await pgErrorOf(alice.query('SELECT pgbg.mark_launched($1, $2, 0, 2)', [job_id, v.pid]));
    expect(e.code).toBe('42501');
    expect(await row(job_id)).toMatchObject({ state: 'queued', worker_pid: null, attempts: 0 });
    // the follow-up: cancel the job; it was queued, so nothing is signalled
    expect(await one(alice, 'SELECT pgbg.cancel($1) AS c', [job_id])).toEqual({ c: true });
    expect(await v.done).toBe('ok');
  });

  it("2. mark_launched with the pid and cookie of bob's worker: 42501; bob's job untouched", async () => {
    const { job_id } = await launch(alice, 'SELECT 2', FUTURE);
    const before = await row(bobRunning.job_id);
    const e = await pgErrorOf(alice.query('SELECT pgbg.mark_launched($1, $2, $3, 2)', [job_id, bobRunning.worker_pid, bobRunning.cookie]));
    expect(e.code).toBe('42501');
    expect(await row(job_id)).toMatchObject({ state: 'queued', worker_pid: null });
    expect(await row(bobRunning.job_id)).toEqual(before);
  });

  it("3. mark_launched with alice's own client backend (not a worker): 42501", async () => {
    const other = await session('alice');
    const pid = (await one(other, 'SELECT pg_backend_pid() AS pid')).pid;
    const { job_id } = await launch(alice, 'SELECT 2', FUTURE);
    const e = await pgErrorOf(alice.query('SELECT pgbg.mark_launched($1, $2, 7, 2)', [job_id, pid]));
    expect(e.code).toBe('42501');
    expect(await row(job_id)).toMatchObject({ state: 'queued', worker_pid: null });
    expect((await one(other, 'SELECT 1 AS ok')).ok).toBe(1);
  });

  it("4. mark_launched pointing a job at the worker of alice's other running job: 42501", async () => {
    const running = await launch(alice, 'SELECT pg_sleep(2)');
    const { job_id } = await launch(alice, 'SELECT 2', FUTURE);
    const e = await pgErrorOf(alice.query('SELECT pgbg.mark_launched($1, $2, $3, 2)', [job_id, running.worker_pid, running.cookie]));
    expect(e.code).toBe('42501');
    expect(await row(job_id)).toMatchObject({ state: 'queued', worker_pid: null });
  });

  it('5. cancel after the recorded worker pid was reused by a superuser backend: no signal', async () => {
    const v = await victim();
    const mine = await launch(alice, 'SELECT pg_sleep(1)');
    // what the registry would hold had the worker ended and its pid been reused (start unknown)
    await cluster.query('UPDATE pgbg.job SET worker_pid = $2, worker_start = NULL WHERE id = $1', [mine.job_id, v.pid], { database: db });
    expect(await one(alice, 'SELECT pgbg.cancel($1) AS c', [mine.job_id])).toEqual({ c: true });
    expect(await v.done).toBe('ok');
  });

  it("6. cancel with a fully forged row (superuser's pid and its backend_start): no signal", async () => {
    const v = await victim();
    const mine = await launch(alice, 'SELECT pg_sleep(1)');
    await cluster.query('UPDATE pgbg.job SET worker_pid = $2, worker_start = $3, worker_user = NULL WHERE id = $1', [mine.job_id, v.pid, v.start], { database: db });
    expect(await one(alice, 'SELECT pgbg.cancel($1) AS c', [mine.job_id])).toEqual({ c: true });
    expect(await v.done).toBe('ok');
  });

  it("7. cancel of a queued job whose SQL text a superuser's backend runs: the superuser's query is not cancelled", async () => {
    const { job_id } = await launch(alice, 'SELECT 2', FUTURE);
    const locker = await session('alice');
    await locker.query('BEGIN');
    await locker.query('SELECT pg_advisory_xact_lock(1885825634, $1::int)', [job_id]);
    // a superuser session whose query text is exactly the job's worker SQL, blocked on the lock
    const su = await session('postgres');
    const suPid = (await one(su, 'SELECT pg_backend_pid() AS pid')).pid;
    const runs = su.query(`SELECT pgbg.run_job(${job_id})`).then(() => 'ok', (e: { code?: string }) => e.code ?? 'error');
    for (let i = 0; i < 100; i++) {
      const w = await cluster.query("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", [suPid], { database: db });
      if (w.rows[0]?.wait_event_type === 'Lock') break;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(await one(alice, 'SELECT pgbg.cancel($1) AS c', [job_id])).toEqual({ c: true });
    await new Promise((r) => setTimeout(r, 100));
    await locker.query('COMMIT');
    // run_job's own owner check ends it (42501), not a cancel signal (57014)
    expect(await runs).toBe('42501');
  });

  it("8. cancel bob's running job: 42704 as if it did not exist; his worker is not signalled", async () => {
    const before = await row(bobRunning.job_id);
    const e = await pgErrorOf(alice.query('SELECT pgbg.cancel($1)', [bobRunning.job_id]));
    expect(e.code).toBe('42704');
    expect(e.message).toBe(`job ${bobRunning.job_id} does not exist`);
    expect(await row(bobRunning.job_id)).toEqual(before);
    expect(await count('SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1', [bobRunning.worker_pid])).toBe(1);
  });

  it("9. finish_supervised of alice's own supervised job from a session that did not launch it: 42501", async () => {
    const launcher = await session('alice');
    const j = await one(launcher, "SELECT * FROM pgbg.submit_and_launch('VACUUM pg_catalog.pg_class', 'VACUUM', false)");
    const before = await row(j.job_id);
    const e = await pgErrorOf(alice.query("SELECT pgbg.finish_supervised($1, 'succeeded', 'VACUUM', NULL, NULL)", [j.job_id]));
    expect(e.code).toBe('42501');
    expect(await row(j.job_id)).toEqual(before);
  });

  it("10. finish_supervised of bob's job: 42704; nothing changed", async () => {
    const before = await row(bobRunning.job_id);
    const e = await pgErrorOf(alice.query("SELECT pgbg.finish_supervised($1, 'failed', NULL, '57014', 'x')", [bobRunning.job_id]));
    expect(e.code).toBe('42704');
    expect(await row(bobRunning.job_id)).toEqual(before);
  });

  it("11. launch_failed on bob's queued job: 42704; it stays queued", async () => {
    const e = await pgErrorOf(alice.query("SELECT pgbg.launch_failed($1, '53000', 'forged')", [bobQueued]));
    expect(e.code).toBe('42704');
    expect(await row(bobQueued)).toMatchObject({ state: 'queued', error: null });
  });

  it("12. launch_failed on alice's own job from a session that is not its launcher: 42501", async () => {
    const launcher = await session('alice');
    const { job_id } = await launch(launcher, 'SELECT 2', FUTURE);
    const e = await pgErrorOf(alice.query("SELECT pgbg.launch_failed($1, '53000', 'forged')", [job_id]));
    expect(e.code).toBe('42501');
    expect(await row(job_id)).toMatchObject({ state: 'queued', error: null });
  });

  it('13. pgbg._finish called directly with a forged outcome: 42501', async () => {
    const { job_id } = await launch(alice, 'SELECT 2', FUTURE);
    const e = await pgErrorOf(alice.query("SELECT pgbg._finish($1, 'succeeded', 'SELECT 1', 1, NULL, NULL, NULL)", [job_id]));
    expect(e.code).toBe('42501');
    expect(await row(job_id)).toMatchObject({ state: 'queued', command_tag: null });
  });

  it('14. mark_launched with an invalid api number: 22023; nothing recorded', async () => {
    const { job_id } = await launch(alice, 'SELECT 2', FUTURE);
    expect((await pgErrorOf(alice.query('SELECT pgbg.mark_launched($1, 1, 1, 9)', [job_id]))).code).toBe('22023');
    expect(await row(job_id)).toMatchObject({ state: 'queued', worker_pid: null, api: null });
  });
});

describe('the queue: rows enter only through the validating path', () => {
  it('15. INSERT a queued row at priority 1000 directly: 42501; no row', async () => {
    const before = await count('SELECT count(*) AS n FROM pgbg.job');
    const e = await pgErrorOf(
      alice.query("INSERT INTO pgbg.job (statement, priority, launcher_pid) VALUES ('SELECT 1', 1000, pg_backend_pid())"),
    );
    expect(e.code).toBe('42501');
    expect(await count('SELECT count(*) AS n FROM pgbg.job')).toBe(before);
  });

  it("16. pgbg._enqueue as bob (forged owner): 42501; no job of bob's appears", async () => {
    const before = await count("SELECT count(*) AS n FROM pgbg.job WHERE owner = 'bob'");
    const e = await pgErrorOf(alice.query("SELECT pgbg._enqueue('bob', 'DELETE FROM t', 'DELETE', true, false, NULL, NULL, 1000, NULL, NULL)"));
    expect(e.code).toBe('42501');
    expect(await count("SELECT count(*) AS n FROM pgbg.job WHERE owner = 'bob'")).toBe(before);
  });

  it('17. pgbg._enqueue as the superuser: 42501; no job of postgres appears', async () => {
    const e = await pgErrorOf(alice.query("SELECT pgbg._enqueue('postgres', 'ALTER ROLE alice SUPERUSER', 'ALTER ROLE', true, false, NULL, NULL, 0, NULL, NULL)"));
    expect(e.code).toBe('42501');
    expect(await count("SELECT count(*) AS n FROM pgbg.job WHERE owner = 'postgres'")).toBe(0);
  });

  it('18. a role without pg_background rights calls pgbg._enqueue for itself: 42501; no row', async () => {
    const np = await session(NOPRIV);
    const e = await pgErrorOf(np.query("SELECT pgbg._enqueue(current_user, 'SELECT 1', 'SELECT', true, false, NULL, NULL, 1000, NULL, NULL)"));
    expect(e.code).toBe('42501');
    expect((await pgErrorOf(np.query("SELECT pgbg.submit('SELECT 1', 'SELECT', true)"))).code).toBe('42501');
    expect(await count('SELECT count(*) AS n FROM pgbg.job WHERE owner = $1', [NOPRIV])).toBe(0);
  });

  it('19. UPDATE the priority of a queued job: 42501; unchanged', async () => {
    const e = await pgErrorOf(alice.query('UPDATE pgbg.job SET priority = 1000 WHERE id = $1', [bobQueued]));
    expect(e.code).toBe('42501');
    expect(await row(bobQueued)).toMatchObject({ priority: 0 });
  });

  it("20. INSERT result rows for bob's job: 42501 (row-level security); his results unchanged", async () => {
    const e = await pgErrorOf(alice.query(`INSERT INTO pgbg.job_result (job_id, ord, "row") VALUES ($1, 1, '{"forged": true}')`, [bobRunning.job_id]));
    expect(e.code).toBe('42501');
    expect(await count('SELECT count(*) AS n FROM pgbg.job_result WHERE job_id = $1', [bobRunning.job_id])).toBe(0);
  });
});

describe('nothing learned about other roles', () => {
  it("21. in_flight('user', 'bob'): 42501", async () => {
    const e = await pgErrorOf(alice.query("SELECT pgbg.in_flight('user', 'bob')"));
    expect(e.code).toBe('42501');
    // her own count and the totals stay answerable
    expect((await one(alice, "SELECT pgbg.in_flight('user', 'alice') AS n")).n).toBeGreaterThanOrEqual(0);
    expect((await one(alice, 'SELECT pgbg.in_flight() AS n')).n).toBeGreaterThanOrEqual(1);
  });

  it("22. queue_position of bob's queued job: the same answer as for a job that does not exist (NULL)", async () => {
    expect(await one(alice, 'SELECT pgbg.queue_position($1) AS p', [bobQueued])).toEqual({ p: null });
    expect(await one(alice, 'SELECT pgbg.queue_position(987654321) AS p')).toEqual({ p: null });
    expect((await one(bob, 'SELECT pgbg.queue_position($1) AS p', [bobQueued])).p).toBeGreaterThanOrEqual(1);
  });

  it("23. read bob's rows from pgbg.job, pgbg.jobs, pgbg.job_attempts: no rows", async () => {
    for (const sql of ["SELECT * FROM pgbg.job WHERE owner = 'bob'", "SELECT * FROM pgbg.jobs WHERE submitted_by = 'bob'", 'SELECT * FROM pgbg.job_attempts WHERE job_id = $1']) {
      const r = await alice.query(sql, sql.includes('$1') ? [bobRunning.job_id] : []);
      expect(r.rowCount, sql).toBe(0);
    }
  });

  it("24. pgbg.result / pgbg.wait on bob's job: 42704", async () => {
    expect((await pgErrorOf(alice.query('SELECT * FROM pgbg.result($1)', [bobRunning.job_id]))).code).toBe('42704');
    expect((await pgErrorOf(alice.query("SELECT pgbg.wait($1, '10ms')", [bobRunning.job_id]))).code).toBe('42704');
  });

  it("25. the notification channel of bob, or the secret behind it: 42501", async () => {
    expect((await pgErrorOf(alice.query("SELECT pgbg.jobs_channel('bob')"))).code).toBe('42501');
    expect((await pgErrorOf(alice.query('SELECT * FROM pgbg.notify_secret'))).code).toBe('42501');
    const bobOid = (await one(alice, "SELECT oid FROM pg_roles WHERE rolname = 'bob'")).oid;
    expect((await pgErrorOf(alice.query('SELECT pgbg._channel_for($1)', [bobOid]))).code).toBe('42501');
  });

  it("26. LISTEN on pgbg_jobs and on alice's own channel while bob's jobs change: no id of bob's arrives", async () => {
    const listener = await session('alice');
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(n.payload ?? ''));
    await listener.query('LISTEN pgbg_jobs');
    await listener.query(`LISTEN ${(await one(listener, 'SELECT pgbg.jobs_channel() AS c')).c}`);
    const b = await launch(bob, 'SELECT 1');
    expect((await one(bob, "SELECT pgbg.wait($1, '20s') AS s", [b.job_id])).s).toBe('succeeded');
    await new Promise((r) => setTimeout(r, 200));
    expect(heard).toEqual([]);
  });

  it("27. a forged NOTIFY on pgbg_jobs does not reach bob's channel (nor change his job)", async () => {
    const listener = await session('bob');
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(n.payload ?? ''));
    await listener.query(`LISTEN ${(await one(listener, 'SELECT pgbg.jobs_channel() AS c')).c}`);
    await alice.query("SELECT pg_notify('pgbg_jobs', $1)", [JSON.stringify({ id: Number(bobQueued), state: 'succeeded' })]);
    await new Promise((r) => setTimeout(r, 200));
    expect(heard).toEqual([]);
    expect(await row(bobQueued)).toMatchObject({ state: 'queued' });
  });

  it('28. internal helpers (_may_manage, _worker_start, _notify, _is_launcher): 42501', async () => {
    for (const sql of [
      "SELECT pgbg._may_manage('bob')",
      "SELECT pgbg._worker_start(1, ARRAY['bob']::name[], now(), 0)",
      `SELECT pgbg._notify(${bobQueued}, 'succeeded')`,
      'SELECT pgbg._is_launcher(1, NULL)',
    ]) {
      expect((await pgErrorOf(alice.query(sql))).code, sql).toBe('42501');
    }
    expect(await row(bobQueued)).toMatchObject({ state: 'queued' });
  });
});

describe('the admin console', () => {
  /** Login to the console (database pgbg of the proxy) as alice with startup options. */
  async function consoleLogin(options: string): Promise<{ code?: string; message: string }> {
    const c = new pg.Client({ ...via.clientConfig({ user: 'alice', database: 'pgbg' }), options });
    c.on('error', () => undefined);
    try {
      await c.connect();
      const r = await c.query('SHOW JOBS').catch((e) => e);
      await c.end();
      return { message: `got in: ${JSON.stringify(r?.rows?.length)}` };
    } catch (e) {
      return e as { code?: string; message: string };
    }
  }

  /** An operator function for name = name that is true exactly when the left name is a superuser's. */
  const SUPER_EQ = (fn: string) =>
    `CREATE FUNCTION ${fn}(a name, b name) RETURNS boolean LANGUAGE sql
       AS 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) a AND r.rolsuper)'`;

  it("29. CREATE OPERATOR public.= (name, name) + search_path=public,pg_catalog (the issue's attack): 28000", async () => {
    // "equal" to any superuser's name: the check's WHERE rolname = session_user then finds a
    // superuser's row, and its rolsuper said t for alice
    await alice.query(SUPER_EQ('public.camp_eq'));
    await alice.query('CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = name, FUNCTION = public.camp_eq)');
    try {
      const e = await consoleLogin('-c search_path=public,pg_catalog');
      expect(e.code, e.message).toBe('28000');
      expect(e.message).toBe('permission denied for the pgbg-proxy admin console');
    } finally {
      await alice.query('DROP OPERATOR public.= (name, name)');
      await alice.query('DROP FUNCTION public.camp_eq(name, name)');
    }
  });

  it('30. a schema shadowing pg_catalog (pg_has_role, text, =, pg_roles-like names) first on the search_path: 28000', async () => {
    await alice.query('CREATE SCHEMA camp_evil');
    await alice.query(`CREATE FUNCTION camp_evil.pg_has_role(name, name, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'`);
    await alice.query(`CREATE FUNCTION camp_evil.pg_has_role(name, text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'`);
    await alice.query(SUPER_EQ('camp_evil.eq'));
    await alice.query('CREATE OPERATOR camp_evil.= (LEFTARG = name, RIGHTARG = name, FUNCTION = camp_evil.eq)');
    await alice.query(`CREATE VIEW camp_evil.pg_roles AS SELECT 'alice'::name AS rolname, true AS rolsuper`);
    try {
      const e = await consoleLogin('-c search_path=camp_evil,pg_catalog');
      expect(e.code, e.message).toBe('28000');
    } finally {
      await alice.query('DROP SCHEMA camp_evil CASCADE');
    }
  });

  it('31. console login with -c role=postgres: refused by the server (42501)', async () => {
    const e = await consoleLogin('-c role=postgres');
    expect(e.code, e.message).toBe('42501');
  });
});

describe('hints, settings and the extended protocol (through the proxy)', () => {
  async function proxied(options?: string): Promise<pg.Client> {
    const c = new pg.Client({ ...via.clientConfig({ user: 'alice', database: db }), ...(options ? { options } : {}) });
    c.on('error', () => undefined);
    await c.connect();
    open.push(c);
    return c;
  }

  it('32. a hinted job that makes its submitter a superuser: the job fails with 42501; alice is no superuser', async () => {
    const c = await proxied();
    const id = await submitHinted(c, '/*+ background */ ALTER ROLE alice SUPERUSER');
    expect(await waitJob(alice, id)).toMatchObject({ state: 'failed', sqlstate: '42501' });
    expect((await one(alice, "SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'")).rolsuper).toBe(false);
  });

  it("33. a hinted job that switches to the superuser role (set_config('role')): the job fails with 42501", async () => {
    const c = await proxied();
    const id = await submitHinted(c, "/*+ background */ SELECT set_config('role', 'postgres', false)");
    expect(await waitJob(alice, id)).toMatchObject({ state: 'failed', sqlstate: '42501' });
  });

  it("34. extended protocol: a hinted pgbg.cancel($1) of bob's job, $1 bound: the job fails with 42704; bob's job runs on", async () => {
    const c = await proxied();
    const before = await row(bobRunning.job_id);
    const id = await submitHinted(c, '/*+ background */ SELECT pgbg.cancel($1)', [bobRunning.job_id]);
    expect(await waitJob(alice, id)).toMatchObject({ state: 'failed', sqlstate: '42704' });
    expect(await row(bobRunning.job_id)).toEqual(before);
  });

  it("35. extended protocol: a bound value that tries to break out of its literal runs as data: the job's ALTER ROLE never happens", async () => {
    const c = await proxied();
    const id = await submitHinted(c, '/*+ background */ SELECT $1::text AS v', ["x'); ALTER ROLE alice SUPERUSER; --"]);
    // the only SQLSTATE is the missing one: the statement succeeded with the value as text
    expect(await waitJob(alice, id)).toMatchObject({ state: 'succeeded', sqlstate: null });
    expect((await one(alice, 'SELECT r FROM pgbg.result($1) r', [id])).r).toEqual({ v: "x'); ALTER ROLE alice SUPERUSER; --" });
    expect((await one(alice, "SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'")).rolsuper).toBe(false);
  });

  it('36. connecting through the proxy with -c role=bob (session setting): refused by the server with 42501', async () => {
    const e = await proxied('-c role=bob').then(
      () => ({ code: 'connected' }),
      (err: { code?: string }) => err,
    );
    expect(e.code).toBe('42501');
  });

  it('37. SET SESSION AUTHORIZATION postgres through the proxy: 42501; still alice', async () => {
    const c = await proxied();
    expect((await pgErrorOf(c.query('SET SESSION AUTHORIZATION postgres'))).code).toBe('42501');
    expect((await one(c, 'SELECT session_user AS s, current_user AS u')).s).toBe('alice');
  });

  it("38. a shadowing schema first on the search_path (public.=, public.to_regclass): alice's own submission still means the same, and nothing escapes", async () => {
    await alice.query(`CREATE FUNCTION public.camp_eq8(int8, int8) RETURNS boolean LANGUAGE sql AS 'SELECT true'`);
    await alice.query('CREATE OPERATOR public.= (LEFTARG = int8, RIGHTARG = int8, FUNCTION = public.camp_eq8)');
    await alice.query(`CREATE FUNCTION public.to_regclass(text) RETURNS regclass LANGUAGE sql AS 'SELECT NULL::regclass'`);
    try {
      const c = await proxied('-c search_path=public,pg_catalog');
      // to_regclass shadowed to say "missing" would refuse this with 42P01; the proxy's check is qualified
      const id = await submitHinted(c, '/*+ background */ SELECT count(*) AS n FROM pg_catalog.pg_class');
      expect(await waitJob(alice, id)).toMatchObject({ state: 'succeeded' });
      // and a job of bob's cannot be cancelled through it: 42704
      expect((await pgErrorOf(c.query('SELECT pgbg.cancel($1)', [bobRunning.job_id]))).code).toBe('42704');
      expect(await row(bobRunning.job_id)).toMatchObject({ state: 'running', cancel_requested: false });
    } finally {
      await alice.query('DROP OPERATOR public.= (int8, int8)');
      await alice.query('DROP FUNCTION public.camp_eq8(int8, int8)');
      await alice.query('DROP FUNCTION public.to_regclass(text)');
    }
  });

  it('39. SET ROLE pgbg_admin, and GRANT pgbg_admin TO alice: 42501; still not an admin', async () => {
    expect((await pgErrorOf(alice.query('SET ROLE pgbg_admin'))).code).toBe('42501');
    expect((await pgErrorOf(alice.query('GRANT pgbg_admin TO alice'))).code).toBe('42501');
    expect((await one(alice, "SELECT pg_has_role('alice', 'pgbg_admin', 'MEMBER') AS m")).m).toBe(false);
  });
});

describe('the launcher (registry 6): only a login\'s live launcher launches, and only that login\'s jobs', () => {
  const enqueueArgs = "'SELECT 1', 'SELECT', true, NULL, NULL, 0, NULL, NULL";
  it("40. _launcher_mark of alice's own queued job from a session that is not her launcher: 42501; still queued", async () => {
    const { id } = await one(alice, `SELECT pgbg.submit('SELECT 1', 'SELECT', true, NULL, NULL, $1::jsonb) AS id`, [JSON.stringify(FUTURE)]);
    const e = await pgErrorOf(alice.query('SELECT pgbg._launcher_mark($1, pg_backend_pid(), 1, 2)', [id]));
    expect(e.code).toBe('42501');
    expect((await row(id))?.state).toBe('queued');
  });

  it("41. alice takes her login's launcher lock herself and marks, fails or launches bob's queued job: refused; bob's job untouched", async () => {
    const own = await session('alice');
    // alice's real launcher (from the jobs above) goes first, so that she can take its lock
    await cluster.query("SELECT pg_terminate_backend(pid) FROM pgbg.launchers WHERE login = 'alice' AND alive AND pid IS NOT NULL", [], { database: db });
    let got = false;
    for (let i = 0; i < 100 && !got; i++) {
      got = (await one(own, "SELECT pg_try_advisory_lock(1885825635, pgbg._launcher_key('alice')) AS ok")).ok;
      if (!got) await new Promise((r) => setTimeout(r, 50));
    }
    expect(got).toBe(true);
    try {
      expect((await pgErrorOf(own.query('SELECT pgbg._launcher_mark($1, pg_backend_pid(), 1, 2)', [bobQueued]))).code).toBe('42501');
      expect((await one(own, "SELECT pgbg._launcher_fail($1, '53000', 'forged') AS ok", [bobQueued])).ok).toBe(false);
      expect((await pgErrorOf(own.query('SELECT * FROM pgbg._launcher_launch($1)', [bobQueued]))).code).toBe('55000');
      expect((await one(own, 'SELECT count(*)::int AS n FROM pgbg._launcher_candidates(100) c WHERE c.job_id = $1', [bobQueued])).n).toBe(0);
    } finally {
      await own.query("SELECT pg_advisory_unlock(1885825635, pgbg._launcher_key('alice'))");
    }
    expect(await row(bobQueued)).toMatchObject({ state: 'queued', worker_pid: null, attempts: 0 });
  });

  it('42. a job that would carry role or session_authorization as a setting: 22023; no row', async () => {
    const before = await count("SELECT count(*) AS n FROM pgbg.job WHERE owner = 'alice'");
    for (const settings of [{ role: 'postgres' }, { session_authorization: 'postgres' }, { 'pg_background.max_workers': '1' }, { search_path: 1 }]) {
      const e = await pgErrorOf(alice.query(`SELECT pgbg._enqueue_job('alice', ${enqueueArgs}, $1::jsonb, NULL)`, [JSON.stringify(settings)]));
      expect(e.code, JSON.stringify(settings)).toBe('22023');
    }
    expect(await count("SELECT count(*) AS n FROM pgbg.job WHERE owner = 'alice'")).toBe(before);
  });

  it("43. _enqueue_job for bob or the superuser: 42501; no job of theirs appears", async () => {
    for (const owner of ['bob', 'postgres']) {
      const before = await count('SELECT count(*) AS n FROM pgbg.job WHERE owner = $1', [owner]);
      expect((await pgErrorOf(alice.query(`SELECT pgbg._enqueue_job($1, ${enqueueArgs}, NULL, NULL)`, [owner]))).code).toBe('42501');
      expect(await count('SELECT count(*) AS n FROM pgbg.job WHERE owner = $1', [owner])).toBe(before);
    }
  });

  it('44. set_admission_config as alice (to lift every limit): 42501; nothing stored', async () => {
    const before = await count('SELECT count(*) AS n FROM pgbg.admission_config');
    expect((await pgErrorOf(alice.query("SELECT pgbg.set_admission_config('mine', '{}'::jsonb)"))).code).toBe('42501');
    expect((await pgErrorOf(alice.query("INSERT INTO pgbg.admission_config VALUES ('mine', '{}'::jsonb)"))).code).toBe('42501');
    expect(await count('SELECT count(*) AS n FROM pgbg.admission_config')).toBe(before);
  });

  it("45. _launcher_report and _launcher_starting cannot make another login's launcher look alive or dead", async () => {
    expect((await pgErrorOf(alice.query("SELECT pgbg._launcher_report('start', 0, 1000)"))).code).toBe('42501');
    await alice.query('SELECT pgbg._launcher_starting(pg_backend_pid(), 1000)'); // only ever alice's own row
    expect(await count("SELECT count(*) AS n FROM pgbg.launcher WHERE login = 'bob' AND starting_at > now() - interval '5 seconds'")).toBe(0);
    expect((await pgErrorOf(alice.query("UPDATE pgbg.launcher SET starting_at = now() WHERE login = 'bob'"))).code).toBe('42501');
  });

  it("46. bob's launchers and waiting jobs are not alice's to see", async () => {
    expect(await count("SELECT count(*) AS n FROM pgbg.launcher WHERE login = 'bob'")).toBeGreaterThanOrEqual(0);
    expect((await alice.query("SELECT * FROM pgbg.launchers WHERE login = 'bob'")).rowCount).toBe(0);
    expect((await pgErrorOf(alice.query('SELECT * FROM pgbg.launcher'))).code).toBe('42501');
  });
});
