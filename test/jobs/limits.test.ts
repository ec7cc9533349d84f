import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { getCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { registryDatabase, submit, waitJob } from '../support/jobs.js';


const cluster = getCluster();
let via: TestProxy;
let db: string;
let observer: pg.Client;

beforeAll(async () => {
  db = await registryDatabase(cluster);
  via = await startTestProxy(cluster, { jobs: { maxInFlight: 4, supervisePoll: 50 } });
  observer = await cluster.connect({ database: db });
});
afterAll(async () => {
  await observer?.end();
  await via?.close();
});

describe('in-flight limit and the durable queue (scheduling acceptance 1)', () => {
  it('never runs more than 4 workers for 50 jobs from 10 clients; all succeed; higher priority starts first', async () => {
    const clients = await Promise.all(Array.from({ length: 10 }, () => via.connect({ user: 'alice', database: db })));
    let maxSeen = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const r = await observer.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity a
            WHERE a.pid IN (SELECT worker_pid FROM pgbg.job WHERE state = 'running' AND worker_pid IS NOT NULL)`,
        );
        maxSeen = Math.max(maxSeen, r.rows[0].n);
        await new Promise((res) => setTimeout(res, 50));
      }
    })();

    const low: string[] = [];
    const answers: string[] = [];
    await Promise.all(
      clients.slice(0, 9).map(async (c) => {
        for (let i = 0; i < 5; i++) {
          const r = await c.query('/*+ background */ SELECT pg_sleep(0.3)');
          low.push(String(r.rows[0].job_id));
          answers.push(r.rows[0].state);
        }
      }),
    );
    const high: string[] = [];
    for (let i = 0; i < 5; i++) high.push(await submit(clients[9], '/*+ background(priority=10) */ SELECT pg_sleep(0.3)'));
    expect(answers.filter((s) => s === 'queued').length).toBeGreaterThan(30);

    const all = [...low, ...high];
    const deadline = Date.now() + 60_000;
    for (;;) {
      const r = await observer.query("SELECT count(*)::int AS n FROM pgbg.job WHERE id = ANY($1::bigint[]) AND state IN ('queued', 'running')", [all]);
      if (r.rows[0].n === 0 || Date.now() > deadline) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    sampling = false;
    await sampler;
    const states = await observer.query('SELECT state, count(*)::int AS n FROM pgbg.job WHERE id = ANY($1::bigint[]) GROUP BY state', [all]);
    expect(states.rows).toEqual([{ state: 'succeeded', n: 50 }]);
    console.log(`max workers seen at once: ${maxSeen}`);
    expect(maxSeen).toBeLessThanOrEqual(4);
    expect(maxSeen).toBeGreaterThanOrEqual(2);
    const started = await observer.query('SELECT max(started_at) FILTER (WHERE id = ANY($1::bigint[])) AS high_last, max(started_at) FILTER (WHERE id = ANY($2::bigint[])) AS low_last FROM pgbg.job', [high, low]);
    expect(new Date(started.rows[0].high_last).getTime()).toBeLessThan(new Date(started.rows[0].low_last).getTime());
    const attempts = await observer.query('SELECT max(attempts)::int AS m FROM pgbg.job WHERE id = ANY($1::bigint[])', [all]);
    expect(attempts.rows[0].m).toBe(1); // none launched twice
    await Promise.all(clients.map((c) => c.end()));
  });

  it('a queued job can be cancelled before it runs', async () => {
    const blocker = await via.connect({ user: 'alice', database: db });
    const fill: string[] = [];
    for (let i = 0; i < 4; i++) fill.push(await submit(blocker, '/*+ background */ SELECT pg_sleep(1.5)'));
    const r = await blocker.query('/*+ background */ SELECT 1');
    expect(r.rows[0].state).toBe('queued');
    const queued = String(r.rows[0].job_id);
    expect((await blocker.query('SELECT pgbg.cancel($1)', [queued])).rows[0].cancel).toBe(true);
    expect((await waitJob(observer, queued)).state).toBe('cancelled');
    for (const id of fill) expect((await waitJob(observer, id)).state).toBe('succeeded');
    await blocker.end();
  });
});

describe('limits are reloadable', () => {
  it("raising a rule's limit by a reload launches its queued jobs without a restart", async () => {
    // A rule limit is counted in this file's own registry, so workers of other test files
    // running on the shared cluster cannot change what this test sees.
    const settings = (maxInFlight: number) => ({
      upstream: { host: cluster.host, port: cluster.port },
      // The limits reach the database's launcher through the registry (pgbg.admission_config).
      jobs: { registryUrl: cluster.url('postgres', db) },
      rules: [{ name: 'reload-probe', match: { pattern: 'reload_probe' }, maxInFlight }],
    });
    const own = await startTestProxy(cluster, settings(1));
    const client = await own.connect({ user: 'alice', database: db });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(String((await client.query('SELECT pg_sleep(2) /* reload_probe */')).rows[0].job_id));
    const states = async () => (await observer.query('SELECT state FROM pgbg.job WHERE id = ANY($1::bigint[]) ORDER BY id', [ids])).rows.map((r) => r.state);
    await new Promise((r) => setTimeout(r, 300));
    expect(await states()).toEqual(['running', 'queued', 'queued']);

    await own.proxy.reload(settings(3));
    const reloadedAt = Date.now();
    let now: string[] = [];
    while (Date.now() - reloadedAt < 1500) {
      now = await states();
      if (now.every((st) => st === 'running')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    // All three run at once while the first still sleeps: the queued two did not wait for it.
    expect(now).toEqual(['running', 'running', 'running']);
    for (const id of ids) expect((await waitJob(observer, id)).state).toBe('succeeded');
    await client.end();
    await own.close();
  });
});

describe('worker slots taken by other workers (scheduling acceptance 2)', () => {
  it('queues submissions instead of failing while max_worker_processes is used up, and runs them when slots free', { timeout: 120_000 }, async () => {
    // A cluster of its own: filling its worker slots must not disturb other test files.
    const { startCluster } = await import('../harness/cluster.js');
    const small = await startCluster({ settings: { max_worker_processes: '6', max_connections: '30' } });
    const smallProxy = await startTestProxy(small, { jobs: { maxInFlight: 50, supervisePoll: 100 } });
    try {
      const sdb = await registryDatabase(small);
      const filler = await small.connect({ database: sdb });
      await filler.query("SET pg_background.max_workers = 100");
      // Connected first: with the stand-in, whose workers are connections, filling the slots
      // also leaves no connection to spare.
      const client = await smallProxy.connect({ user: 'alice', database: sdb });
      const watcher = await small.connect({ database: sdb });
      // Other work takes every slot: raw pg_background workers (or, with the stand-in, the
      // connections it uses as workers), launched until the server refuses.
      let others = 0;
      for (; others < 40; others++) {
        const r = await filler.query("SELECT pg_background_launch_v2('SELECT pg_sleep(3)') AS h").catch((e) => e);
        if (r instanceof Error) {
          expect(['53000', '53300', '53400']).toContain((r as any).code);
          break;
        }
      }
      expect(others).toBeGreaterThan(0);
      const r = await client.query('/*+ background */ SELECT 42');
      expect(r.rows[0].state).toBe('queued');
      // Not even the launcher could start: the job says it waits for one.
      expect((await watcher.query('SELECT waiting_for_launcher FROM pgbg.jobs WHERE id = $1', [r.rows[0].job_id])).rows[0].waiting_for_launcher).toBe(true);
      // The other work goes away (real workers finish their sleep; the stand-in's worker
      // connections close with the session that holds their handles).
      await filler.end();
      // The submitting session tries again every second, so once slots are free the launcher
      // starts and runs the job.
      const job = await waitJob(watcher, String(r.rows[0].job_id), '60 s');
      expect(job.state).toBe('succeeded');

      // jobs.maxInFlight: unlimited: no queueing for capacity; a launch without a free slot
      // fails the job with the server's error. alice's launcher (idle for 10 s) still holds its
      // slot. (Not with the stand-in: its launcher and workers are connections, and its launcher
      // goes with the session that started it once that session's connection slot is taken.)
      if (small.pgBackground === 'standin') {
        await watcher.end();
        await client.end();
        return;
      }
      const unlimited = await startTestProxy(small, { jobs: { maxInFlight: 'unlimited' } });
      const filler2 = await small.connect({ database: sdb });
      await filler2.query('SET pg_background.max_workers = 100');
      const handles: number[] = [];
      for (let i = 0; i < 40; i++) {
        const h = await filler2.query("SELECT (pg_background_launch_v2('SELECT pg_sleep(5)')).pid AS pid").catch((e) => e);
        if (h instanceof Error) break;
        handles.push(h.rows[0].pid);
      }
      expect(handles.length).toBeGreaterThan(0);
      expect((await watcher.query("SELECT alive FROM pgbg.launchers WHERE login = 'alice'")).rows[0].alive).toBe(true);
      const u = await unlimited.connect({ user: 'alice', database: sdb });
      const failed = await u.query('/*+ background */ SELECT 43');
      const ended = await waitJob(watcher, String(failed.rows[0].job_id), '30 s');
      expect(ended.state).toBe('failed');
      expect(['53000', '53300', '53400']).toContain(ended.sqlstate);
      expect(ended.error).toMatch(/launch failed/);
      await u.end();
      await filler2.end();
      await unlimited.close();
      await watcher.end();
      await client.end();
    } finally {
      await smallProxy.close();
      await small.stop();
    }
  });
});
