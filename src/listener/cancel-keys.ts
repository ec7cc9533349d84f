import { randomInt } from 'node:crypto';

export interface CancelTarget {
  /** Forwards the cancel to whatever the session is running now. */
  cancel(): void;
}

/**
 * Clients get (pid, key) pairs made up by the proxy, never the server's own: a cancel key is a
 * credential, and a session's upstream backend can change (adopted sessions, future pooling).
 */
export class CancelKeys {
  private readonly byPid = new Map<number, { key: number; target: CancelTarget }>();

  issue(target: CancelTarget): { pid: number; key: number } {
    let pid: number;
    do pid = randomInt(1, 0x7fffffff);
    while (this.byPid.has(pid));
    const key = randomInt(-0x80000000, 0x7fffffff);
    this.byPid.set(pid, { key, target });
    return { pid, key };
  }

  release(pid: number): void {
    this.byPid.delete(pid);
  }

  /** Returns true if the key matched a live session (which was then asked to cancel). */
  cancel(pid: number, key: number): boolean {
    const entry = this.byPid.get(pid);
    if (!entry || entry.key !== key) return false;
    entry.target.cancel();
    return true;
  }
}
