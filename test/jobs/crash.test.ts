/**
 * Proxies killed with SIGKILL while jobs run and wait (issue 12, acceptance 1 and 3): once a
 * job's row has committed, the database's launcher owns it, so no proxy is needed to finish it.
 *
 *   npx vitest run test/jobs/crash.test.ts
 *   PGBG_TEST_KILL_CYCLES=50 npx vitest run test/jobs/crash.test.ts -t cycles    # the acceptance run
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { getCluster } from '../harness/index.js';
import { registryDatabase, submit } from '../support/jobs.js';
import { startChildProxy, type ChildProxy } from '../support/child-proxy.js';
import { prng } from '../support/prng.js';

const cluster = getCluster();
let db: string;
let observer: pg.Client;
const children: ChildProxy[] = [];
const upstream = () => `${cluster.host}:${cluster.port}`;

beforeAll(async () => {
  db = await registryDatabase(cluster);
  observer = await cluster.connect({ database: db });
  await observer.query(`
    CREATE TABLE crash (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
    INSERT INTO crash SELECT g, 0 FROM generate_series(1, 100) g;
    ALTER TABLE crash OWNER TO alice;
    CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
    INSERT INTO counter VALUES (1, 0);
    ALTER TABLE counter OWNER TO alice;
    CREATE TABLE small (id int PRIMARY KEY, v int);
    INSERT INTO small SELECT g, g FROM generate_series(1, 1000) g;
    ALTER TABLE small OWNER TO alice;
  `);
});
afterAll(async () => {
  for (const c of children) await c.kill('SIGKILL');
  await observer?.end();
});

async function proxy(extraArgs: string[] = []): Promise<ChildProxy> {
  const p = await startChildProxy(['--upstream', upstream(), '--log-level', 'warn', ...extraArgs]);
  children.push(p);
  return p;
}

async function clientOf(p: ChildProxy): Promise<pg.Client> {
  const client = new pg.Client({ ...cluster.clientConfig({ user: 'alice', database: db }), port: p.port });
  client.on('error', () => {});
  await client.connect();
  return client;
}

async function states(ids: string[]): Promise<Record<string, string>> {
  const r = await observer.query('SELECT id::text, state FROM pgbg.jobs WHERE id = ANY($1::bigint[])', [ids]);
  return Object.fromEntries(r.rows.map((x) => [x.id, x.state]));
}

/** Waits until none of the jobs is queued or running; returns their states. */
async function settled(ids: string[], timeoutMs = 60_000): Promise<Record<string, string>> {
  const deadline = Date.now() + timeoutMs;
  let now: Record<string, string> = {};
  while (Date.now() < deadline) {
    now = await states(ids);
    if (!Object.values(now).some((s) => s === 'queued' || s === 'running')) return now;
    await new Promise((r) => setTimeout(r, 200));
  }
  return now;
}

describe('a proxy killed with SIGKILL (issue 12)', () => {
  it('running, supervised and queued jobs all finish without any proxy', async () => {
    const first = await proxy(['--max-in-flight', '1']);
    const client = await clientOf(first);
    const tx = await submit(client, '/*+ background */ UPDATE crash SET v = v + 1 WHERE pg_sleep(0.01) IS NOT NULL');
    // Queued behind the limit of 1, the index build among them: the launcher supervises it.
    const sup = await submit(client, '/*+ background */ CREATE INDEX CONCURRENTLY crash_v_idx ON crash (v)');
    const queued = [await submit(client, '/*+ background */ UPDATE crash SET v = v + 100'), await submit(client, '/*+ background */ SELECT 1')];
    expect(await first.kill('SIGKILL')).toBeNull();

    // No proxy at all from here on.
    const now = await settled([tx, sup, ...queued]);
    expect(now).toEqual({ [tx]: 'succeeded', [sup]: 'succeeded', [queued[0]]: 'succeeded', [queued[1]]: 'succeeded' });
    // Each UPDATE exactly once: +1 and +100 on every row.
    expect((await observer.query('SELECT min(v)::int AS lo, max(v)::int AS hi FROM crash')).rows[0]).toEqual({ lo: 101, hi: 101 });
    const index = await observer.query("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = 'crash_v_idx'::regclass");
    expect(index.rows[0].indisvalid).toBe(true);
    const attempts = await observer.query('SELECT job_id::text, count(*)::int AS n FROM pgbg.job_attempts WHERE job_id = ANY($1::bigint[]) GROUP BY 1', [[tx, sup, ...queued]]);
    for (const a of attempts.rows) expect(a.n).toBe(1);
  });

  it('a job waiting between retry attempts goes on being retried by the launcher after its proxy is killed', async () => {
    await observer.query(`
      CREATE SEQUENCE IF NOT EXISTS crash_calls;
      GRANT USAGE ON SEQUENCE crash_calls TO PUBLIC;
      CREATE OR REPLACE FUNCTION always_conflicts() RETURNS int LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM nextval('crash_calls');
        RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01';
      END $$;
    `);
    const first = await proxy();
    const client = await clientOf(first);
    const id = await submit(client, '/*+ background(max_attempts=4) */ UPDATE crash SET v = always_conflicts() WHERE id = 1');
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const r = await observer.query("SELECT count(*)::int AS n FROM pgbg.job_attempts WHERE job_id = $1 AND outcome = 'retried'", [id]);
      if (r.rows[0].n >= 1) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(await first.kill('SIGKILL')).toBeNull();
    const now = await settled([id], 30_000);
    expect(now[id]).toBe('failed');
    const attempts = await observer.query('SELECT attempt, outcome, sqlstate FROM pgbg.job_attempts WHERE job_id = $1 ORDER BY attempt', [id]);
    expect(attempts.rows.map((a) => a.outcome)).toEqual(['retried', 'retried', 'retried', 'failed']);
    expect(attempts.rows.every((a) => a.sqlstate === '40P01')).toBe(true);
    expect(Number((await observer.query('SELECT last_value FROM crash_calls')).rows[0].last_value)).toBe(4);
  });

  it('two proxies, jobs submitted through both, one killed: every job succeeds, no attempt launched twice', async () => {
    const a = await proxy(['--max-in-flight', '2']);
    const b = await proxy(['--max-in-flight', '2']);
    const ca = await clientOf(a);
    const cb = await clientOf(b);
    const before = Number((await observer.query('SELECT n FROM counter WHERE id = 1')).rows[0].n);
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      ids.push(await submit(ca, `/*+ background */ UPDATE counter SET n = n + 1 WHERE id = 1 AND pg_sleep(0.05) IS NOT NULL`));
      ids.push(await submit(cb, `/*+ background */ UPDATE counter SET n = n + 1000 WHERE id = 1 AND pg_sleep(0.05) IS NOT NULL`));
    }
    expect(await a.kill('SIGKILL')).toBeNull();
    // b goes on serving, and submits more.
    for (let i = 0; i < 5; i++) ids.push(await submit(cb, `/*+ background */ UPDATE counter SET n = n + 1000 WHERE id = 1`));
    const now = await settled(ids);
    expect(Object.values(now).every((s) => s === 'succeeded')).toBe(true);
    expect(Number((await observer.query('SELECT n FROM counter WHERE id = 1')).rows[0].n) - before).toBe(10 * 1 + 15 * 1000);
    const attempts = await observer.query('SELECT job_id, count(*)::int AS n FROM pgbg.job_attempts WHERE job_id = ANY($1::bigint[]) GROUP BY 1 HAVING count(*) > 1', [ids]);
    expect(attempts.rows).toEqual([]);
    await cb.end();
    await b.kill('SIGTERM');
  });

  const cycles = Number(process.env.PGBG_TEST_KILL_CYCLES ?? 12);
  it(`${cycles} cycles of SIGKILL at random moments: 0 lost, 0 stuck, 0 duplicated, 0 lying; the counter adds up`, { timeout: 60_000 + cycles * 10_000 }, async () => {
    const seed = Number(process.env.PGBG_TEST_SEED ?? Date.now() % 100000);
    console.log(`kill cycles: ${cycles}, seed ${seed}`);
    const rand = prng(seed);
    const before = Number((await observer.query('SELECT n FROM counter WHERE id = 1')).rows[0].n);
    const firstId = Number((await observer.query("SELECT COALESCE(max(id), 0) AS m FROM pgbg.job")).rows[0].m);
    const acknowledged = new Map<string, { amount: number | null; index: string | null }>();
    let indexes = 0;
    for (let cycle = 0; cycle < cycles; cycle++) {
      const p = await proxy(['--max-in-flight', '2']);
      const clients = await Promise.all([clientOf(p), clientOf(p), clientOf(p)]);
      let stop = false;
      const work = clients.map(async (c, k) => {
        while (!stop) {
          const r = rand();
          let sql: string;
          let amount: number | null = null;
          let index: string | null = null;
          if (r < 0.6) {
            amount = 1 + Math.floor(rand() * 1000);
            sql = `/*+ background */ UPDATE counter SET n = n + ${amount} WHERE id = 1 AND pg_sleep(${(rand() * 0.05).toFixed(3)}) IS NOT NULL`;
          } else if (r < 0.9 || k !== 0) {
            sql = `/*+ background */ SELECT count(*) FROM small WHERE v > ${Math.floor(rand() * 1000)}`;
          } else {
            index = `small_v_idx_${seed}_${indexes++}`;
            sql = `/*+ background */ CREATE INDEX CONCURRENTLY ${index} ON small (v)`;
          }
          try {
            const id = await submit(c, sql);
            acknowledged.set(id, { amount, index });
          } catch {
            return; // the proxy is gone
          }
        }
      });
      await new Promise((r) => setTimeout(r, 50 + rand() * 400));
      await p.kill('SIGKILL');
      stop = true;
      await Promise.all(work);
      for (const c of clients) await c.end().catch(() => undefined);
    }
    // Every job recorded during the cycles, acknowledged or not (a row may commit as the proxy dies).
    const ids = (await observer.query('SELECT id::text FROM pgbg.job WHERE id > $1', [firstId])).rows.map((r) => r.id as string);
    for (const id of acknowledged.keys()) expect(ids).toContain(id);
    const now = await settled(ids, 120_000);
    const byState: Record<string, number> = {};
    for (const s of Object.values(now)) byState[s] = (byState[s] ?? 0) + 1;
    console.log(`kill cycles: ${acknowledged.size} acknowledged of ${ids.length} recorded jobs; states ${JSON.stringify(byState)}`);
    // 0 lost, 0 stuck: everything succeeded.
    expect(byState).toEqual({ succeeded: ids.length });
    // 0 duplicated: one attempt each, and the counter is exactly the sum of the succeeded UPDATEs.
    const twice = await observer.query('SELECT job_id FROM pgbg.job_attempts WHERE job_id > $1 GROUP BY 1 HAVING count(*) > 1', [firstId]);
    expect(twice.rows).toEqual([]);
    const sum = await observer.query(
      "SELECT COALESCE(sum(substring(statement FROM 'n = n \\+ (\\d+)')::bigint), 0) AS s FROM pgbg.job WHERE id > $1 AND state = 'succeeded' AND kind = 'UPDATE'",
      [firstId],
    );
    const counter = Number((await observer.query('SELECT n FROM counter WHERE id = 1')).rows[0].n);
    expect(counter - before).toBe(Number(sum.rows[0].s));
    // 0 lying: every index build said succeeded, and its index exists and is valid.
    const builds = await observer.query("SELECT statement FROM pgbg.job WHERE id > $1 AND kind = 'CREATE INDEX'", [firstId]);
    for (const b of builds.rows) {
      const name = /INDEX CONCURRENTLY (\S+)/.exec(b.statement)![1];
      expect((await observer.query('SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)', [name])).rows[0]?.indisvalid).toBe(true);
    }
  });
});
