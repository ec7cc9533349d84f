import type { Logger } from 'pino';

/**
 * CancelRequests across workers. A CancelRequest arrives on a connection of its own, which the
 * shared listening address hands to any worker, rarely the one serving the session it cancels.
 * The receiving worker looks the (pid, key) up among its own sessions first
 * (src/listener/cancel-keys.ts); when none holds it, the request goes to the supervisor, which
 * offers it to every other worker; each cancels only a session that holds exactly that
 * (pid, key). Nothing is answered to the client, matched or not, as with PostgreSQL.
 */

/** Worker side: where a CancelRequest no local session matched goes. */
export function cancelViaSupervisor(send: (msg: { pgbg: 'cancel'; pid: number; key: number }) => void, log: Logger): (pid: number, key: number) => void {
  return (pid, key) => {
    log.debug({ cancel_pid: pid }, 'cancel request not for this worker: handed to the supervisor');
    try {
      send({ pgbg: 'cancel', pid, key });
    } catch {
      /* supervisor gone: this worker is exiting too */
    }
  };
}

/** Supervisor side: offers the request to every worker but the one it came from. */
export function offerCancel(workers: Iterable<{ id: number; offer(pid: number, key: number): void }>, fromId: number, pid: number, key: number): void {
  if (!Number.isInteger(pid) || !Number.isInteger(key)) return;
  for (const w of workers) if (w.id !== fromId) w.offer(pid, key);
}

/** Worker side: a request the supervisor offers; true if a session of this worker held the key. */
export function cancelOffered(localCancel: (pid: number, key: number) => boolean, pid: number, key: number, log: Logger): boolean {
  const matched = localCancel(pid, key);
  if (matched) log.debug({ cancel_pid: pid }, 'cancel request relayed from another worker: matched here');
  return matched;
}
