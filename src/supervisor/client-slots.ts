import type { Logger } from 'pino';
import type { ClientSlots } from '../listener/client-slots.js';
import { LocalClientSlots } from '../listener/client-slots.js';

/**
 * limits.maxClients across workers: the supervisor holds the count of every worker's sessions.
 * A worker asks for a slot before it starts a session (one IPC round trip, tens of microseconds,
 * beside the session's own startup and authentication round trips to the server) and tells the
 * supervisor when the session ends; the slots of a worker that dies go with it.
 */

/** How long a worker waits for the supervisor's answer before it counts on its own. */
const TAKE_TIMEOUT_MS = 2000;

/** Supervisor side: slots held per worker id. */
export class SlotLedger {
  private readonly held = new Map<number, number>();

  take(workerId: number, limit: number): boolean {
    if (this.total >= limit) return false;
    this.held.set(workerId, (this.held.get(workerId) ?? 0) + 1);
    return true;
  }

  release(workerId: number): void {
    const n = this.held.get(workerId) ?? 0;
    if (n > 1) this.held.set(workerId, n - 1);
    else this.held.delete(workerId);
  }

  /** A worker exited: its sessions closed with it. */
  forget(workerId: number): void {
    this.held.delete(workerId);
  }

  get total(): number {
    let total = 0;
    for (const n of this.held.values()) total += n;
    return total;
  }
}

/**
 * Worker side. If the supervisor does not answer in time (it is stopping, or stuck), the worker
 * admits against the limit on its own count rather than refuse everyone: the limit then holds
 * per worker until the supervisor answers again.
 */
export function supervisedClientSlots(request: (op: string, timeoutMs: number) => Promise<boolean>, sendRelease: () => void, log: Logger): ClientSlots {
  // Slots taken on this worker's own count are released there, not at the supervisor.
  const own = new LocalClientSlots();
  return {
    async take(limit) {
      try {
        return await request('take-slot', TAKE_TIMEOUT_MS);
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'supervisor did not answer a client slot request: admitting on this worker\'s own count');
        return own.take(limit);
      }
    },
    release() {
      if (own.count > 0) {
        own.release();
        return;
      }
      try {
        sendRelease();
      } catch {
        /* supervisor gone: this worker is exiting too */
      }
    },
  };
}
