export interface CancelTarget {
  /** Forwards the cancel to whatever the session is running now. */
  cancel(): void;
}

/**
 * Clients get the server's own BackendKeyData, unchanged: the pid is then what
 * `pg_backend_pid()` says, what `pg_terminate_backend()` takes and what notifications carry.
 * The proxy still has to know which upstream a CancelRequest belongs to, so it keeps the live
 * sessions' (pid, secret key) pairs and forwards a CancelRequest only for a pair it handed out:
 * a made-up pair is dropped here, as the server would drop it, without a connection to it.
 */
export class CancelKeys {
  private readonly byPid = new Map<number, { key: number; target: CancelTarget }>();

  /**
   * Registers the server's (pid, key) of a session. The server never gives a live backend's
   * pid to another, so an entry already there belongs to a session whose backend is gone.
   */
  register(pid: number, key: number, target: CancelTarget): void {
    this.byPid.set(pid, { key, target });
  }

  /** Forgets a pid, only if it still belongs to `target` (a later session may reuse the pid). */
  release(pid: number, target: CancelTarget): void {
    if (this.byPid.get(pid)?.target === target) this.byPid.delete(pid);
  }

  /** Returns true if the key matched a live session (which was then asked to cancel). */
  cancel(pid: number, key: number): boolean {
    const entry = this.byPid.get(pid);
    if (!entry || entry.key !== key) return false;
    entry.target.cancel();
    return true;
  }
}
