import type { Logger } from 'pino';
import { RegistryConnection } from './registry-connection.js';
import type { UpstreamTls } from '../tls/upstream-tls.js';

/**
 * Periodically asks the registry database to mark jobs whose worker vanished without an outcome
 * as lost (pgbg.reconcile(), which checks pg_stat_activity itself and changes only provably dead
 * jobs). Runs at start, then every interval; survives the server going away and coming back.
 */
export class Reconciler {
  private timer: NodeJS.Timeout | null = null;
  private readonly registry: RegistryConnection;
  private stopped = false;
  lastRunAt: Date | null = null;
  lastError: string | null = null;

  constructor(
    url: string,
    private intervalMs: number,
    private readonly log: Logger,
    connectTimeoutMs = 5000,
    tls?: () => UpstreamTls,
  ) {
    this.registry = new RegistryConnection(() => url, () => connectTimeoutMs, log, { applicationName: 'pgbg-proxy reconciler', tls });
  }

  start(): void {
    void this.tick();
  }

  setInterval(ms: number): void {
    this.intervalMs = ms;
  }

  /** One pass; returns the number of jobs marked lost. */
  async runOnce(): Promise<number> {
    const since = await this.registry.query<{ t: Date }>('SELECT clock_timestamp() AS t');
    const r = await this.registry.query<{ n: number }>('SELECT pgbg.reconcile() AS n');
    const changed = Number(r.rows[0]?.n ?? 0);
    if (changed > 0) {
      const lost = await this.registry.query<{ id: string; lost_reason: string }>(
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
    }
    if (!this.stopped) this.timer = setTimeout(() => void this.tick(), this.intervalMs);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.registry.close();
  }
}
