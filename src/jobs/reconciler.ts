import type { Logger } from 'pino';
import { RegistryConnection } from './registry-connection.js';
import type { AdmissionConfig } from './scheduling-policy.js';
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
  /** Admission limits to store in the registry (pgbg.set_admission_config); written at the next pass. */
  private admission: string | null = null;
  private admissionWritten: string | null = null;

  constructor(
    url: string,
    private intervalMs: number,
    private readonly log: Logger,
    connectTimeoutMs = 5000,
    tls?: () => UpstreamTls,
    /** This proxy's row in pgbg.admission_config (see admissionId in scheduling-policy.ts). */
    private readonly admissionId: string = 'default',
  ) {
    this.registry = new RegistryConnection(() => url, () => connectTimeoutMs, log, { applicationName: 'pgbg-proxy reconciler', tls });
  }

  start(): void {
    void this.tick();
  }

  setInterval(ms: number): void {
    this.intervalMs = ms;
  }

  /**
   * The configuration's admission limits, stored in the registry at once (and again after the
   * server comes back) so that the database's launchers admit queued jobs under them.
   */
  setAdmissionConfig(config: AdmissionConfig): void {
    this.admission = JSON.stringify(config);
    if (this.admission !== this.admissionWritten && !this.stopped) void this.writeAdmission().catch(() => undefined);
  }

  private async writeAdmission(): Promise<void> {
    const json = this.admission;
    if (json === null || json === this.admissionWritten) return;
    try {
      await this.registry.query('SELECT pgbg.set_admission_config($1, $2::jsonb)', [this.admissionId, json]);
      this.admissionWritten = json;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not store the admission limits in the registry; will retry');
      throw err;
    }
  }

  /** One pass; returns the number of jobs marked lost. */
  async runOnce(): Promise<number> {
    await this.writeAdmission().catch(() => undefined); // an older registry has no such function; reconcile anyway
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
      this.admissionWritten = null; // the server may have been replaced: write the limits again
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
