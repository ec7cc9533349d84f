import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { getCluster } from '../harness/index.js';
import { registryDatabase, submit } from '../support/jobs.js';
import { startChildProxy, type ChildProxy } from '../support/child-proxy.js';

const cluster = getCluster();
let db: string;
let observer: pg.Client;
const children: ChildProxy[] = [];

beforeAll(async () => {
  db = await registryDatabase(cluster);
  observer = await cluster.connect({ database: db });
  await observer.query(`
    CREATE TABLE crash (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
    INSERT INTO crash SELECT g, 0 FROM generate_series(1, 100) g;
    ALTER TABLE crash OWNER TO alice;
  `);
});
afterAll(async () => {
  for (const c of children) await c.kill('SIGKILL');
  await observer?.end();
});

/** A proxy as its own process (so it can be SIGKILLed) and a client of alice's through it. */
async function proxyWithClient(extraArgs: string[] = []): Promise<{ proxy: ChildProxy; client: pg.Client; upstream: string }> {
  const upstream = `${cluster.host}:${cluster.port}`;
  const proxy = await startChildProxy(['--upstream', upstream, '--log-level', 'warn', ...extraArgs]);
  children.push(proxy);
  const client = new pg.Client({ ...cluster.clientConfig({ user: 'alice', database: db }), port: proxy.port });
  client.on('error', () => {});
  await client.connect();
  return { proxy, client, upstream };
}

async function states(ids: string[]): Promise<Record<string, string>> {
  const r = await observer.query('SELECT id::text, state FROM pgbg.jobs WHERE id = ANY($1::bigint[])', [ids]);
  return Object.fromEntries(r.rows.map((x) => [x.id, x.state]));
}

describe('a proxy killed with SIGKILL while jobs run (acceptance 6)', () => {
  it('leaves every job in a true terminal state once a proxy is back', async () => {
    const { proxy: first, client, upstream } = await proxyWithClient();
    // Transactional: records its own outcome in the worker, whatever happens to the proxy.
    const tx = await submit(client, '/*+ background */ UPDATE crash SET v = v + 1 WHERE pg_sleep(0.02) IS NOT NULL');
    // Supervised: only the launching session can read its outcome, and that session dies. The
    // build waits for the UPDATE above (CONCURRENTLY waits out writers), so it is still running then.
    const sup = await submit(client, '/*+ background */ CREATE INDEX CONCURRENTLY crash_v_idx ON crash (v)');
    expect(Object.values(await states([tx, sup]))).toEqual(['running', 'running']);

    expect(await first.kill('SIGKILL')).toBeNull();

    const second = await startChildProxy(['--upstream', upstream, '--log-level', 'info'], {
      PGBG_REGISTRY_URL: cluster.url('postgres', db),
    });
    children.push(second);
    const deadline = Date.now() + 30_000;
    let now: Record<string, string> = {};
    while (Date.now() < deadline) {
      now = await states([tx, sup]);
      if (!Object.values(now).some((s) => s === 'queued' || s === 'running')) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(now[tx]).toBe('succeeded');
    expect((await observer.query('SELECT sum(v)::int AS s FROM crash')).rows[0].s).toBe(100);
    const job = (await observer.query('SELECT state, lost_reason, sqlstate, error FROM pgbg.jobs WHERE id = $1', [sup])).rows[0];
    console.log('supervised job after the crash:', JSON.stringify(job));
    // The index build itself completed or not; the registry says it cannot know, never "running".
    expect(['succeeded', 'lost']).toContain(job.state);
    if (job.state === 'lost') expect(job.lost_reason).toMatch(/session/);
    expect(second.output()).toMatch(/job lost|job_lost/);
    await second.kill('SIGTERM');
  });

  it('queued jobs of a killed proxy end lost, never launched twice; running ones still succeed', async () => {
    const { proxy: first, client, upstream } = await proxyWithClient(['--max-in-flight', '1']);
    const running = await submit(client, '/*+ background */ UPDATE crash SET v = v + 1 WHERE pg_sleep(0.01) IS NOT NULL');
    const queued = [await submit(client, '/*+ background */ UPDATE crash SET v = v + 100'), await submit(client, '/*+ background */ SELECT 1')];
    expect(Object.values(await states(queued))).toEqual(['queued', 'queued']);
    expect(await first.kill('SIGKILL')).toBeNull();

    const second = await startChildProxy(['--upstream', upstream, '--log-level', 'info'], { PGBG_REGISTRY_URL: cluster.url('postgres', db) });
    children.push(second);
    const all = [running, ...queued];
    const deadline = Date.now() + 30_000;
    let now: Record<string, string> = {};
    while (Date.now() < deadline) {
      now = await states(all);
      if (!Object.values(now).some((st) => st === 'queued' || st === 'running')) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(now[running]).toBe('succeeded');
    const lost = await observer.query('SELECT state, lost_reason, attempts, worker_pid FROM pgbg.jobs WHERE id = ANY($1::bigint[])', [queued]);
    for (const job of lost.rows) {
      expect(job).toMatchObject({ state: 'lost', attempts: 0, worker_pid: null });
      expect(job.lost_reason).toMatch(/before the job was launched/);
    }
    // The UPDATE of the lost job never ran: only the running job's +1 per row.
    expect((await observer.query('SELECT max(v)::int AS m FROM crash')).rows[0].m).toBeLessThan(100);
    await second.kill('SIGTERM');
  });

  it('a job waiting between retry attempts when the proxy is killed ends lost, with its attempts kept', async () => {
    await observer.query(`
      CREATE SEQUENCE IF NOT EXISTS crash_calls;
      GRANT USAGE ON SEQUENCE crash_calls TO PUBLIC;
      CREATE OR REPLACE FUNCTION always_conflicts() RETURNS int LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM nextval('crash_calls');
        RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01';
      END $$;
    `);
    const { proxy: first, client, upstream } = await proxyWithClient();
    const id = await submit(client, '/*+ background(max_attempts=50) */ UPDATE crash SET v = always_conflicts() WHERE id = 1');
    // Wait for the first retry to be scheduled, then kill the proxy that would launch the next attempt.
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const r = await observer.query("SELECT count(*)::int AS n FROM pgbg.job_attempts WHERE job_id = $1 AND outcome = 'retried'", [id]);
      if (r.rows[0].n >= 1) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(await first.kill('SIGKILL')).toBeNull();

    const second = await startChildProxy(['--upstream', upstream, '--log-level', 'info'], { PGBG_REGISTRY_URL: cluster.url('postgres', db) });
    children.push(second);
    let job: Record<string, any> = {};
    const until = Date.now() + 30_000;
    while (Date.now() < until) {
      job = (await observer.query('SELECT state, lost_reason, attempts FROM pgbg.jobs WHERE id = $1', [id])).rows[0];
      if (job.state !== 'queued' && job.state !== 'running') break;
      await new Promise((res) => setTimeout(res, 250));
    }
    expect(job.state).toBe('lost');
    expect(job.lost_reason).toMatch(new RegExp(`before attempt ${job.attempts + 1} could be launched`));
    const attempts = await observer.query('SELECT attempt, outcome FROM pgbg.job_attempts WHERE job_id = $1 ORDER BY attempt', [id]);
    expect(attempts.rows.map((a) => a.outcome)).toEqual(Array(job.attempts).fill('retried'));
    // Once lost, nothing runs it again: no attempt is launched by anybody else.
    const callsAtEnd = Number((await observer.query('SELECT last_value FROM crash_calls')).rows[0].last_value);
    expect(callsAtEnd).toBeGreaterThanOrEqual(job.attempts);
    await new Promise((res) => setTimeout(res, 1500));
    expect(Number((await observer.query('SELECT last_value FROM crash_calls')).rows[0].last_value)).toBe(callsAtEnd);
    await second.kill('SIGTERM');
  });
});
