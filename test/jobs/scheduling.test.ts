import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { getCluster, pgErrorOf, eventually } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { registryDatabase, submit, waitJob } from '../support/jobs.js';

const cluster = getCluster();
let db: string;
let observer: pg.Client;
const proxies: TestProxy[] = [];

async function proxy(overrides: Parameters<typeof startTestProxy>[1]): Promise<TestProxy> {
  const p = await startTestProxy(cluster, overrides);
  proxies.push(p);
  return p;
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

/** A login role of this file alone, so that per-user limits count no other file's jobs. */
async function loginRole(name: string): Promise<{ user: string; password: string }> {
  const password = `${name}-pw`;
  await observer.query(`DO $$ BEGIN CREATE ROLE ${name} LOGIN PASSWORD '${password}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$`);
  await cluster.grantPgBackground(name);
  return { user: name, password };
}

async function job(id: string): Promise<Record<string, any>> {
  return (await observer.query('SELECT * FROM pgbg.jobs WHERE id = $1', [id])).rows[0];
}

beforeAll(async () => {
  db = await registryDatabase(cluster);
  observer = await cluster.connect({ database: db });
  await observer.query(`
    CREATE SEQUENCE flaky_calls;
    GRANT USAGE ON SEQUENCE flaky_calls TO PUBLIC;
    -- Fails with a serialization failure while the sequence is at most n: nextval is not
    -- rolled back with the failed attempt, so each attempt sees the next number.
    CREATE FUNCTION flaky(n bigint) RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE c bigint := nextval('flaky_calls');
    BEGIN
      IF c <= n THEN
        RAISE EXCEPTION 'could not serialize access due to read/write dependencies among transactions'
          USING ERRCODE = '40001';
      END IF;
      RETURN c;
    END $$;
    CREATE TABLE retried (v bigint);
    CREATE TABLE locked (id int PRIMARY KEY, v int);
    INSERT INTO locked VALUES (1, 0);
    CREATE TABLE windowed (at timestamptz);
    GRANT ALL ON retried, locked, windowed TO PUBLIC;
  `);
});
afterAll(async () => {
  await observer?.end();
  for (const p of proxies) await p.close();
});

describe('retries of transactional jobs (scheduling acceptance 3)', () => {
  let via: TestProxy;
  beforeAll(async () => {
    via = await proxy({
      metricsListen: '127.0.0.1:0',
      metricsSnapshotTtl: 0,
      jobs: { supervisePoll: 50, retry: { maxAttempts: 3, baseDelay: 100, maxDelay: 1000 }, registryUrl: cluster.url('postgres', db) },
    });
  });

  it('a job that hits a serialization failure twice succeeds on its third attempt; each attempt shows', async () => {
    await observer.query("SELECT setval('flaky_calls', 1, false)");
    const client = await via.connect({ user: 'alice', database: db });
    const id = await submit(client, '/*+ background */ INSERT INTO retried SELECT flaky(2)');
    const done = await waitJob(observer, id);
    expect(done).toMatchObject({ state: 'succeeded', attempts: 3, max_attempts: 3, sqlstate: null, command_tag: 'INSERT 0 1' });
    // Only the third attempt's row committed.
    expect((await observer.query('SELECT v FROM retried')).rows).toEqual([{ v: '3' }]);
    const attempts = await observer.query('SELECT attempt, outcome, sqlstate, started_at, finished_at FROM pgbg.job_attempts WHERE job_id = $1 ORDER BY attempt', [id]);
    expect(attempts.rows.map((a) => [a.attempt, a.outcome, a.sqlstate])).toEqual([
      [1, 'retried', '40001'],
      [2, 'retried', '40001'],
      [3, 'succeeded', null],
    ]);
    // Backoff: each attempt started after the previous one ended, at least half its backoff
    // later, and not much more than that (the session sleeps until the job is due, not a fixed tick).
    for (let i = 1; i < 3; i++) {
      const gap = new Date(attempts.rows[i].started_at).getTime() - new Date(attempts.rows[i - 1].finished_at).getTime();
      expect(gap).toBeGreaterThanOrEqual(50 * 2 ** (i - 1) - 5);
      expect(gap).toBeLessThan(800);
      console.log(`attempt ${i + 1} started ${gap} ms after attempt ${i} failed`);
    }
    const metrics = await (await fetch(`http://127.0.0.1:${via.proxy.metricsPort}/metrics`)).text();
    const retries = /^pgbg_job_retries_total\{[^}]*\} (\d+)/m.exec(metrics);
    expect(Number(retries?.[1])).toBeGreaterThanOrEqual(2);
    await client.end();
  });

  it('gives up after max_attempts and ends failed with the last error; the hint sets the attempts', async () => {
    await observer.query("SELECT setval('flaky_calls', 1, false)");
    const client = await via.connect({ user: 'alice', database: db });
    const id = await submit(client, '/*+ background(max_attempts=2) */ SELECT flaky(10)');
    const done = await waitJob(observer, id);
    expect(done).toMatchObject({ state: 'failed', sqlstate: '40001', attempts: 2, max_attempts: 2 });
    const outcomes = await observer.query('SELECT outcome FROM pgbg.job_attempts WHERE job_id = $1 ORDER BY attempt', [id]);
    expect(outcomes.rows.map((r) => r.outcome)).toEqual(['retried', 'failed']);
    // Not transient: no retry.
    const once = await submit(client, '/*+ background */ SELECT 1/0');
    expect(await waitJob(observer, once)).toMatchObject({ state: 'failed', sqlstate: '22012', attempts: 1 });
    // Non-transactional jobs are never retried.
    const vacuum = await submit(client, '/*+ background */ VACUUM retried');
    expect(await waitJob(observer, vacuum)).toMatchObject({ state: 'succeeded', max_attempts: 1 });
    await client.end();
  });

  it('retries a real lock timeout (55P03) until the lock is released', async () => {
    // A row lock: a table lock would also stop the submission itself, whose validation (parse
    // analysis in the client's session) needs a lock on the table.
    const holder = await cluster.connect({ database: db });
    await holder.query('BEGIN');
    await holder.query('SELECT * FROM locked WHERE id = 1 FOR UPDATE');
    const client = await via.connect({ user: 'alice', database: db });
    await client.query("SET lock_timeout = '150ms'"); // the worker inherits the session's settings
    const id = await submit(client, '/*+ background(max_attempts=20) */ UPDATE locked SET v = v + 1 WHERE id = 1');
    // Released only once two attempts have failed on the lock.
    await eventually(async () => {
      const r = await observer.query("SELECT count(*)::int AS n FROM pgbg.job_attempts WHERE job_id = $1 AND outcome = 'retried' AND sqlstate = '55P03'", [id]);
      return r.rows[0].n >= 2;
    }, 20_000);
    await holder.query('COMMIT');
    const done = await waitJob(observer, id);
    expect(done.state).toBe('succeeded');
    expect(done.attempts).toBeGreaterThanOrEqual(3);
    expect((await observer.query('SELECT v FROM locked WHERE id = 1')).rows[0].v).toBe(1);
    await holder.end();
    await client.end();
  });
});

describe('windows and not_before (scheduling acceptance 4)', () => {
  it('a rule window that opens 10 s from now holds a matched job queued until then', async () => {
    const tz = 'America/New_York';
    const w = await observer.query(
      `SELECT to_char(o AT TIME ZONE $1, 'HH24:MI:SS') AS "from", to_char((o + interval '1 hour') AT TIME ZONE $1, 'HH24:MI:SS') AS "to",
              date_trunc('second', o) AS opens
         FROM (SELECT now() + interval '10 seconds' AS o) s`,
      [tz],
    );
    const { from, to, opens } = w.rows[0];
    const via = await proxy({
      jobs: { supervisePoll: 50 },
      rules: [{ name: 'night-shift', match: { pattern: '^\\s*INSERT\\s+INTO\\s+windowed' }, window: `${from}-${to}`, timeZone: tz }],
    });
    const client = await via.connect({ user: 'alice', database: db });
    const r = await client.query('INSERT INTO windowed VALUES (clock_timestamp())');
    expect(r.rows[0].state).toBe('queued');
    const id = String(r.rows[0].job_id);
    const queued = await job(id);
    expect(queued.rule).toBe('night-shift');
    expect(new Date(queued.not_before).getTime()).toBe(new Date(opens).getTime());
    expect(queued.queue_position).toBeGreaterThanOrEqual(1);
    await sleep(5000);
    expect((await job(id)).state).toBe('queued');
    const done = await waitJob(observer, id, '30 s');
    expect(done.state).toBe('succeeded');
    const ran = await observer.query('SELECT at FROM windowed');
    expect(ran.rows).toHaveLength(1);
    expect(new Date(ran.rows[0].at).getTime()).toBeGreaterThanOrEqual(new Date(opens).getTime());
    expect(new Date(done.started_at).getTime()).toBeGreaterThanOrEqual(new Date(opens).getTime());
    console.log(`window opened ${new Date(opens).getTime() - new Date(queued.submitted_at).getTime()} ms after submission; the job started ${new Date(done.started_at).getTime() - new Date(opens).getTime()} ms after the opening`);
    await client.end();
  });

  it("a rule's timeout ends an overrunning matched job failed with 57014; the hint's timeout wins over it", async () => {
    const via = await proxy({
      jobs: { supervisePoll: 50 },
      rules: [{ name: 'short-leash', match: { pattern: 'rule_timeout_probe' }, timeout: 300 }],
    });
    const client = await via.connect({ user: 'alice', database: db });
    const slow = String((await client.query('SELECT pg_sleep(3) /* rule_timeout_probe */')).rows[0].job_id);
    const hinted = await submit(client, "/*+ background(timeout='5s') */ SELECT pg_sleep(0.6) /* rule_timeout_probe */");
    const failed = await waitJob(observer, slow);
    expect(failed).toMatchObject({ state: 'failed', sqlstate: '57014', rule: 'short-leash' });
    expect(new Date(failed.finished_at).getTime() - new Date(failed.started_at).getTime()).toBeLessThan(2500);
    // A hinted statement is the hint's job: its own timeout applies, not the rule's.
    expect(await waitJob(observer, hinted)).toMatchObject({ state: 'succeeded' });
    await client.end();
  });

  it('not_before= holds one statement until the given time', async () => {
    const via = await proxy({ jobs: { supervisePoll: 50 } });
    const client = await via.connect({ user: 'alice', database: db });
    const at = new Date(Date.now() + 2500);
    const r = await client.query(`/*+ background(not_before='${at.toISOString()}') */ SELECT clock_timestamp() AS t`);
    expect(r.rows[0].state).toBe('queued');
    const id = String(r.rows[0].job_id);
    const done = await waitJob(observer, id);
    expect(done.state).toBe('succeeded');
    const row = (await observer.query('SELECT r FROM pgbg.result($1) r', [id])).rows[0].r;
    expect(new Date(row.t).getTime()).toBeGreaterThanOrEqual(at.getTime());
    await client.end();
  });

  it('computes the next opening across midnight and time zones', async () => {
    const at = (iso: string, window: object) =>
      observer.query('SELECT pgbg.window_opens($1::jsonb, $2::timestamptz) AS t', [JSON.stringify(window), iso]).then((r) => new Date(r.rows[0].t).toISOString());
    const berlin = { from: '22:00', to: '02:00', time_zone: 'Europe/Berlin' };
    expect(await at('2026-01-10T21:30:00Z', berlin)).toBe('2026-01-10T21:30:00.000Z'); // 22:30 local: open
    expect(await at('2026-01-10T00:30:00Z', berlin)).toBe('2026-01-10T00:30:00.000Z'); // 01:30 local: open
    expect(await at('2026-01-10T12:00:00Z', berlin)).toBe('2026-01-10T21:00:00.000Z'); // 13:00 local: opens 22:00
    expect(await at('2026-07-10T12:00:00Z', berlin)).toBe('2026-07-10T20:00:00.000Z'); // summer time
    const morning = { from: '01:00', to: '05:00', time_zone: 'UTC' };
    expect(await at('2026-01-10T06:00:00Z', morning)).toBe('2026-01-11T01:00:00.000Z'); // tomorrow
  });
});

describe('limits, queue bound, queue position', () => {
  it('beyond jobs.maxQueued a submission fails at once with 53400 and leaves no job', async () => {
    const via = await proxy({
      metricsListen: '127.0.0.1:0',
      metricsSnapshotTtl: 0,
      jobs: { maxInFlightPerUser: { sched_carol: 1 }, maxQueued: 2, supervisePoll: 50, registryUrl: cluster.url('postgres', db) },
    });
    const client = await via.connect({ ...(await loginRole('sched_carol')), database: db });
    const running = await submit(client, '/*+ background */ SELECT pg_sleep(2)');
    // Queue length counts every queued job of the registry: wait for other tests' queues to drain.
    await eventually(async () => (await observer.query("SELECT count(*)::int AS n FROM pgbg.job WHERE state = 'queued'")).rows[0].n === 0, 20_000);
    const q1 = await client.query('/*+ background */ SELECT 1');
    const q2 = await client.query('/*+ background(priority=5) */ SELECT 2');
    expect([q1.rows[0].state, q2.rows[0].state]).toEqual(['queued', 'queued']);
    const before = (await observer.query('SELECT count(*)::int AS n FROM pgbg.job')).rows[0].n;
    const full = await pgErrorOf(client.query('/*+ background */ SELECT 3'));
    expect(full.code).toBe('53400');
    expect(full.message).toMatch(/queue is full/);
    expect((await observer.query('SELECT count(*)::int AS n FROM pgbg.job')).rows[0].n).toBe(before);
    // The higher priority job is first in line.
    const positions = await observer.query('SELECT id, queue_position, queued_for FROM pgbg.jobs WHERE id IN ($1, $2) ORDER BY queue_position', [q1.rows[0].job_id, q2.rows[0].job_id]);
    expect(positions.rows.map((r) => [String(r.id), r.queue_position])).toEqual([[String(q2.rows[0].job_id), 1], [String(q1.rows[0].job_id), 2]]);
    expect(positions.rows[0].queued_for).not.toBeNull();
    // ... in the console ...
    const console = new pg.Client(via.clientConfig({ user: 'postgres', database: 'pgbg' }));
    await console.connect();
    const listed = (await console.query('SHOW JOBS')).rows.filter((r) => r.user === 'sched_carol' && r.state === 'queued');
    await console.end();
    expect(listed.map((r) => [r.id, r.queue_position, r.priority])).toEqual([[String(q2.rows[0].job_id), 1, 5], [String(q1.rows[0].job_id), 2, 0]]);
    // ... and in the metrics.
    const metrics = await (await fetch(`http://127.0.0.1:${via.proxy.metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/pgbg_jobs_queued\{database="[^"]+",user="sched_carol",rule=""\} 2/);
    const wait = /pgbg_jobs_queue_wait_seconds\{database="[^"]+",user="sched_carol",rule=""\} ([\d.e-]+)/.exec(metrics);
    expect(Number(wait?.[1])).toBeGreaterThan(0);
    // The session stays usable and its jobs all end.
    expect((await client.query('SELECT 7 AS n')).rows[0].n).toBe(7);
    for (const id of [running, String(q1.rows[0].job_id), String(q2.rows[0].job_id)]) expect((await waitJob(observer, id)).state).toBe('succeeded');
    await client.end();
  });

  it("per-user and per-rule limits hold back only their own jobs; others pass the queue", async () => {
    const via = await proxy({
      jobs: { maxInFlightPerUser: { sched_dave: 1 }, supervisePoll: 50 },
      rules: [{ name: 'one-at-a-time', match: { pattern: 'pg_sleep\\(0\\.8\\)' }, maxInFlight: 1 }],
    });
    const alice = await via.connect({ ...(await loginRole('sched_dave')), database: db });
    const bob = await via.connect({ user: 'bob', database: db });
    let maxAlice = 0;
    let maxRule = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const r = await observer.query(
          `SELECT count(*) FILTER (WHERE owner = 'sched_dave')::int AS alice, count(*) FILTER (WHERE rule = 'one-at-a-time')::int AS rule
             FROM pgbg.job j JOIN pg_stat_activity a ON a.pid = j.worker_pid WHERE j.state = 'running'`,
        );
        maxAlice = Math.max(maxAlice, r.rows[0].alice);
        maxRule = Math.max(maxRule, r.rows[0].rule);
        await sleep(50);
      }
    })();
    const aliceJobs = [];
    for (let i = 0; i < 3; i++) aliceJobs.push(await submit(alice, '/*+ background */ SELECT pg_sleep(0.6)'));
    // Queued behind alice's limit, bob's job still starts at once.
    const bobJob = await bob.query('/*+ background */ SELECT pg_sleep(0.1)');
    expect(bobJob.rows[0].state).toBe('queued');
    // ... and is launched at once: it ends before alice's last job has even started.
    expect((await waitJob(observer, String(bobJob.rows[0].job_id))).state).toBe('succeeded');
    expect((await observer.query('SELECT count(*)::int AS n FROM pgbg.job WHERE id = ANY($1::bigint[]) AND started_at IS NULL', [aliceJobs])).rows[0].n).toBeGreaterThan(0);
    const ruleJobs = [];
    for (let i = 0; i < 3; i++) ruleJobs.push(await submit(bob, 'SELECT pg_sleep(0.8)'));
    for (const id of [...aliceJobs, ...ruleJobs, String(bobJob.rows[0].job_id)]) expect((await waitJob(observer, id)).state).toBe('succeeded');
    sampling = false;
    await sampler;
    expect(maxAlice).toBe(1);
    expect(maxRule).toBe(1);
    await alice.end();
    await bob.end();
  });

  it('"auto" derives the server limit from max_worker_processes, leaving room for parallel query', async () => {
    const r = await observer.query(
      `SELECT pgbg.default_max_in_flight() AS auto,
              current_setting('max_worker_processes')::int AS mwp,
              least(current_setting('max_parallel_workers')::int, 2 * current_setting('max_parallel_workers_per_gather')::int) AS parallel,
              (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'pg_background' AND query LIKE 'CALL pgbg.run_launcher(%') AS launchers`,
    );
    // Live launchers (of any database) hold worker slots too.
    expect(r.rows[0].auto).toBe(Math.max(1, r.rows[0].mwp - r.rows[0].parallel - r.rows[0].launchers));
    expect(r.rows[0].auto).toBeGreaterThanOrEqual(1);
  });
});

describe('disconnect policy', () => {
  it('cancel: queued jobs end cancelled when their client goes away; keep: they still run', async () => {
    const via = await proxy({
      jobs: { supervisePoll: 50 },
      rules: [
        { name: 'drop-on-leave', match: { pattern: '/\\* drop \\*/' }, maxInFlight: 1, onDisconnect: 'cancel' },
        { name: 'keep-on-leave', match: { pattern: '/\\* keep \\*/' }, maxInFlight: 1 },
      ],
    });
    const client = await via.connect({ user: 'alice', database: db });
    const running = (id: string) => eventually(async () => (await observer.query('SELECT state FROM pgbg.job WHERE id = $1', [id])).rows[0].state === 'running', 5000, 20);
    const dropRunning = await submit(client, '/* drop */ SELECT pg_sleep(1)');
    await running(dropRunning);
    const dropQueued = await client.query('/* drop */ SELECT 1');
    const keepRunning = await submit(client, '/* keep */ SELECT pg_sleep(1)');
    await running(keepRunning);
    const keepQueued = await client.query('/* keep */ SELECT 2');
    expect([dropQueued.rows[0].state, keepQueued.rows[0].state]).toEqual(['queued', 'queued']);
    await client.end();
    expect(await waitJob(observer, String(dropQueued.rows[0].job_id))).toMatchObject({ state: 'cancelled' });
    expect((await waitJob(observer, dropRunning)).state).toBe('succeeded');
    expect((await waitJob(observer, keepRunning)).state).toBe('succeeded');
    expect((await waitJob(observer, String(keepQueued.rows[0].job_id))).state).toBe('succeeded');
  });
});

describe('load-aware admission', () => {
  it('holds launches while more client backends than allowed are active', async () => {
    // A cluster of its own: the count of active backends must not depend on other test files.
    const { startCluster } = await import('../harness/cluster.js');
    const quiet = await startCluster({});
    try {
      const qdb = await registryDatabase(quiet);
      const qproxy = await startTestProxy(quiet, {
        jobs: { supervisePoll: 50 },
        rules: [{ name: 'when-quiet', match: { pattern: 'when_quiet' }, holdWhileBusy: { activeBackends: 0 } }],
      });
      try {
        const busy = await quiet.connect({ database: qdb });
        const watcher = await quiet.connect({ database: qdb });
        const running = busy.query('SELECT pg_sleep(2.5)');
        await sleep(200);
        const client = await qproxy.connect({ user: 'alice', database: qdb });
        const r = await client.query('SELECT 1 AS when_quiet');
        expect(r.rows[0].state).toBe('queued');
        const id = String(r.rows[0].job_id);
        await sleep(1000);
        expect((await watcher.query('SELECT state FROM pgbg.job WHERE id = $1', [id])).rows[0].state).toBe('queued');
        await running;
        // A session waiting in pgbg.await is not load: it does not hold the job back.
        const done = await waitJob(watcher, id);
        expect(done.state).toBe('succeeded');
        await Promise.all([busy.end(), watcher.end(), client.end()]);
      } finally {
        await qproxy.close();
      }
    } finally {
      await quiet.stop();
    }
  });
});
