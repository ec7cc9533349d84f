import { Gauge, type Registry } from 'prom-client';

/**
 * The operator's PAUSE / RESUME of job launching (admin console). Only the flag lives here: the
 * job submission path asks `isPaused()` before it launches a worker and decides itself whether
 * to refuse or queue. The flag is process state, not configuration, so a RELOAD keeps it.
 */
export class PauseSwitch {
  private since: Date | null = null;

  /** Bound, so it can be handed to the jobs code as a plain function. */
  readonly isPaused = (): boolean => this.since !== null;

  /** When launching was paused, or null while it runs. */
  get pausedSince(): Date | null {
    return this.since;
  }

  /** Returns false if it was already paused (the original time is kept). */
  pause(): boolean {
    if (this.since) return false;
    this.since = new Date();
    return true;
  }

  /** Returns false if it was not paused. */
  resume(): boolean {
    if (!this.since) return false;
    this.since = null;
    return true;
  }

  /**
   * Takes the state a supervisor decided (workers > 1: the primary owns PAUSE / RESUME and
   * every worker mirrors it, src/supervisor/).
   */
  mirror(since: Date | null): void {
    this.since = since;
  }

  /** Publishes the flag as pgbg_launching_paused (1 while paused) so it can be alerted on. */
  exportTo(registry: Registry): void {
    const isPaused = this.isPaused;
    new Gauge({
      name: 'pgbg_launching_paused',
      help: 'Whether launching of new jobs is paused from the admin console (1) or not (0).',
      registers: [registry],
      collect() {
        this.set(isPaused() ? 1 : 0);
      },
    });
  }
}
