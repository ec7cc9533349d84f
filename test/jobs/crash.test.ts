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

async function states(ids: string[]): Promise<Record<string, string>> {
  const r = await observer.query('SELECT id::text, state FROM pgbg.jobs WHERE id = ANY($1::bigint[])', [ids]);
  return Object.fromEntries(r.rows.map((x) => [x.id, x.state]));
}

describe('a proxy killed with SIGKILL while jobs run (acceptance 6)', () => {
  it('leaves every job in a true terminal state once a proxy is back', async () => {
    const upstream = `${cluster.host}:${cluster.port}`;
    const first = await startChildProxy(['--upstream', upstream, '--log-level', 'warn']);
    children.push(first);
    const client = new pg.Client({ ...cluster.clientConfig({ user: 'alice', database: db }), port: first.port });
    client.on('error', () => {});
    await client.connect();
    // Transactional: records its own outcome in the worker, whatever happens to the proxy.
    const tx = await submit(client, '/*+ background */ UPDATE crash SET v = v + 1 WHERE pg_sleep(0.02) IS NOT NULL');
    // Supervised: only the launching session can read its outcome, and that session dies.
    const sup = await submit(client, '/*+ background */ CREATE INDEX CONCURRENTLY crash_v_idx ON crash (v) WHERE pg_sleep(0.01) IS NOT NULL');
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
    const job = (await observer.query('SELECT state, lost_reason FROM pgbg.jobs WHERE id = $1', [sup])).rows[0];
    // The index build itself completed or not; the registry says it cannot know, never "running".
    expect(['succeeded', 'lost']).toContain(job.state);
    if (job.state === 'lost') expect(job.lost_reason).toMatch(/session/);
    expect(second.output()).toMatch(/job lost|job_lost/);
    await second.kill('SIGTERM');
  });

  it('queued jobs of a killed proxy end lost, never launched twice; running ones still succeed', async () => {
    const upstream = `${cluster.host}:${cluster.port}`;
    const first = await startChildProxy(['--upstream', upstream, '--log-level', 'warn', '--max-in-flight', '1']);
    children.push(first);
    const client = new pg.Client({ ...cluster.clientConfig({ user: 'alice', database: db }), port: first.port });
    client.on('error', () => {});
    await client.connect();
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
});
