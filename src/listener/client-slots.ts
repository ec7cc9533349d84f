/**
 * Admission of client sessions (replication connections included) against limits.maxClients.
 * The limit is the whole proxy's: one process counts its own sessions; under a supervisor
 * (workers > 1) the supervisor counts every worker's (src/supervisor/client-slots.ts), so that
 * `maxClients: 1000` means 1000 whatever `workers` is. Every slot taken is released once, when
 * its session or replication relay closes.
 */
export interface ClientSlots {
  /** Takes a slot if fewer than `limit` are taken; false when the proxy is full. */
  take(limit: number): boolean | Promise<boolean>;
  release(): void;
}

/** One process's own count. */
export class LocalClientSlots implements ClientSlots {
  private taken = 0;

  get count(): number {
    return this.taken;
  }

  take(limit: number): boolean {
    if (this.taken >= limit) return false;
    this.taken++;
    return true;
  }

  release(): void {
    if (this.taken > 0) this.taken--;
  }
}
