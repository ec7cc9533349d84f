/**
 * The IPC messages between the supervisor (primary) and its workers. Every message carries a
 * `pgbg` tag, so that node:cluster's own internal messages (cmd: 'NODE_CLUSTER') never match.
 * The channel is node's default JSON serialization: configuration travels as the raw,
 * unvalidated mapping (plain data) and each side validates it with the same schema.
 */
export type RawConfig = Record<string, unknown>;

export type RpcMessage =
  | { pgbg: 'request'; id: number; op: string }
  | { pgbg: 'reply'; id: number; ok: true; value: unknown }
  | { pgbg: 'reply'; id: number; ok: false; error: string };

/** Supervisor to worker. */
export type ToWorker =
  /** The first message: the configuration to start with and the PAUSE state. */
  | { pgbg: 'start'; config: RawConfig; pausedSince: string | null }
  /** A reload the supervisor has validated. */
  | { pgbg: 'config'; config: RawConfig }
  | { pgbg: 'paused'; since: string | null }
  /** A CancelRequest another worker received; cancel only if a local session holds the key. */
  | { pgbg: 'cancel'; pid: number; key: number }
  /** Drain (graceMs: the shutdown grace, 0 = close now), then exit. */
  | { pgbg: 'shutdown'; graceMs?: number }
  | RpcMessage;

/** Worker to supervisor. */
export type ToPrimary =
  /** Sent once the worker listens for messages (earlier ones would be lost): asks for 'start'. */
  | { pgbg: 'ready' }
  | { pgbg: 'listening'; host: string; port: number }
  /** A CancelRequest whose key no session of the sending worker holds. */
  | { pgbg: 'cancel'; pid: number; key: number }
  /** A session that held a client slot (RPC 'take-slot') closed. */
  | { pgbg: 'slot-release' }
  | RpcMessage;

export function isPgbgMessage(msg: unknown): msg is { pgbg: string } {
  return typeof msg === 'object' && msg !== null && typeof (msg as { pgbg?: unknown }).pgbg === 'string';
}
