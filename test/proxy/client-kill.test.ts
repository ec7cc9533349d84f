/**
 * A client killed while its hinted submission is in flight (issue 11, item 12): a job whose row
 * committed is launched or ends truthfully; it is never 'lost' because its client left while
 * the proxy lives.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { getCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { registryDatabase, submit } from '../support/jobs.js';

const cluster = getCluster();
let db: string;
let observer: pg.Client;
let via: TestProxy;
const ROLE = 'kill_probe';

beforeAll(async () => {
  db = await registryDatabase(cluster);
  observer = await cluster.connect({ database: db });
  await observer.query(`DO $$ BEGIN CREATE ROLE ${ROLE} LOGIN PASSWORD '${ROLE}-pw'; EXCEPTION WHEN duplicate_object THEN NULL; END $$`);
  await cluster.grantPgBackground(ROLE);
  await observer.query(`CREATE TABLE kill_t (v int); GRANT ALL ON kill_t TO PUBLIC; ALTER TABLE kill_t OWNER TO ${ROLE}`);
  // Rule "kill_gate" lets one job run at a time, so most of its jobs queue and must be launched
  // later by the session of a client that is gone by then.
  via = await startTestProxy(cluster, {
    jobs: { supervisePoll: 20 },
    rules: [{ name: 'kill_gate', match: { pattern: 'kill_gate' }, maxInFlight: 1 }],
  });
});
afterAll(async () => {
  await observer?.end();
  await via?.close();
});

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

describe('a client killed mid-submission (item 12)', () => {
  it('30 clients destroyed the moment their job row commits: no job ends lost', async () => {
    const holder = await via.connect({ user: ROLE, password: `${ROLE}-pw`, database: db });
    await submit(holder, 'SELECT pg_sleep(1.5) /* kill_gate */');
    const statements = [
      'INSERT INTO kill_t VALUES (1) /* kill_gate */', // queued behind the gate
      '/*+ background */ INSERT INTO kill_t VALUES (2)', // launched at once
      '/*+ background */ VACUUM kill_t', // supervised by the submitting session
    ];
    // The kill lands the moment the job row commits: a test-only trigger announces each new row
    // of this role, and PostgreSQL delivers a notification at commit. The proxy (in this process)
    // then sees its client go away about when the server's answer to the submission arrives,
    // before or after it: the window in which a committed job used to be left with no session.
    await observer.query(`
      CREATE FUNCTION public.kill_probe_announce() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.owner = '${ROLE}' THEN PERFORM pg_notify('kill_probe', NEW.application_name); END IF;
        RETURN NULL;
      END $$;
      CREATE TRIGGER kill_probe_announce AFTER INSERT ON pgbg.job FOR EACH ROW EXECUTE FUNCTION public.kill_probe_announce();
    `);
    const listener = await cluster.connect({ database: db });
    await listener.query('LISTEN kill_probe');
    const killers = new Map<string, () => void>();
    listener.on('notification', (n) => killers.get(n.payload ?? '')?.());
    try {
      for (let i = 0; i < 30; i++) {
        const name = `kill_${i}`;
        const c = new pg.Client({ ...via.clientConfig({ user: ROLE, password: `${ROLE}-pw`, database: db }), application_name: name });
        c.on('error', () => undefined);
        await c.connect();
        const kill = () => (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
        const killed = new Promise<void>((resolve) => {
          killers.set(name, () => {
            kill();
            resolve();
          });
          // A submission refused before its row committed never announces itself.
          setTimeout(() => {
            kill();
            resolve();
          }, 3000);
        });
        const sent = c.query(statements[i % 3]).catch(() => undefined);
        await killed;
        await sent;
        killers.delete(name);
      }
    } finally {
      await listener.end();
      await observer.query('DROP TRIGGER kill_probe_announce ON pgbg.job');
    }
    await holder.end();

    const deadline = Date.now() + 60_000;
    let active = -1;
    while (Date.now() < deadline) {
      await observer.query('SELECT pgbg.reconcile()');
      active = (await observer.query("SELECT count(*)::int AS n FROM pgbg.job WHERE owner = $1 AND state IN ('queued', 'running')", [ROLE])).rows[0].n;
      if (active === 0) break;
      await sleep(100);
    }
    expect(active).toBe(0);
    const states = (await observer.query('SELECT state, count(*)::int AS n FROM pgbg.job WHERE owner = $1 GROUP BY state ORDER BY state', [ROLE])).rows;
    console.log(`after 30 kills: ${JSON.stringify(states)}`);
    const lost = await observer.query("SELECT id, statement, lost_reason FROM pgbg.job WHERE owner = $1 AND state = 'lost'", [ROLE]);
    expect(lost.rows).toEqual([]);
    // Every job that was recorded ran: its effect is there.
    const ok = (await observer.query("SELECT count(*)::int AS n FROM pgbg.job WHERE owner = $1 AND state = 'succeeded' AND kind = 'INSERT'", [ROLE])).rows[0].n;
    const rows = (await observer.query('SELECT count(*)::int AS n FROM kill_t')).rows[0].n;
    expect(rows).toBe(ok);
    // The proxy still serves.
    const after = await via.connect({ user: ROLE, password: `${ROLE}-pw`, database: db });
    expect((await after.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    await after.end();
  });
});
