/**
 * A worker that has already stopped when its launch returns (registry version 8).
 *
 * pg_background waits for a new worker to start; when the postmaster reports it already
 * stopped (BGWH_STOPPED), the launch returns pid 0 and keeps the worker's result under pid 0 in
 * the launching session. Under load a fast statement does exactly that. Here the race is made
 * certain on a private cluster: the postmaster is stopped (SIGSTOP) so that the launching
 * backend waits in BgWorkerStartup, that backend is stopped in turn, the postmaster resumes and
 * the worker runs (or is terminated) and exits, then the launching backend resumes and finds it
 * stopped.
 *
 * The dblink stand-in has no background worker to race: there only the SQL contract for pid 0
 * is checked.
 *
 *   npx vitest run test/jobs/stopped-at-launch.test.ts
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, getCluster, pgErrorOf, startCluster, type Cluster } from '../harness/index.js';
import { registryDatabase, waitJob } from '../support/jobs.js';

const shared = getCluster();
const real = shared.pgBackground === 'real';
const open: pg.Client[] = [];

async function session(c: Cluster, database: string, user = 'postgres'): Promise<pg.Client> {
  const client = new pg.Client(c.clientConfig({ user, database }));
  client.on('error', () => undefined);
  await client.connect();
  open.push(client);
  return client;
}

afterAll(async () => {
  for (const c of open) await c.end().catch(() => undefined);
});

describe('pid 0 from a launch: the SQL contract', () => {
  let db: string;
  beforeAll(async () => {
    db = await registryDatabase(shared);
  });

  it('mark_launched takes pid 0 for a non-transactional job (no worker pid recorded) and refuses it for a transactional one', async () => {
    const alice = await session(shared, db, 'alice');
    const { id: vacuum } = (await alice.query("SELECT pgbg.submit('VACUUM pg_class', 'VACUUM', false, true) AS id")).rows[0];
    await alice.query('SELECT pgbg.mark_launched($1, 0, 42, 2)', [vacuum]);
    expect((await alice.query('SELECT state, worker_pid, attempts FROM pgbg.jobs WHERE id = $1', [vacuum])).rows[0])
      .toEqual({ state: 'running', worker_pid: null, attempts: 1 });
    // Its session launched it: it records the outcome (as pgbg.launch_job does when it reads it).
    await alice.query("SELECT pgbg.finish_supervised($1, 'succeeded', 'VACUUM', NULL, NULL)", [vacuum]);

    const { id: update } = (await alice.query("SELECT pgbg.submit('SELECT 1', 'SELECT', true) AS id")).rows[0];
    const err = await pgErrorOf(alice.query('SELECT pgbg.mark_launched($1, 0, 42, 2)', [update]));
    expect(err.code).toBe('22023');
    expect(err.detail).toMatch(/pid 0 stands for a worker found stopped/);
    expect((await pgErrorOf(alice.query('SELECT pgbg.mark_launched($1, -1, 42, 2)', [vacuum]))).code).toBe('22023');
    expect((await alice.query('SELECT state FROM pgbg.jobs WHERE id = $1', [update])).rows[0].state).toBe('queued');
  });
});

describe.skipIf(!real)('a worker that stopped before its launch returned (real pg_background: the race made certain)', () => {
  let cluster: Cluster;
  let db: string;
  let postmaster: number;
  let su: pg.Client;
  const stopped = new Set<number>();

  function stop(pid: number): void {
    process.kill(pid, 'SIGSTOP');
    stopped.add(pid);
  }
  function resume(pid: number): void {
    process.kill(pid, 'SIGCONT');
    stopped.delete(pid);
  }

  /** Holds `backend` inside its launch, lets the worker start and `whileHeld` run, then resumes it. */
  async function launchAfterWorkerStopped(backend: number, start: () => void, whileHeld: () => Promise<void>): Promise<void> {
    stop(postmaster);
    try {
      start();
      await eventually(async () => {
        const r = await su.query('SELECT wait_event FROM pg_stat_activity WHERE pid = $1', [backend]);
        return r.rows[0]?.wait_event === 'BgWorkerStartup';
      }, 20_000, 5);
      stop(backend);
    } finally {
      resume(postmaster);
    }
    try {
      await whileHeld();
    } finally {
      resume(backend);
    }
  }

  async function noWorkerOf(query: string): Promise<boolean> {
    const r = await su.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'pg_background' AND query = $1", [query]);
    return r.rows[0].n === 0;
  }

  beforeAll(async () => {
    cluster = await startCluster({});
    db = await registryDatabase(cluster);
    postmaster = Number(readFileSync(path.join(cluster.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    expect(postmaster).toBeGreaterThan(1);
    su = await session(cluster, db);
    await su.query('CREATE TABLE tiny (x int); ALTER TABLE tiny OWNER TO alice');
    await su.query('CREATE TABLE counter (n bigint NOT NULL); INSERT INTO counter VALUES (0); GRANT SELECT, UPDATE ON counter TO alice');
  }, 60_000);

  afterAll(async () => {
    for (const pid of stopped) process.kill(pid, 'SIGCONT');
    await cluster?.stop();
  });

  async function vacuumCount(): Promise<number> {
    const r = await su.query("SELECT vacuum_count::int AS n FROM pg_stat_user_tables WHERE relname = 'tiny'");
    return r.rows[0].n;
  }

  it('submit_and_launch reads the outcome at once and returns the job finished, with no handle', async () => {
    const alice = await session(cluster, db, 'alice');
    const pid = (await alice.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
    const before = await vacuumCount();
    let answer: Promise<pg.QueryResult> | undefined;
    await launchAfterWorkerStopped(pid, () => {
      answer = alice.query("SELECT * FROM pgbg.submit_and_launch('VACUUM tiny', 'VACUUM', false)");
    }, async () => {
      // The worker ran its VACUUM and exited while the launching backend was held.
      await eventually(async () => (await vacuumCount()) > before && (await noWorkerOf('VACUUM tiny')), 20_000, 20);
      await new Promise((r) => setTimeout(r, 200)); // the postmaster reaps it and frees its slot
    });
    const row = (await answer!).rows[0];
    expect(row).toMatchObject({ state: 'succeeded', worker_pid: null, cookie: null });
    const j = (await su.query('SELECT state, command_tag, worker_pid, attempts FROM pgbg.jobs WHERE id = $1', [row.job_id])).rows[0];
    expect(j).toEqual({ state: 'succeeded', command_tag: 'VACUUM', worker_pid: null, attempts: 1 });
  });

  it('the launcher settles a supervised job at once, and requeues a transactional one whose worker died before it began', async () => {
    const alice = await session(cluster, db, 'alice');
    const enqueue = (statement: string, kind: string, transactional: boolean, options: object = {}) =>
      alice.query('SELECT * FROM pgbg.enqueue($1, $2, $3, NULL, $4::jsonb, NULL, NULL, NULL, NULL, 60000)', [statement, kind, transactional, JSON.stringify(options)]);
    // A launcher for alice, alive for a minute.
    const first = (await enqueue('SELECT 1', 'SELECT', true)).rows[0];
    expect((await waitJob(su, first.job_id)).state).toBe('succeeded');
    const launcher = (await su.query("SELECT pid FROM pgbg.launchers WHERE login = 'alice' AND alive")).rows[0].pid as number;

    // A supervised VACUUM that has finished when its launch returns.
    const before = await vacuumCount();
    let vacuum = '';
    await launchAfterWorkerStopped(launcher, () => {
      void enqueue('VACUUM tiny', 'VACUUM', false).then((r) => { vacuum = r.rows[0].job_id; });
    }, async () => {
      await eventually(async () => (await vacuumCount()) > before && (await noWorkerOf('VACUUM tiny')), 20_000, 20);
      await new Promise((r) => setTimeout(r, 200));
    });
    await eventually(async () => vacuum !== '', 10_000, 10);
    const v = await waitJob(su, vacuum);
    expect(v).toMatchObject({ state: 'succeeded', command_tag: 'VACUUM', worker_pid: null, attempts: 1 });

    // A transactional job whose worker is terminated while it waits for its launch to commit.
    let update = '';
    const runJob = () => `SELECT pgbg.run_job(${update})`;
    await launchAfterWorkerStopped(launcher, () => {
      void enqueue('UPDATE counter SET n = n + 7', 'UPDATE', true, { max_attempts: 2 }).then((r) => { update = r.rows[0].job_id; });
    }, async () => {
      await eventually(async () => update !== '', 10_000, 10);
      const worker = await eventually(async () => {
        const r = await su.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_background' AND query = $1", [runJob()]);
        return r.rows[0]?.pid as number | undefined;
      }, 20_000, 20);
      await su.query('SELECT pg_terminate_backend($1, 10000)', [worker]);
      await eventually(() => noWorkerOf(runJob()), 20_000, 20);
      await new Promise((r) => setTimeout(r, 200));
    });
    const u = await waitJob(su, update);
    expect(u).toMatchObject({ state: 'succeeded', attempts: 2 });
    expect((await su.query('SELECT n FROM counter')).rows[0].n).toBe('7');
    const attempts = (await su.query('SELECT attempt, outcome FROM pgbg.job_attempts WHERE job_id = $1 ORDER BY attempt', [update])).rows;
    expect(attempts).toEqual([{ attempt: 1, outcome: 'lost' }, { attempt: 2, outcome: 'succeeded' }]);
  });
});
