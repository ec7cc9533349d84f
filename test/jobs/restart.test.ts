/**
 * Server restarts (pg_ctl restart -m fast and -m immediate) with jobs running and queued (issue
 * 12, acceptance 2): transactional jobs whose workers died with the server rolled back with
 * them and run again, effect exactly once; an index build ends in the state its index shows.
 *
 *   npx vitest run test/jobs/restart.test.ts
 *   PGBG_TEST_RESTARTS=10 npx vitest run test/jobs/restart.test.ts       # the acceptance run
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { startCluster, type Cluster } from '../harness/cluster.js';
import { registryDatabase, submit } from '../support/jobs.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { prng } from '../support/prng.js';

let cluster: Cluster;
let db: string;
let via: TestProxy;

beforeAll(async () => {
  cluster = await startCluster({});
  db = await registryDatabase(cluster);
  await cluster.query(
    `CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO counter VALUES (1, 0); ALTER TABLE counter OWNER TO alice;
     CREATE TABLE pile (id int PRIMARY KEY, v int); INSERT INTO pile SELECT g, g FROM generate_series(1, 20000) g; ALTER TABLE pile OWNER TO alice;`,
    [],
    { database: db },
  );
  via = await startTestProxy(cluster, { jobs: { maxInFlight: 2 } });
}, 60_000);

afterAll(async () => {
  await via?.close();
  await cluster?.stop();
});

async function observe<T = any>(sql: string, params: unknown[] = []): Promise<T[]> {
  for (let i = 0; ; i++) {
    try {
      return (await cluster.query(sql, params, { database: db })).rows as T[];
    } catch (err) {
      if (i > 50) throw err; // the server is restarting: try again
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

const restarts = Number(process.env.PGBG_TEST_RESTARTS ?? 4);

describe('server restarts with jobs running and queued (issue 12)', () => {
  it(`${restarts} restarts (fast and immediate): transactional jobs succeed exactly once; index builds end as their index shows`, { timeout: 120_000 + restarts * 15_000 }, async () => {
    const seed = Number(process.env.PGBG_TEST_SEED ?? Date.now() % 100000);
    const rand = prng(seed);
    console.log(`restarts: ${restarts}, seed ${seed}`);
    let builds = 0;
    for (let round = 0; round <= restarts; round++) {
      const client = await via.connect({ user: 'alice', database: db });
      client.on('error', () => undefined);
      try {
        for (let i = 0; i < 4; i++) {
          const amount = 1 + Math.floor(rand() * 1000);
          await submit(client, `/*+ background */ UPDATE counter SET n = n + ${amount} WHERE id = 1 AND pg_sleep(${(0.1 + rand() * 0.4).toFixed(2)}) IS NOT NULL`);
        }
        await submit(client, `/*+ background */ CREATE INDEX CONCURRENTLY pile_v_${round}_${builds++} ON pile (v)`);
      } catch {
        // the server went away under a submission: what committed is in the registry
      }
      await new Promise((r) => setTimeout(r, 100 + rand() * 500));
      if (round < restarts) await cluster.restart(round % 2 === 0 ? 'immediate' : 'fast');
      await client.end().catch(() => undefined);
    }
    // The next session of alice (this proxy looks at most every 2 s) starts her launcher.
    await new Promise((r) => setTimeout(r, 2100));
    const wake = await via.connect({ user: 'alice', database: db });
    await wake.query('SELECT 1');
    await wake.end();

    const deadline = Date.now() + 90_000;
    let jobs: any[] = [];
    while (Date.now() < deadline) {
      jobs = await observe("SELECT id, state, kind, statement, attempts, lost_reason, error FROM pgbg.job ORDER BY id");
      if (!jobs.some((j) => j.state === 'queued' || j.state === 'running')) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    const summary: Record<string, number> = {};
    for (const j of jobs) summary[`${j.kind}:${j.state}`] = (summary[`${j.kind}:${j.state}`] ?? 0) + 1;
    const retried = jobs.filter((j) => j.kind === 'UPDATE' && j.attempts > 1).length;
    console.log(`restarts: ${jobs.length} jobs; ${JSON.stringify(summary)}; ${retried} UPDATEs ran again after a crash`);
    const updates = jobs.filter((j) => j.kind === 'UPDATE');
    expect(updates.length).toBeGreaterThan(restarts * 2);
    for (const j of updates) expect(j.state, JSON.stringify(j)).toBe('succeeded');
    const sum = updates.reduce((s, j) => s + Number(/n = n \+ (\d+)/.exec(j.statement)![1]), 0);
    expect(Number((await observe('SELECT n FROM counter WHERE id = 1'))[0].n)).toBe(sum);
    for (const j of jobs.filter((x) => x.kind !== 'UPDATE')) {
      const name = /INDEX CONCURRENTLY (\S+)/.exec(j.statement)![1];
      const valid = (await observe('SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)', [name]))[0]?.indisvalid;
      if (j.state === 'succeeded') expect(valid, JSON.stringify(j)).toBe(true);
      else if (j.state === 'failed') expect(valid, JSON.stringify(j)).toBe(false);
      else {
        expect(j.state, JSON.stringify(j)).toBe('lost');
        expect(valid, JSON.stringify(j)).toBeUndefined();
        expect(j.lost_reason).toMatch(/launcher ended|outcome/);
      }
    }
  });
});
