import pg from 'pg';
import { Gauge, Counter, Histogram, type Registry } from 'prom-client';
import type { Logger } from 'pino';
import { RegistryConnection } from '../jobs/registry-connection.js';
import type { UpstreamTls } from '../tls/upstream-tls.js';

interface GroupCount extends pg.QueryResultRow {
  database: string;
  owner: string;
  rule: string | null;
  n: string;
  /** Seconds the longest-waiting job of the group has been queued (queued rows only). */
  oldest?: number;
}

interface Snapshot {
  inFlight: GroupCount[];
  queued: GroupCount[];
  slots: { max: string; used: string } | null;
  waiting: GroupCount[];
  launchers: string | number | null;
}

interface FinishedRow {
  id: string;
  database: string;
  rule: string | null;
  state: string;
  seconds: number | null;
  attempts: number;
}

/**
 * Everything the job metrics show, read in one statement: jobs with a live worker, the queue,
 * the worker slots (max_worker_processes and pgbg.worker_slots_used()), and the jobs above the
 * finished-count cursor ($1).
 */
const SNAPSHOT_SQL = `SELECT
  (SELECT COALESCE(jsonb_agg(g), '[]') FROM (
     SELECT j.database, j.owner, j.rule, count(*) AS n
       FROM pgbg.job j JOIN pg_stat_activity a ON a.pid = j.worker_pid
      WHERE j.state = 'running' GROUP BY 1, 2, 3) g) AS in_flight,
  (SELECT COALESCE(jsonb_agg(g), '[]') FROM (
     SELECT database, owner, rule, count(*) AS n,
            extract(epoch FROM clock_timestamp() - min(queued_at))::float8 AS oldest
       FROM pgbg.job WHERE state = 'queued' GROUP BY 1, 2, 3) g) AS queued,
  (SELECT COALESCE(jsonb_agg(g), '[]') FROM (
     SELECT database, login AS owner, NULL AS rule, count(*) AS n
       FROM pgbg.job WHERE state = 'queued' AND NOT pgbg._launcher_alive(login) GROUP BY 1, 2) g) AS waiting,
  (SELECT count(*) FILTER (WHERE l.alive) FROM pgbg.launchers l) AS launchers,
  (SELECT to_jsonb(s) FROM (
     SELECT current_setting('max_worker_processes') AS max, pgbg.worker_slots_used() AS used) s) AS slots,
  (SELECT COALESCE(jsonb_agg(jsonb_build_object('id', f.id::text, 'database', f.database, 'rule', f.rule, 'state', f.state,
                                                'seconds', extract(epoch FROM f.finished_at - f.started_at)::float8,
                                                'attempts', f.attempts) ORDER BY f.id), '[]')
     FROM (SELECT * FROM pgbg.job WHERE id > $1::bigint ORDER BY id LIMIT 10000) f) AS after_cursor`;

/**
 * Job metrics read from the server at scrape time, so they cannot drift from the truth after a
 * crash: in-flight means "a running job whose worker pid is alive in pg_stat_activity now".
 * Finished totals count state changes seen since this proxy started (monotonic per process).
 */
export class JobMetrics {
  private readonly registry: RegistryConnection;
  private lastFinishedId = 0n;
  private readonly finished: Counter<'database' | 'rule' | 'state'>;
  private readonly duration: Histogram<'database' | 'rule' | 'state'>;
  private readonly retries: Counter<'database' | 'rule'>;
  private primed = false;
  private readonly countedAbove = new Set<string>();
  private current: Promise<Snapshot> | null = null;
  private takenAt = 0;

  constructor(
    url: string,
    metricsRegistry: Registry,
    private readonly log: Logger,
    /** Read on each scrape, so a reload applies (the /metrics text cache uses the same setting). */
    private readonly snapshotTtlMs: () => number = () => 1000,
    connectTimeoutMs = 5000,
    tls?: () => UpstreamTls,
  ) {
    this.registry = new RegistryConnection(() => url, () => connectTimeoutMs, log, { applicationName: 'pgbg-proxy metrics', tls });
    const self = this;
    const byGroup = (gauge: Gauge<'database' | 'user' | 'rule'>, rows: GroupCount[]) => {
      gauge.reset();
      for (const r of rows) gauge.set({ database: r.database, user: r.owner, rule: r.rule ?? '' }, Number(r.n));
    };
    new Gauge({
      name: 'pgbg_jobs_in_flight',
      help: 'Jobs whose pg_background worker is running now (read from pg_stat_activity at scrape time).',
      labelNames: ['database', 'user', 'rule'],
      registers: [metricsRegistry],
      async collect() {
        byGroup(this, (await self.snapshot()).inFlight);
      },
    });
    new Gauge({
      name: 'pgbg_jobs_queued',
      help: 'Jobs recorded but not launched yet.',
      labelNames: ['database', 'user', 'rule'],
      registers: [metricsRegistry],
      async collect() {
        byGroup(this, (await self.snapshot()).queued);
      },
    });
    new Gauge({
      name: 'pgbg_jobs_queue_wait_seconds',
      help: 'How long the longest-waiting queued job has waited (since submission, or since its last attempt failed).',
      labelNames: ['database', 'user', 'rule'],
      registers: [metricsRegistry],
      async collect() {
        this.reset();
        for (const r of (await self.snapshot()).queued) {
          this.set({ database: r.database, user: r.owner, rule: r.rule ?? '' }, Number(r.oldest ?? 0));
        }
      },
    });
    new Gauge({
      name: 'pgbg_launchers',
      help: 'Live job launchers (one pg_background worker per database and login with work) of the registry database.',
      registers: [metricsRegistry],
      async collect() {
        this.set(Number((await self.snapshot()).launchers ?? 0));
      },
    });
    new Gauge({
      name: 'pgbg_jobs_waiting_for_launcher',
      help: 'Queued jobs whose login has no live launcher (after a server restart or a terminated launcher) until a session of that login starts one.',
      labelNames: ['database', 'user'],
      registers: [metricsRegistry],
      async collect() {
        this.reset();
        for (const r of (await self.snapshot()).waiting) this.set({ database: r.database, user: r.owner }, Number(r.n));
      },
    });
    new Gauge({
      name: 'pgbg_worker_slots',
      help: 'Background worker slots of the server: the max_worker_processes limit and the slots in use by any background worker.',
      labelNames: ['kind'],
      registers: [metricsRegistry],
      async collect() {
        const slots = (await self.snapshot()).slots;
        if (!slots) return;
        this.set({ kind: 'max' }, Number(slots.max));
        this.set({ kind: 'used' }, Number(slots.used));
      },
    });
    this.finished = new Counter({
      name: 'pgbg_jobs_finished_total',
      help: 'Jobs that reached a terminal state, seen since this proxy started.',
      labelNames: ['database', 'rule', 'state'],
      registers: [metricsRegistry],
      async collect() {
        await self.snapshot();
      },
    });
    this.retries = new Counter({
      name: 'pgbg_job_retries_total',
      help: 'Extra attempts of finished jobs (transient errors retried), seen since this proxy started.',
      labelNames: ['database', 'rule'],
      registers: [metricsRegistry],
      async collect() {
        await self.snapshot();
      },
    });
    this.duration = new Histogram({
      name: 'pgbg_job_duration_seconds',
      help: 'Run time of finished jobs (started to finished).',
      labelNames: ['database', 'rule', 'state'],
      buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400],
      registers: [metricsRegistry],
    });
    // Take the first reading now, so that jobs finishing before the first scrape are counted.
    void this.snapshot();
  }

  /**
   * One read of the server per interval, shared by every metric and by concurrent scrapes: a
   * scraper polling every 100 ms costs at most one set of queries per snapshotTtlMs, and the
   * queries never overlap on the one connection.
   */
  snapshot(): Promise<Snapshot> {
    const now = Date.now();
    if (!this.current || now - this.takenAt >= this.snapshotTtlMs()) {
      this.takenAt = now;
      this.current = this.load();
    }
    return this.current;
  }

  private async load(): Promise<Snapshot> {
    if (!this.primed) await this.prime();
    // One statement, so one round trip and one consistent view of the registry per interval.
    const rows = await this.query<{ in_flight: GroupCount[]; queued: GroupCount[]; waiting: GroupCount[]; launchers: string | null; slots: { max: string; used: string } | null; after_cursor: FinishedRow[] }>(
      SNAPSHOT_SQL,
      [this.lastFinishedId.toString()],
      'pgbg_metrics_snapshot',
    );
    const row = rows[0];
    if (!row) return { inFlight: [], queued: [], slots: null, waiting: [], launchers: null };
    // Unprimed (the first reading failed), the cursor is 0: counting now would count every job
    // that had finished before this proxy started.
    if (this.primed) this.countFinished(row.after_cursor);
    return { inFlight: row.in_flight, queued: row.queued, slots: row.slots, waiting: row.waiting, launchers: row.launchers };
  }

  /** Jobs already finished when this proxy started (first reading, at construction) are not counted; active ones will be. */
  private async prime(): Promise<void> {
    const r = await this.query<{ cursor: string | null }>(
      `SELECT COALESCE((SELECT min(id) - 1 FROM pgbg.job WHERE state IN ('queued', 'running')), (SELECT max(id) FROM pgbg.job), 0)::text AS cursor`,
    );
    if (r.length === 0) return; // not readable yet: try again with the next snapshot
    this.lastFinishedId = BigInt(r[0]?.cursor ?? 0);
    const done = await this.query<{ id: string }>(`SELECT id::text FROM pgbg.job WHERE id > $1 AND state NOT IN ('queued', 'running')`, [this.lastFinishedId.toString()]);
    for (const d of done) this.countedAbove.add(d.id);
    this.primed = true;
  }

  /**
   * Each job is counted once, when first seen terminal. The cursor advances over the contiguous
   * prefix of finished ids; ids above it already counted are remembered, so one long job does
   * not hold back the count of those that end after it.
   */
  private countFinished(rows: FinishedRow[]): void {
    let prefix = true;
    for (const r of rows) {
      const terminal = r.state !== 'queued' && r.state !== 'running';
      if (terminal && !this.countedAbove.has(r.id)) {
        const labels = { database: r.database, rule: r.rule ?? '', state: r.state };
        this.finished.inc(labels);
        if (r.seconds !== null) this.duration.observe(labels, r.seconds);
        if (r.attempts > 1) this.retries.inc({ database: r.database, rule: r.rule ?? '' }, r.attempts - 1);
        this.countedAbove.add(r.id);
      }
      if (!terminal) prefix = false;
      if (prefix) {
        this.lastFinishedId = BigInt(r.id);
        this.countedAbove.delete(r.id);
      }
    }
  }

  /** A failed read shows as no rows; the scrape goes on and the next snapshot tries again. */
  private async query<R extends pg.QueryResultRow>(sql: string, values: unknown[] = [], preparedName?: string): Promise<R[]> {
    try {
      return (await this.registry.query<R>(sql, values, preparedName)).rows;
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'metrics query failed');
      return [];
    }
  }

  async close(): Promise<void> {
    await this.registry.close();
  }
}
