import pg from 'pg';
import type { Logger } from 'pino';

/**
 * Periodically asks the registry database to mark jobs whose worker vanished without an outcome
 * as lost (pgbg.reconcile(), which checks pg_stat_activity itself and changes only provably dead
 * jobs). Runs at start, then every interval; survives the server going away and coming back.
 */
export class Reconciler {
  private timer: NodeJS.Timeout | null = null;
  private client: pg.Client | null = null;
  private stopped = false;
  lastRunAt: Date | null = null;
  lastError: string | null = null;

  constructor(
    private readonly url: string,
    private intervalMs: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    void this.tick();
  }

  setInterval(ms: number): void {
    this.intervalMs = ms;
  }

  /** One pass; returns the number of jobs marked lost. */
  async runOnce(): Promise<number> {
    const client = await this.connection();
    const since = await client.query<{ t: Date }>('SELECT clock_timestamp() AS t');
    const r = await client.query<{ n: number }>('SELECT pgbg.reconcile() AS n');
    const changed = Number(r.rows[0]?.n ?? 0);
    if (changed > 0) {
      const lost = await client.query<{ id: string; lost_reason: string }>(
        "SELECT id::text, lost_reason FROM pgbg.job WHERE state = 'lost' AND finished_at >= $1",
        [since.rows[0].t],
      );
      for (const row of lost.rows) this.log.warn({ event: 'job_lost', job_id: row.id, reason: row.lost_reason }, 'job lost');
    }
    this.lastRunAt = new Date();
    this.lastError = null;
    return changed;
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.runOnce();
    } catch (err) {
      if (this.stopped) return;
      this.lastError = (err as Error).message;
      this.log.warn({ err: this.lastError }, 'reconciliation failed; will retry');
      this.client?.end().catch(() => {});
      this.client = null;
    }
    if (!this.stopped) this.timer = setTimeout(() => void this.tick(), this.intervalMs);
  }

  private async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    const client = new pg.Client({ connectionString: this.url, application_name: 'pgbg-proxy reconciler' });
    client.on('error', () => {
      if (this.client === client) this.client = null;
    });
    await client.connect();
    this.client = client;
    return client;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.client?.end().catch(() => {});
    this.client = null;
  }
}
