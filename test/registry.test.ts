/**
 * The job registry (schema pgbg): migration, RLS, and the SQL functions the proxy calls, driven
 * directly with node-postgres against real pg_background workers (or the dblink stand-in).
 *
 *   npx vitest run test/registry.test.ts
 *   PGBG_TEST_PG_BACKGROUND=2.0 npx vitest run test/registry.test.ts      # 1.8, 2.0 or standin
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, MigrationError, REGISTRY_VERSION, registryVersion } from '../src/jobs/migrate.js';
import { MIGRATIONS } from '../src/jobs/registry/index.js';
import { eventually, getCluster, pgBackgroundNames, pgErrorOf } from './harness/index.js';

const cluster = getCluster();
const standin = cluster.pgBackground === 'standin';
/** The handle API's names on this cluster (2.x: unsuffixed; 1.8 and the stand-in: _v2). */
const api = pgBackgroundNames(cluster);
const tag = `${process.pid}_${Date.now().toString(36)}`;
/** Login roles made for this file (cluster-wide, so uniquely named). */
const ADMIN = `reg_admin_${tag}`;
const NOPRIV = `reg_nopriv_${tag}`;
const PASSWORD = 'reg-secret';

let db: string;
const open: pg.Client[] = [];

async function session(user = 'postgres', database = db): Promise<pg.Client> {
  const custom = user === ADMIN || user === NOPRIV;
  const client = new pg.Client(cluster.clientConfig({ user, database, ...(custom ? { password: PASSWORD } : {}) }));
  client.on('error', () => undefined); // terminated backends in some tests
  await client.connect();
  open.push(client);
  return client;
}

async function one<T = any>(c: pg.Client, sql: string, params: unknown[] = []): Promise<T> {
  const r = await c.query(sql, params);
  return r.rows[0] as T;
}

async function job(id: string | number): Promise<Record<string, any>> {
  const c = await session('postgres');
  try {
    return await one(c, 'SELECT * FROM pgbg.job WHERE id = $1', [id]);
  } finally {
    await c.end();
    open.splice(open.indexOf(c), 1);
  }
}

/** The two-step idiom: submit, then launch + mark_launched in one statement. */
async function submitAndLaunchTwoStep(c: pg.Client, statement: string, kind: string, options: object = {}): Promise<string> {
  const { id } = await one(c, 'SELECT pgbg.submit($1, $2, true, NULL, NULL, $3::jsonb) AS id', [statement, kind, JSON.stringify(options)]);
  const r = await one(
    c,
    `SELECT pgbg.mark_launched($1, (s.h).pid, (s.h).cookie, 2) AS id FROM (SELECT ${api.launch}(pgbg.launch_sql($1)) h) s`,
    [id],
  );
  expect(r.id).toBe(id);
  return id;
}

/** One round trip: pgbg.submit_and_launch. */
async function submit(c: pg.Client, statement: string, kind: string, options: object = {}, transactional = true) {
  return one<{ job_id: string; state: string; worker_pid: number | null; cookie: string | null; api: number }>(
    c,
    'SELECT * FROM pgbg.submit_and_launch($1, $2, $3, NULL, $4::jsonb)',
    [statement, kind, transactional, JSON.stringify(options)],
  );
}

async function wait(c: pg.Client, id: string, timeout = '20s'): Promise<string> {
  return (await one(c, 'SELECT pgbg.wait($1, $2::interval) AS s', [id, timeout])).s;
}

beforeAll(async () => {
  db = await cluster.createDatabase();
  const su = await session('postgres');
  await su.query(`
    CREATE TABLE acct (id int PRIMARY KEY, bal int NOT NULL);
    INSERT INTO acct SELECT g, 100 FROM generate_series(1, 5) g;
    GRANT SELECT, INSERT, UPDATE, DELETE ON acct TO alice;
    GRANT SELECT ON acct TO bob;
    CREATE TABLE whoami (s name, c name, sp text);
    GRANT INSERT, SELECT ON whoami TO alice;
    CREATE TABLE big (x int);
    INSERT INTO big SELECT g FROM generate_series(1, 300000) g;
    ALTER TABLE big OWNER TO alice;
    GRANT CREATE ON SCHEMA public TO alice;
    CREATE SCHEMA alice_s AUTHORIZATION alice;
    CREATE TABLE alice_s.only_here (v int);
    ALTER TABLE alice_s.only_here OWNER TO alice;
  `);
  await su.query(`CREATE ROLE ${ADMIN} LOGIN PASSWORD '${PASSWORD}'`);
  await su.query(`CREATE ROLE ${NOPRIV} LOGIN PASSWORD '${PASSWORD}'`);
  await su.query(`GRANT pgbackground_role TO ${ADMIN}`);
});

afterAll(async () => {
  await Promise.all(open.map((c) => c.end().catch(() => undefined)));
  const su = new pg.Client(cluster.clientConfig({ user: 'postgres', database: 'postgres' }));
  await su.connect();
  try {
    await su.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ('${ADMIN}', '${NOPRIV}')`);
    await su.query(`DROP ROLE IF EXISTS ${ADMIN}`);
    await su.query(`DROP ROLE IF EXISTS ${NOPRIV}`);
  } finally {
    await su.end();
  }
});

describe('migrate', () => {
  it('creates the registry once and is idempotent', async () => {
    const su = await session('postgres');
    expect(await registryVersion(su)).toBeNull();
    expect(await migrate(su)).toEqual({ from: 0, to: REGISTRY_VERSION });
    expect(await migrate(su)).toEqual({ from: REGISTRY_VERSION, to: REGISTRY_VERSION });
    expect(await registryVersion(su)).toBe(REGISTRY_VERSION);
    const objs = await one(
      su,
      `SELECT to_regclass('pgbg.job') IS NOT NULL AS job, to_regclass('pgbg.job_result') IS NOT NULL AS result,
              to_regclass('pgbg.jobs') IS NOT NULL AS view,
              (SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'pgbg.job'::regclass) AS rls,
              EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgbg_admin' AND NOT rolcanlogin) AS admin_role`,
    );
    expect(objs).toEqual({ job: true, result: true, view: true, rls: true, admin_role: true });
    await su.query(`GRANT pgbg_admin TO ${ADMIN}`);
  });

  it('concurrent runs apply each version once', async () => {
    const other = await cluster.createDatabase();
    const [a, b] = [await session('postgres', other), await session('postgres', other)];
    const results = await Promise.all([migrate(a), migrate(b)]);
    expect(results.map((r) => r.to)).toEqual([REGISTRY_VERSION, REGISTRY_VERSION]);
    expect(results.filter((r) => r.from === 0)).toHaveLength(1);
    expect((await a.query('SELECT version FROM pgbg.schema_version ORDER BY version')).rows.map((r) => r.version)).toEqual(MIGRATIONS.map((m) => m.version));
  });

  it('refuses a non-superuser and names what is missing', async () => {
    const alice = await session('alice');
    const err = await migrate(alice).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/superuser.*"alice" lacks SUPERUSER/);
  });

  it('refuses a pre-existing pgbg schema owned by an ordinary role', async () => {
    const other = await cluster.createDatabase();
    const su = await session('postgres', other);
    await su.query('CREATE SCHEMA pgbg AUTHORIZATION alice');
    const err = await migrate(su).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/owned by "alice", who is not a superuser/);
    expect(await registryVersion(su)).toBeNull();
  });
});

describe('transactional jobs', () => {
  it('an UPDATE launched with submit + mark_launched succeeds with its row count and tag', async () => {
    const alice = await session('alice');
    const id = await submitAndLaunchTwoStep(alice, 'UPDATE acct SET bal = bal + 1 WHERE id <= 3', 'UPDATE');
    expect(await wait(alice, id)).toBe('succeeded');
    const j = await job(id);
    expect(j).toMatchObject({ state: 'succeeded', command_tag: 'UPDATE 3', rows: '3', owner: 'alice', api: 2, attempts: 1 });
    expect(j.worker_pid).toBeGreaterThan(0);
    expect(j.started_at).not.toBeNull();
    expect(j.finished_at).not.toBeNull();
    expect((await one(alice, 'SELECT sum(bal)::int AS s FROM acct WHERE id <= 3')).s).toBe(303);
    const v = await one(alice, 'SELECT * FROM pgbg.jobs WHERE id = $1', [id]);
    expect(v).toMatchObject({ submitted_by: 'alice', state: 'succeeded', command_tag: 'UPDATE 3', kind: 'UPDATE', cancel_requested: false });
    expect(v.elapsed).not.toBeNull();
  });

  it('submit_and_launch does it in one round trip; a rolled-back submission leaves nothing behind', async () => {
    const alice = await session('alice');
    const r = await submit(alice, 'INSERT INTO acct VALUES (10, 1), (11, 1)', 'INSERT');
    expect(r).toMatchObject({ state: 'running', api: 2 });
    expect(await wait(alice, r.job_id)).toBe('succeeded');
    expect((await job(r.job_id)).command_tag).toBe('INSERT 0 2');

    await alice.query('BEGIN');
    const gone = await submit(alice, 'INSERT INTO acct VALUES (12, 1)', 'INSERT');
    await alice.query('ROLLBACK');
    await new Promise((res) => setTimeout(res, 500)); // the worker has had time to run, were it going to
    expect(await job(gone.job_id)).toBeUndefined();
    expect((await alice.query('SELECT 1 FROM acct WHERE id = 12')).rowCount).toBe(0);
  });

  it('division by zero fails with 22012; a unique violation with 23505 and its detail', async () => {
    const alice = await session('alice');
    const a = await submit(alice, 'SELECT 1/0', 'SELECT');
    expect(await wait(alice, a.job_id)).toBe('failed');
    expect(await job(a.job_id)).toMatchObject({ sqlstate: '22012', error: 'division by zero', command_tag: null });

    const b = await submit(alice, 'INSERT INTO acct VALUES (1, 0)', 'INSERT');
    expect(await wait(alice, b.job_id)).toBe('failed');
    expect(await job(b.job_id)).toMatchObject({ sqlstate: '23505', error_detail: 'Key (id)=(1) already exists.' });
  });

  it('runs as the submitting role: a role without UPDATE on the table gets a failed job with 42501', async () => {
    const bob = await session('bob');
    const r = await submit(bob, 'UPDATE acct SET bal = 0', 'UPDATE');
    expect(await wait(bob, r.job_id)).toBe('failed');
    expect(await job(r.job_id)).toMatchObject({ sqlstate: '42501', owner: 'bob' });
    expect((await one(bob, 'SELECT count(*)::int AS n FROM acct WHERE bal = 0')).n).toBe(0);
  });

  it('the worker runs as the launching role, with its search_path; SET ROLE keeps the login as session_user', async () => {
    const alice = await session('alice');
    await alice.query('SET search_path = alice_s, public');
    const a = await submit(alice, "INSERT INTO whoami SELECT session_user, current_user, current_setting('search_path')", 'INSERT');
    expect(await wait(alice, a.job_id)).toBe('succeeded');
    const b = await submit(alice, 'INSERT INTO only_here VALUES (1)', 'INSERT'); // resolvable only via alice_s
    expect(await wait(alice, b.job_id)).toBe('succeeded');

    const su = await session('postgres');
    await su.query('SET ROLE alice');
    const c = await submit(su, "INSERT INTO whoami SELECT session_user, current_user, 'via set role'", 'INSERT');
    expect(await wait(su, c.job_id)).toBe('succeeded');
    expect((await job(c.job_id)).owner).toBe('alice');
    const rows = (await su.query('SELECT s, c, sp FROM public.whoami ORDER BY sp')).rows;
    expect(rows).toEqual([
      { s: 'alice', c: 'alice', sp: 'alice_s, public' },
      { s: 'postgres', c: 'alice', sp: 'via set role' },
    ]);
  });

  it("the client's statement_timeout does not reach the job; options.timeout_ms does", async () => {
    const alice = await session('alice');
    // The session's first launch loads the pg_background library (slower on 2.0, and on a loaded
    // machine): do it before the short timeout, which is about the job, not the submission.
    expect(await wait(alice, (await submit(alice, 'SELECT 1', 'SELECT')).job_id)).toBe('succeeded');
    // 400 ms: a dblink stand-in launch alone takes 80-150 ms on a loaded 2-core machine
    await alice.query("SET statement_timeout = '400ms'");
    const a = await submit(alice, 'SELECT pg_sleep(1.2)', 'SELECT');
    await alice.query('SET statement_timeout = 0');
    expect(await wait(alice, a.job_id)).toBe('succeeded');
    expect((await one(alice, 'SHOW statement_timeout')).statement_timeout).toBe('0');

    const b = await submit(alice, 'SELECT pg_sleep(5)', 'SELECT', { timeout_ms: 200 });
    expect(await wait(alice, b.job_id)).toBe('failed');
    expect(await job(b.job_id)).toMatchObject({ sqlstate: '57014', error: 'canceling statement due to statement timeout' });
  });

  it('command tags follow PostgreSQL for DML and utility statements', async () => {
    const alice = await session('alice');
    const cases: [string, string, string][] = [
      ['DELETE FROM acct WHERE id >= 10', 'DELETE', 'DELETE 2'],
      ['CREATE TABLE alice_s.made AS SELECT g FROM generate_series(1, 4) g', 'CREATE TABLE AS', 'SELECT 4'],
      ['CREATE INDEX ON alice_s.made (g)', 'CREATE INDEX', 'CREATE INDEX'],
    ];
    for (const [sql, kind, expected] of cases) {
      const r = await submit(alice, sql, kind);
      expect(await wait(alice, r.job_id)).toBe('succeeded');
      expect((await job(r.job_id)).command_tag).toBe(expected);
    }
  });

  it('keeps the rows of a SELECT (and of ... RETURNING) for pgbg.result, in order', async () => {
    const alice = await session('alice');
    const a = await submit(alice, 'SELECT id, bal FROM acct WHERE id <= 3 ORDER BY id DESC;', 'SELECT', {
      returns_rows: true,
      rows_via: 'subquery',
    });
    expect(await wait(alice, a.job_id)).toBe('succeeded');
    const rows = (await alice.query('SELECT r FROM pgbg.result($1) r', [a.job_id])).rows.map((x) => x.r);
    expect(rows).toEqual([
      { id: 3, bal: 101 },
      { id: 2, bal: 101 },
      { id: 1, bal: 101 },
    ]);
    expect(await job(a.job_id)).toMatchObject({ command_tag: 'SELECT 3', rows: '3' });

    const b = await submit(alice, 'UPDATE acct SET bal = bal - 1 WHERE id IN (4, 5) RETURNING id', 'UPDATE', {
      returns_rows: true,
      rows_via: 'cte',
    });
    expect(await wait(alice, b.job_id)).toBe('succeeded');
    const ids = (await alice.query('SELECT (r->>$2)::int AS id FROM pgbg.result($1) r', [b.job_id, 'id'])).rows.map((x) => x.id);
    expect(ids.sort()).toEqual([4, 5]);
    expect((await job(b.job_id)).command_tag).toBe('UPDATE 2');

    const slow = await submit(alice, 'SELECT 1 AS x FROM pg_sleep(1)', 'SELECT', { returns_rows: true });
    expect((await pgErrorOf(alice.query('SELECT * FROM pgbg.result($1)', [slow.job_id]))).code).toBe('55000');
    expect(await wait(alice, slow.job_id)).toBe('succeeded');
  });

  it("announces every state change as {id} on the owner's own channel, nothing on pgbg_jobs", async () => {
    const listener = await session('alice');
    const channel = (await one(listener, 'SELECT pgbg.jobs_channel() AS c')).c as string;
    expect(channel).toMatch(/^pgbg_jobs_[0-9a-f]{32}$/);
    const got: { channel: string; payload: unknown }[] = [];
    listener.on('notification', (n) => got.push({ channel: n.channel, payload: JSON.parse(n.payload ?? 'null') }));
    await listener.query(`LISTEN ${channel}`);
    await listener.query('LISTEN pgbg_jobs');
    const alice = await session('alice');
    const r = await submit(alice, 'SELECT 1', 'SELECT');
    expect(await wait(alice, r.job_id)).toBe('succeeded');
    await eventually(async () => got.length >= 2);
    await new Promise((res) => setTimeout(res, 100));
    // running, succeeded: the id only, on the owner's channel; the state is read from pgbg.jobs
    expect(got).toEqual([
      { channel, payload: { id: Number(r.job_id) } },
      { channel, payload: { id: Number(r.job_id) } },
    ]);
  });

  it('idempotency key: one active job per key and owner', async () => {
    const alice = await session('alice');
    const k = { statement: 'SELECT pg_sleep(1)', key: `k-${tag}` };
    const { id } = await one(alice, "SELECT pgbg.submit($1, 'SELECT', true, idem_key => $2) AS id", [k.statement, k.key]);
    const dup = await pgErrorOf(alice.query("SELECT pgbg.submit($1, 'SELECT', true, idem_key => $2)", [k.statement, k.key]));
    expect(dup.code).toBe('23505');
    expect(dup.detail).toBe(`job ${id}`);
    expect(await one(alice, 'SELECT pgbg.cancel($1) AS c', [id])).toEqual({ c: true });
    await alice.query("SELECT pgbg.submit($1, 'SELECT', true, idem_key => $2)", [k.statement, k.key]); // allowed again
  });
});

describe('cancel and lost jobs', () => {
  it('pgbg.cancel on a running job cancels it and nothing commits', async () => {
    const alice = await session('alice');
    const r = await submit(alice, 'INSERT INTO acct SELECT 77, 0 FROM pg_sleep(30)', 'INSERT');
    await eventually(async () => (await one(alice, "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'", [r.worker_pid])).n === 1);
    expect(await one(alice, 'SELECT pgbg.cancel($1) AS c', [r.job_id])).toEqual({ c: true });
    expect(await wait(alice, r.job_id, '10s')).toBe('cancelled');
    expect(await job(r.job_id)).toMatchObject({ state: 'cancelled', sqlstate: '57014', cancel_requested: true });
    expect((await alice.query('SELECT 1 FROM acct WHERE id = 77')).rowCount).toBe(0);
    expect(await one(alice, 'SELECT pgbg.cancel($1) AS c', [r.job_id])).toEqual({ c: false });
  });

  it('a queued job is cancelled at once and can no longer be launched', async () => {
    const alice = await session('alice');
    const { id } = await one(alice, "SELECT pgbg.submit('SELECT 1', 'SELECT', true) AS id");
    expect(await one(alice, 'SELECT pgbg.cancel($1) AS c', [id])).toEqual({ c: true });
    expect((await job(id)).state).toBe('cancelled');
    expect((await pgErrorOf(alice.query('SELECT pgbg.launch_sql($1)', [id]))).code).toBe('55000');
  });

  it('a terminated worker makes the job lost (found by pgbg.wait reconciling)', async () => {
    const alice = await session('alice');
    const r = await submit(alice, 'SELECT pg_sleep(30)', 'SELECT');
    const su = await session('postgres');
    await eventually(async () => (await one(su, 'SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [r.worker_pid])).n === 1);
    await su.query('SELECT pg_terminate_backend($1)', [r.worker_pid]);
    if (/^[2-9]\./.test(cluster.extVersion)) {
      // pg_background 2.x workers turn SIGTERM into a query cancel (its handle_sigterm sets
      // QueryCancelPending, not ProcDiePending), which pgbg.run_job catches: the worker records
      // the truth itself, a failure with 57014, its statement's effects rolled back.
      expect(await wait(alice, r.job_id, '15s')).toBe('failed');
      expect(await job(r.job_id)).toMatchObject({ sqlstate: '57014', error: 'canceling statement due to user request', lost_reason: null });
    } else {
      expect(await wait(alice, r.job_id, '15s')).toBe('lost');
      expect((await job(r.job_id)).lost_reason).toMatch(/^worker process ended without recording an outcome \(terminated or crashed\)/);
    }
  });

  it('a queued job whose submitting session ended is not lost: it waits for its login\'s launcher (registry 6)', async () => {
    const alice = await session('alice');
    const { id } = await one(alice, "SELECT pgbg.submit('SELECT 1', 'SELECT', true) AS id");
    const pid = (await one(alice, 'SELECT pg_backend_pid() AS p')).p;
    const bob = await session('bob');
    await alice.end();
    await eventually(async () => (await one(bob, 'SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [pid])).n === 0);
    expect(await one(bob, 'SELECT pgbg.reconcile($1) AS n', [id])).toEqual({ n: 0 });
    expect(await job(id)).toMatchObject({ state: 'queued', login: 'alice' });
    // The next session of alice starts her launcher, which runs it.
    const again = await session('alice');
    expect((await one(again, 'SELECT pgbg.ensure_launcher(1000) AS pid')).pid).toBeGreaterThan(0);
    expect((await one(again, 'SELECT pgbg.wait($1) AS s', [id])).s, JSON.stringify(await job(id))).toBe('succeeded');
    // Idle for 1 s, it exits (the tests after this one launch alice's jobs themselves).
    const admin = await session('postgres');
    await eventually(async () => (await one(admin, "SELECT count(*)::int AS n FROM pgbg.launchers WHERE login = 'alice' AND alive")).n === 0, 10_000, 100);
  });

  it('a failed launch is recorded with launch_failed', async () => {
    const alice = await session('alice');
    const { id } = await one(alice, "SELECT pgbg.submit('SELECT 1', 'SELECT', true) AS id");
    expect(await one(alice, "SELECT pgbg.launch_failed($1, '53000', 'could not register background process') AS ok", [id])).toEqual({ ok: true });
    expect(await job(id)).toMatchObject({ state: 'failed', sqlstate: '53000', error: 'launch failed: could not register background process' });
  });
});

describe('visibility and privileges', () => {
  it("alice cannot see, wait for, cancel, mark or read bob's job; it looks like it does not exist", async () => {
    const bob = await session('bob');
    const r = await submit(bob, 'SELECT pg_sleep(0.3)', 'SELECT');
    const alice = await session('alice');
    expect((await alice.query('SELECT 1 FROM pgbg.jobs WHERE id = $1', [r.job_id])).rowCount).toBe(0);
    expect((await alice.query('SELECT 1 FROM pgbg.job WHERE id = $1', [r.job_id])).rowCount).toBe(0);
    for (const sql of [
      'SELECT pgbg.wait($1)',
      'SELECT pgbg.cancel($1)',
      'SELECT * FROM pgbg.result($1)',
      'SELECT pgbg.mark_launched($1, 1, 1, 2)',
      "SELECT pgbg.finish_supervised($1, 'succeeded', 'X', NULL, NULL)",
      'SELECT pgbg.launch_sql($1)',
    ]) {
      const e = await pgErrorOf(alice.query(sql, [r.job_id]));
      expect(e.code, sql).toBe('42704');
      expect(e.message).toBe(`job ${r.job_id} does not exist`);
    }
    const missing = await pgErrorOf(alice.query('SELECT pgbg.cancel(987654321)'));
    expect(missing.message).toBe('job 987654321 does not exist');
    expect(await wait(bob, r.job_id)).toBe('succeeded');
  });

  it('a pgbg_admin member sees and cancels every job', async () => {
    const bob = await session('bob');
    const r = await submit(bob, 'SELECT pg_sleep(30)', 'SELECT');
    const admin = await session(ADMIN);
    const owners = (await admin.query('SELECT DISTINCT submitted_by FROM pgbg.jobs ORDER BY 1')).rows.map((x) => x.submitted_by);
    expect(owners).toEqual(expect.arrayContaining(['alice', 'bob']));
    expect(await one(admin, 'SELECT pgbg.cancel($1) AS c', [r.job_id])).toEqual({ c: true });
    expect(await wait(admin, r.job_id, '10s')).toBe('cancelled');
  });

  it('users cannot change the registry directly or forge outcomes', async () => {
    const alice = await session('alice');
    const { id } = await one(alice, "SELECT pgbg.submit('SELECT 1', 'SELECT', true) AS id");
    expect((await pgErrorOf(alice.query("UPDATE pgbg.job SET state = 'succeeded' WHERE id = $1", [id]))).code).toBe('42501');
    expect((await pgErrorOf(alice.query('DELETE FROM pgbg.job WHERE id = $1', [id]))).code).toBe('42501');
    expect((await pgErrorOf(alice.query("INSERT INTO pgbg.job (statement, state) VALUES ('x', 'succeeded')"))).code).toBe('42501');
    // rows enter the queue only through pgbg.submit (registry version 3)
    const direct = await pgErrorOf(alice.query("INSERT INTO pgbg.job (statement, launcher_pid) VALUES ('x', pg_backend_pid())"));
    expect(direct.code).toBe('42501');
    expect(direct.message).toMatch(/permission denied for table job/);
    expect((await pgErrorOf(alice.query("SELECT pgbg._finish($1, 'succeeded', 'SELECT 1', 1, NULL, NULL, NULL)", [id]))).code).toBe('42501');
    expect((await pgErrorOf(alice.query('SELECT pgbg._may_manage($1)', ['alice']))).code).toBe('42501');
    expect((await job(id)).state).toBe('queued');
  });

  it('submission tells a role without pg_background privileges what to GRANT', async () => {
    const c = await session(NOPRIV);
    const e = await pgErrorOf(c.query("SELECT pgbg.submit('SELECT 1', 'SELECT', true)"));
    expect(e.code).toBe('42501');
    expect(e.hint).toContain(`GRANT pgbackground_role TO ${NOPRIV};`);
    expect((await c.query('SELECT 1 FROM pgbg.job')).rowCount).toBe(0);
  });

  it('submission says pg_background is not installed, and how to install it', async () => {
    const other = await cluster.createDatabase();
    const su = await session('postgres', other);
    if (standin) {
      await su.query('DROP FUNCTION public.pg_background_launch_v2(text, int4), public.pg_background_launch(text, int4) CASCADE');
    } else {
      await su.query('DROP EXTENSION pg_background');
    }
    await migrate(su);
    const alice = await session('alice', other);
    const e = await pgErrorOf(alice.query("SELECT pgbg.submit('SELECT 1', 'SELECT', true)"));
    expect(e.code).toBe('42883');
    expect(e.message).toBe(`pg_background is not installed in database ${other}`);
    expect(e.hint).toBe('CREATE EXTENSION pg_background; as a superuser');
  });
});

describe('supervised (non-transactional) jobs', () => {
  async function superviseUntilDone(launcher: pg.Client, id: string, pid: number, cookie: string): Promise<void> {
    for (;;) {
      const done = (await one(launcher, 'SELECT pgbg.worker_stopped(2, $1, $2) AS d', [pid, cookie])).d;
      if (done) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    try {
      const r = await one(launcher, 'SELECT pgbg.worker_result(2, $1, $2) AS command_tag', [pid, cookie]);
      await launcher.query("SELECT pgbg.finish_supervised($1, 'succeeded', $2, NULL, NULL)", [id, r.command_tag]);
    } catch (err) {
      const e = err as { code: string; message: string };
      await launcher.query("SELECT pgbg.finish_supervised($1, 'failed', NULL, $2, $3)", [id, e.code, e.message]);
    }
  }

  it('CREATE INDEX CONCURRENTLY: launched raw, supervised by the launching session; wait() does not deadlock, CALL pgbg.await works', async () => {
    const launcher = await session('alice');
    const blocker = await session('alice'); // holds a writer lock so the index build cannot finish early
    await blocker.query('BEGIN');
    await blocker.query('INSERT INTO big VALUES (0)');

    const { id } = await one(launcher, "SELECT pgbg.submit('CREATE INDEX CONCURRENTLY big_x ON big (x)', 'CREATE INDEX', false) AS id");
    expect((await one(launcher, 'SELECT pgbg.launch_sql($1) AS s', [id])).s).toBe('CREATE INDEX CONCURRENTLY big_x ON big (x)');
    const h = await one(launcher, `SELECT (s.h).pid, (s.h).cookie FROM (SELECT ${api.launch}(pgbg.launch_sql($1)) h) s`, [id]);
    await launcher.query('SELECT pgbg.mark_launched($1, $2, $3, 2)', [id, h.pid, h.cookie]);
    expect((await job(id)).supervised).toBe(true);

    // The launcher itself must not wait: only it can record the outcome.
    const selfWarnings: string[] = [];
    launcher.on('notice', (n) => selfWarnings.push(n.message ?? ''));
    expect(await wait(launcher, id, '30s')).toBe('running');
    expect(selfWarnings.join()).toMatch(/returns without waiting/);

    // Another session waits inside one transaction: the index build will wait for it.
    const waiter = await session('alice');
    const notices: { severity?: string; message?: string; hint?: string }[] = [];
    waiter.on('notice', (n) => notices.push(n));
    const started = Date.now();
    const waiting = wait(waiter, id, '40s');
    await new Promise((res) => setTimeout(res, 300));
    await blocker.query('COMMIT');
    expect(await waiting).toBe('running');
    expect(Date.now() - started).toBeLessThan(30_000);
    const warning = notices.find((n) => n.severity === 'WARNING');
    expect(warning?.message).toMatch(new RegExp(`job ${id} is still running`));
    expect(warning?.hint).toContain(`CALL pgbg.await(${id})`);

    // A third session awaits with COMMITs between polls while the launcher supervises.
    const awaiter = await session('alice');
    const awaited = awaiter.query('CALL pgbg.await($1, $2::interval)', [id, '50s']);
    await superviseUntilDone(launcher, id, h.pid, h.cookie);
    expect((await awaited).rows[0]).toEqual({ state: 'succeeded' });
    expect(await job(id)).toMatchObject({ state: 'succeeded', command_tag: 'CREATE INDEX' });
    expect((await one(launcher, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_x'::regclass")).indisvalid).toBe(true);
    expect(await one(launcher, "SELECT pgbg.finish_supervised($1, 'failed', NULL, 'XX000', 'late') AS ok", [id])).toEqual({ ok: false });
  });

  it('submit_and_launch keeps the handle of a supervised job; a failure is recorded with its SQLSTATE', async () => {
    const launcher = await session('alice');
    const r = await submit(launcher, 'CREATE INDEX CONCURRENTLY big_x ON big (x)', 'CREATE INDEX', {}, false); // exists already
    if (r.worker_pid === null) {
      // The worker had already stopped when its launch returned (pg_background's pid 0): the
      // launch read its outcome at once, and there is no handle left to supervise.
      expect(r).toMatchObject({ state: 'failed', cookie: null });
    } else {
      expect(r.state).toBe('running');
      await superviseUntilDone(launcher, r.job_id, r.worker_pid, r.cookie!);
    }
    expect(await job(r.job_id)).toMatchObject({ state: 'failed', sqlstate: '42P07' });
  });

  it('the supervisor can declare a job lost when it cannot read the outcome', async () => {
    const launcher = await session('alice');
    const r = await submit(launcher, 'VACUUM big', 'VACUUM', {}, false);
    expect(await one(launcher, "SELECT pgbg.finish_supervised($1, 'lost', NULL, '55000', 'cannot supervise the worker: gone') AS ok", [r.job_id])).toEqual({ ok: true });
    expect(await job(r.job_id)).toMatchObject({ state: 'lost', lost_reason: 'cannot supervise the worker: gone', sqlstate: '55000' });
    expect((await pgErrorOf(launcher.query("SELECT pgbg.finish_supervised($1, 'running', NULL, NULL, NULL)", [r.job_id]))).code).toBe('22023');
  });

  it('CALL pgbg.await refuses to run inside a transaction block', async () => {
    const alice = await session('alice');
    const { id } = await one(alice, "SELECT pgbg.submit('SELECT 1', 'SELECT', true) AS id");
    await alice.query('BEGIN');
    expect((await pgErrorOf(alice.query("CALL pgbg.await($1, '1s')", [id]))).code).toBe('2D000');
    await alice.query('ROLLBACK');
  });
});
