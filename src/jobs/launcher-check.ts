/**
 * When a new session should look for a launcher to start (pgbg.ensure_launcher): at most once
 * per interval per (database, login) in this process, so that a burst of connections costs the
 * server one look, while the first session after a server restart or a terminated launcher
 * still finds the waiting jobs within one interval. Bounded: the map forgets its oldest entries.
 */
export class LauncherCheckThrottle {
  private readonly lastCheck = new Map<string, number>();

  constructor(
    private readonly intervalMs = 2000,
    private readonly maxEntries = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  due(database: string, login: string): boolean {
    const key = `${database}\u0000${login}`;
    const t = this.now();
    const last = this.lastCheck.get(key);
    if (last !== undefined && t - last < this.intervalMs) return false;
    this.lastCheck.delete(key);
    if (this.lastCheck.size >= this.maxEntries) {
      const oldest = this.lastCheck.keys().next().value;
      if (oldest !== undefined) this.lastCheck.delete(oldest);
    }
    this.lastCheck.set(key, t);
    return true;
  }
}
