/**
 * Upgrading a registry that holds jobs: a database migrated to an older released version, with
 * real jobs in every state (one still running in a worker during the upgrade), is migrated to the
 * newest version. Nothing is lost or rewritten, the running job records its own outcome through
 * whatever the newer version defines, and the upgraded registry takes new jobs.
 * Used by test/registry-upgrade.test.ts (from version 2) and test/registry-upgrade-v5.test.ts.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, REGISTRY_VERSION, registryVersion } from '../../src/jobs/migrate.js';
import { eventually, getCluster } from '../harness/index.js';

/** Declares the upgrade tests from registry version FROM_VERSION to the newest. */
export function upgradeSuite(FROM_VERSION: number): void {
  const cluster = getCluster();

  let db: string;
  const open: pg.Client[] = [];

  async function session(user: string): Promise<pg.Client> {
    const client = new pg.Client(cluster.clientConfig({ user, database: db }));
    client.on('error', () => undefined);
    await client.connect();
    open.push(client);
    return client;
  }

  /** Submits through the version-2 function, as the client session's role. */
  async function submitV2(c: pg.Client, statement: string, kind: string, options: object = {}): Promise<string> {
    const r = await c.query('SELECT job_id, state FROM pgbg.submit_and_launch($1, $2, true, NULL, $3::jsonb)', [
      statement,
      kind,
      JSON.stringify(options),
    ]);
    return String(r.rows[0].job_id);
  }

  async function stateOf(c: pg.Client, id: string): Promise<string> {
    const r = await c.query('SELECT state FROM pgbg.job WHERE id = $1', [id]);
    return r.rows[0].state;
  }

  async function waitTerminal(c: pg.Client, id: string): Promise<string> {
    return eventually<string>(async () => {
      await c.query('SELECT pgbg.reconcile($1)', [id]);
      const state = await stateOf(c, id);
      return ['succeeded', 'failed', 'cancelled', 'lost'].includes(state) ? state : '';
    }, 20_000);
  }

  interface Snapshot {
    id: string;
    state: string;
    owner: string;
    statement: string;
    sqlstate: string | null;
    attempts: number;
  }

  async function snapshot(su: pg.Client): Promise<Snapshot[]> {
    const r = await su.query('SELECT id::text, state, owner::text, statement, sqlstate, attempts FROM pgbg.job ORDER BY id');
    return r.rows as Snapshot[];
  }

  const ids: Record<'succeeded' | 'failed' | 'cancelled' | 'lost' | 'queued' | 'running', string> = {
    succeeded: '',
    failed: '',
    cancelled: '',
    lost: '',
    queued: '',
    running: '',
  };
  let before: Snapshot[] = [];

  beforeAll(async () => {
    db = await cluster.createDatabase();
    const su = await session('postgres');
    expect(await migrate(su, { toVersion: FROM_VERSION })).toEqual({ from: 0, to: FROM_VERSION });
    expect(await registryVersion(su)).toBe(FROM_VERSION);
    await su.query(`CREATE TABLE ledger (n int NOT NULL); GRANT SELECT, INSERT ON ledger TO alice`);

    const alice = await session('alice');
    ids.succeeded = await submitV2(alice, 'INSERT INTO ledger VALUES (1)', 'INSERT');
    ids.failed = await submitV2(alice, 'SELECT 1/0', 'SELECT');
    ids.cancelled = await submitV2(alice, 'SELECT pg_sleep(30)', 'SELECT');
    ids.lost = await submitV2(alice, 'INSERT INTO ledger VALUES (200)', 'INSERT', { not_before: '2099-01-01T00:00:00Z' });
    ids.queued = await submitV2(alice, 'INSERT INTO ledger VALUES (100)', 'INSERT', { not_before: '2099-01-01T00:00:00Z' });

    expect(await waitTerminal(su, ids.succeeded)).toBe('succeeded');
    expect(await waitTerminal(su, ids.failed)).toBe('failed');
    await eventually(async () => (await stateOf(su, ids.cancelled)) === 'running', 10_000);
    expect((await alice.query('SELECT pgbg.cancel($1) AS ok', [ids.cancelled])).rows[0].ok).toBe(true);
    expect(await waitTerminal(su, ids.cancelled)).toBe('cancelled');
    // Written as reconciliation writes it (a terminated worker ends lost on 1.8 but records its own
    // 57014 on 2.x, which turns SIGTERM into a query cancel).
    await su.query(
      `UPDATE pgbg.job SET state = 'lost', finished_at = clock_timestamp(),
              lost_reason = 'worker process ended without recording an outcome (terminated or crashed)'
        WHERE id = $1`,
      [ids.lost],
    );
    expect(await waitTerminal(su, ids.lost)).toBe('lost');
    expect(await stateOf(su, ids.queued)).toBe('queued');

    // Launched last, so that it is still inside its worker when the upgrade runs.
    ids.running = await submitV2(alice, 'INSERT INTO ledger SELECT 7 FROM pg_sleep(3)', 'INSERT');
    expect(await stateOf(su, ids.running)).toBe('running');
    before = await snapshot(su);

    expect(await migrate(su)).toEqual({ from: FROM_VERSION, to: REGISTRY_VERSION });
  });

  afterAll(async () => {
    await Promise.all(open.map((c) => c.end().catch(() => undefined)));
  });

  describe(`upgrade of a registry with jobs in every state, version ${FROM_VERSION} -> newest`, () => {
    it('keeps every job row as it was', async () => {
      const su = await session('postgres');
      const after = await snapshot(su);
      expect(after.map((j) => j.id)).toEqual(before.map((j) => j.id));
      for (const [i, job] of after.entries()) {
        if (job.id === ids.running) continue; // it may have finished in the meantime
        expect(job).toEqual(before[i]);
      }
      const byId = new Map(after.map((j) => [j.id, j.state]));
      expect(byId.get(ids.succeeded)).toBe('succeeded');
      expect(byId.get(ids.failed)).toBe('failed');
      expect(before.find((j) => j.id === ids.failed)!.sqlstate).toBe('22012');
      expect(byId.get(ids.cancelled)).toBe('cancelled');
      expect(byId.get(ids.lost)).toBe('lost');
      expect(byId.get(ids.queued)).toBe('queued');
    });

    it('lets the job running during the upgrade record its own outcome, effect exactly once', async () => {
      const su = await session('postgres');
      expect(await waitTerminal(su, ids.running)).toBe('succeeded');
      const r = await su.query('SELECT count(*)::int AS n FROM ledger WHERE n = 7');
      expect(r.rows[0].n).toBe(1);
    });

    it('shows each role only its own jobs, and the owner can still cancel a queued one', async () => {
      const alice = await session('alice');
      const bob = await session('bob');
      const mine = await alice.query('SELECT id::text FROM pgbg.jobs ORDER BY id');
      expect(mine.rows.map((r) => r.id)).toEqual(before.map((j) => j.id));
      expect((await bob.query('SELECT count(*)::int AS n FROM pgbg.jobs')).rows[0].n).toBe(0);
      expect((await bob.query('SELECT pgbg.cancel($1) AS ok', [ids.queued]).catch((e) => ({ rows: [{ ok: e.code }] }))).rows[0].ok).not.toBe(true);
      expect((await alice.query('SELECT pgbg.cancel($1) AS ok', [ids.queued])).rows[0].ok).toBe(true);
      const su = await session('postgres');
      expect(await stateOf(su, ids.queued)).toBe('cancelled');
      const hundred = await su.query('SELECT count(*)::int AS n FROM ledger WHERE n = 100');
      expect(hundred.rows[0].n).toBe(0);
    });
  });
}
