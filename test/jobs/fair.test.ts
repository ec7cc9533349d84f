/**
 * Fair sharing between roles (issue 11, items 5, 6 and 8): round-robin by role within one
 * priority, a per-role queue bound, a per-role in-flight default, job timeouts with a default
 * and a ceiling, options validated at submission, and launch failures that will not go away
 * ending the job instead of blocking the queue.
 *
 * Limits are scoped to this file (rule limits count this file's registry only; per-role limits
 * count roles of this file only), so other test files on the shared cluster cannot change what
 * these tests see; the one test of a server-wide limit runs on a cluster of its own.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { eventually, getCluster, pgErrorOf, startCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { registryDatabase, submit, waitJob } from '../support/jobs.js';
import { validateConfig } from '../../src/config/load.js';
import { schedulingPolicy } from '../../src/jobs/scheduling-policy.js';

const cluster = getCluster();
let db: string;
let observer: pg.Client;
const proxies: TestProxy[] = [];
const clients: pg.Client[] = [];

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

async function proxy(overrides: Parameters<typeof startTestProxy>[1]): Promise<TestProxy> {
  const p = await startTestProxy(cluster, overrides);
  proxies.push(p);
  return p;
}

/** A login role of this file alone. */
async function loginRole(name: string): Promise<{ user: string; password: string }> {
  const password = `${name}-pw`;
  await observer.query(`DO $$ BEGIN CREATE ROLE ${name} LOGIN PASSWORD '${password}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$`);
  await cluster.grantPgBackground(name);
  return { user: name, password };
}

async function connectAs(via: TestProxy, name: string): Promise<pg.Client> {
  const role = await loginRole(name);
  const c = await via.connect({ ...role, database: db });
  clients.push(c);
  return c;
}

async function waitAll(ids: string[], timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await observer.query("SELECT count(*)::int AS n FROM pgbg.job WHERE id = ANY($1::bigint[]) AND state IN ('queued', 'running')", [ids]);
    if (r.rows[0].n === 0) return;
    if (Date.now() > deadline) throw new Error(`jobs still active after ${timeoutMs} ms`);
    await sleep(50);
  }
}

beforeAll(async () => {
  db = await registryDatabase(cluster);
  observer = await cluster.connect({ database: db });
});
afterAll(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
  await observer?.end();
  for (const p of proxies) await p.close();
});

describe('fairness between roles within one priority (item 5)', () => {
  it("one role's queued jobs do not make another role's single job wait behind all of them", async () => {
    const via = await proxy({ jobs: { supervisePoll: 20 }, rules: [{ name: 'rr', match: { pattern: 'rr_probe' }, maxInFlight: 1 }] });
    const alice = await connectAs(via, 'fair_rr_a');
    const bob = await connectAs(via, 'fair_rr_b');
    const many: string[] = [];
    for (let i = 0; i < 12; i++) many.push(await submit(alice, 'SELECT pg_sleep(0.25) /* rr_probe */'));
    const single = await submit(bob, 'SELECT pg_sleep(0.25) /* rr_probe */');
    const waiting = (
      await observer.query("SELECT id::text FROM pgbg.job WHERE id = ANY($1::bigint[]) AND state = 'queued'", [many])
    ).rows.map((r) => r.id);
    expect(waiting.length).toBeGreaterThanOrEqual(6);
    await waitAll([...many, single]);
    const order = (
      await observer.query('SELECT id::text, state FROM pgbg.job WHERE id = ANY($1::bigint[]) ORDER BY started_at, id', [[single, ...waiting]])
    ).rows;
    expect(order.every((r) => r.state === 'succeeded')).toBe(true);
    const place = order.findIndex((r) => r.id === single);
    console.log(`bob's job started after ${place} of the ${waiting.length} jobs alice had queued before it`);
    // Round-robin: at most alice's next job (queued before bob's, while nothing of hers ran)
    // starts before bob's; before the fix, all of them did.
    expect(place).toBeLessThanOrEqual(1);
  });

  it('a role over jobs.maxQueuedPerUser gets 53400 at once, nothing is recorded, and other roles still queue', async () => {
    const via = await proxy({ jobs: { maxQueuedPerUser: 3, supervisePoll: 50 }, rules: [{ name: 'qb', match: { pattern: 'qb_probe' }, maxInFlight: 1 }] });
    const alice = await connectAs(via, 'fair_qb_a');
    const bob = await connectAs(via, 'fair_qb_b');
    const ids: string[] = [];
    ids.push(await submit(alice, 'SELECT pg_sleep(2) /* qb_probe */'));
    await eventually(async () => (await observer.query('SELECT state FROM pgbg.job WHERE id = $1', [ids[0]])).rows[0].state === 'running', 5000, 20);
    for (let i = 0; i < 3; i++) ids.push(await submit(alice, 'SELECT pg_sleep(2) /* qb_probe */'));
    const states = (await observer.query('SELECT state FROM pgbg.job WHERE id = ANY($1::bigint[]) ORDER BY id', [ids])).rows.map((r) => r.state);
    expect(states).toEqual(['running', 'queued', 'queued', 'queued']);
    const count = async (owner: string) => (await observer.query('SELECT count(*)::int AS n FROM pgbg.job WHERE owner = $1', [owner])).rows[0].n;
    const before = await count('fair_qb_a');
    const err = await pgErrorOf(alice.query('SELECT pg_sleep(2) /* qb_probe */'));
    expect(err.code).toBe('53400');
    expect(err.message).toContain('jobs.maxQueuedPerUser');
    expect(err.message).toContain('fair_qb_a');
    expect(await count('fair_qb_a')).toBe(before);
    // The connection is still usable, and bob's job queues although alice's queue is full.
    expect((await alice.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    const bobs = await bob.query('SELECT pg_sleep(2) /* qb_probe */');
    expect(bobs.rows[0].state).toBe('queued');
    for (const id of [...ids, String(bobs.rows[0].job_id)]) await observer.query('SELECT pgbg.cancel($1)', [id]);
  });
});

describe('per-role in-flight default (item 8)', () => {
  it('without a per-user limit, one role holds at most all but one of the server-wide slots', async () => {
    const limits = schedulingPolicy(() => validateConfig({ jobs: { maxInFlight: 3 } })).limits({ database: 'd', user: 'u', rule: null });
    expect(limits).toMatchObject({ server: 3, user: 'share', queue_per_user: 100 });
    expect((await observer.query(`SELECT pgbg._user_limit('{"server": 3, "user": "share"}') AS n`)).rows[0].n).toBe(2);
    expect((await observer.query(`SELECT pgbg._user_limit('{"server": 1, "user": "share"}') AS n`)).rows[0].n).toBe(1);
    // A configured limit (or "*") wins over the share.
    const own = schedulingPolicy(() => validateConfig({ jobs: { maxInFlight: 3, maxInFlightPerUser: { '*': 3 } } })).limits({ database: 'd', user: 'u', rule: null });
    expect(own.user).toBe(3);

    // maxInFlight 2: a role alone may use 1 slot. The server-wide count is every pg_background
    // worker of the server (other files' jobs and launchers too), so this part runs on a
    // cluster of its own.
    const ownCluster = await startCluster({});
    const ownClients: pg.Client[] = [];
    let via: TestProxy | null = null;
    try {
      const ownDb = await registryDatabase(ownCluster);
      const ownObserver = await ownCluster.connect({ database: ownDb });
      ownClients.push(ownObserver);
      await ownObserver.query(`CREATE ROLE fair_share_a LOGIN PASSWORD 'fair_share_a-pw'`);
      await ownCluster.grantPgBackground('fair_share_a');
      via = await startTestProxy(ownCluster, { jobs: { maxInFlight: 2, supervisePoll: 20 } });
      const alice = await via.connect({ user: 'fair_share_a', password: 'fair_share_a-pw', database: ownDb });
      ownClients.push(alice);
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) ids.push(await submit(alice, '/*+ background */ SELECT pg_sleep(0.4)'));
      let most = 0;
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        const r = await ownObserver.query(
          `SELECT count(*) FILTER (WHERE state = 'running')::int AS running, count(*) FILTER (WHERE state IN ('queued', 'running'))::int AS active
             FROM pgbg.job WHERE id = ANY($1::bigint[])`,
          [ids],
        );
        most = Math.max(most, r.rows[0].running);
        if (r.rows[0].active === 0) break;
        await sleep(30);
      }
      const states = (await ownObserver.query('SELECT state FROM pgbg.job WHERE id = ANY($1::bigint[])', [ids])).rows.map((r) => r.state);
      expect(states).toEqual(['succeeded', 'succeeded', 'succeeded']);
      expect(most).toBe(1);
    } finally {
      for (const c of ownClients) await c.end().catch(() => undefined);
      await via?.close();
      await ownCluster.stop();
    }
  });
});

describe('job timeouts: default and ceiling (item 8)', () => {
  it('jobs.defaultTimeout applies when neither hint nor rule sets one', async () => {
    const via = await proxy({ jobs: { defaultTimeout: '1s', supervisePoll: 50 } });
    const alice = await connectAs(via, 'fair_to_a');
    const id = await submit(alice, '/*+ background */ SELECT pg_sleep(20)');
    const started = Date.now();
    const job = await waitJob(observer, id, '15 s');
    expect(job).toMatchObject({ state: 'failed', sqlstate: '57014' });
    expect(Date.now() - started).toBeLessThan(10_000);
    // A hint's own timeout wins over the default.
    const longer = await submit(alice, '/*+ background(timeout=5s) */ SELECT pg_sleep(1.5)');
    expect((await waitJob(observer, longer)).state).toBe('succeeded');
  });

  it('a hint above jobs.maxTimeout is refused with 22023; a rule above it is a configuration error', async () => {
    const via = await proxy({ jobs: { maxTimeout: '1h' } });
    const alice = await connectAs(via, 'fair_to_b');
    const err = await pgErrorOf(alice.query('/*+ background(timeout=2h) */ SELECT 1'));
    expect(err.code).toBe('22023');
    expect(err.message).toContain('jobs.maxTimeout');
    expect((await submit(alice, '/*+ background(timeout=1h) */ SELECT 1')).length).toBeGreaterThan(0);

    expect(() => validateConfig({ jobs: { maxTimeout: '1h' }, rules: [{ name: 'slow', match: { kinds: ['VACUUM'] }, timeout: '2h' }] })).toThrow(/maxTimeout/);
    expect(() => validateConfig({ jobs: { maxTimeout: '1h', defaultTimeout: '2h' } })).toThrow(/maxTimeout/);
    expect(() => validateConfig({ rules: [{ name: 'huge', timeout: '30d' }] })).toThrow();
    expect(validateConfig({}).jobs).toMatchObject({ defaultTimeout: 3_600_000, maxTimeout: 86_400_000, maxQueuedPerUser: 100 });
  });
});

describe('options validated at submission; permanent launch failures end the job (item 6)', () => {
  it('the case of the issue (priority=1000, timeout=30d, not_before in 4 s) is refused with 22023 at once', async () => {
    const via = await proxy({ jobs: { maxTimeout: 2147483647 } });
    const alice = await connectAs(via, 'fair_val_a');
    const count = async () => (await observer.query("SELECT count(*)::int AS n FROM pgbg.job WHERE owner = 'fair_val_a'")).rows[0].n;
    const notBefore = new Date(Date.now() + 4000).toISOString();
    const err = await pgErrorOf(alice.query(`/*+ background(priority=1000, timeout=30d, not_before='${notBefore}') */ SELECT 1`));
    expect(err.code).toBe('22023');
    expect(err.message).toMatch(/out of range/);
    expect(await count()).toBe(0);
    const far = await pgErrorOf(alice.query(`/*+ background(not_before='+275000-01-01T00:00:00Z') */ SELECT 1`));
    expect(far.code).toBe('22023');

    // The registry refuses the same options from a direct caller, so they cannot block the queue either.
    const direct = await cluster.connect({ user: 'fair_val_a', password: 'fair_val_a-pw', database: db });
    clients.push(direct);
    for (const options of [{ timeout_ms: 2592000000 }, { timeout_ms: 'x' }, { max_attempts: 0 }, { not_before: 'soon' }, { window: { from: '25:00', to: '01:00' } }]) {
      const e = await pgErrorOf(direct.query('SELECT * FROM pgbg.submit_and_launch($1, $2, true, NULL, $3::jsonb, 0)', ['SELECT 1', 'SELECT', JSON.stringify(options)]));
      expect(e.code, JSON.stringify(options)).toBe('22023');
    }
    const prio = await pgErrorOf(direct.query("SELECT * FROM pgbg.submit_and_launch('SELECT 1', 'SELECT', true, NULL, NULL, 100000)"));
    expect(prio.code).toBe('22023');
    expect(await count()).toBe(0);
  });

  it('a queued job whose launch fails for good ends failed with that error, and later jobs run', async () => {
    const via = await proxy({ jobs: { supervisePoll: 30 }, rules: [{ name: 'perm', match: { pattern: 'perm_probe' }, maxInFlight: 1 }] });
    const carol = await connectAs(via, 'fair_perm_c');
    const alice = await connectAs(via, 'fair_perm_a');
    const first = await submit(carol, 'SELECT pg_sleep(1) /* perm_probe */');
    const doomed = await submit(carol, 'SELECT 2 /* perm_probe */');
    const later = await submit(alice, 'SELECT 3 /* perm_probe */');
    const state = async (id: string) => (await observer.query('SELECT state FROM pgbg.job WHERE id = $1', [id])).rows[0].state;
    await eventually(async () => (await state(first)) === 'running', 5000, 20);
    expect([await state(doomed), await state(later)]).toEqual(['queued', 'queued']);
    // carol loses the right to launch workers while her job waits: it can never launch now.
    await observer.query('REVOKE pgbackground_role FROM fair_perm_c');
    try {
      expect((await waitJob(observer, first)).state).toBe('succeeded');
      const failed = await waitJob(observer, doomed, '15 s');
      expect(failed).toMatchObject({ state: 'failed', sqlstate: '42501' });
      expect(failed.error).toMatch(/^launch failed: permission denied/);
      expect((await waitJob(observer, later, '15 s')).state).toBe('succeeded');
    } finally {
      await observer.query('GRANT pgbackground_role TO fair_perm_c');
    }
  });
});
