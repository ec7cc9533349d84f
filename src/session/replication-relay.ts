import type net from 'node:net';
import type { Logger } from 'pino';
import { BackendStream, type BackendStreamSink } from '../protocol/backend-stream.js';
import { errorResponse } from '../protocol/backend-messages.js';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import { connectUpstream, sendCancel } from '../upstream/connect.js';
import type { CancelKeys } from '../listener/cancel-keys.js';
import type { SessionSettings } from './client-session.js';
import type { SessionObserver } from './session-observer.js';

/**
 * Whether a startup packet asks for a replication connection. PostgreSQL reads `replication` as
 * "database" (logical) or a boolean (physical when true); a false value is an ordinary
 * connection. Anything else is relayed as well: the server refuses it with its own FATAL.
 */
export function wantsReplication(params: Map<string, string>): boolean {
  const value = params.get('replication');
  if (value === undefined) return false;
  return parseBool(value) !== false;
}

/** PostgreSQL's parse_bool: true/false/yes/no/on/off/1/0, any case, unique prefixes too. */
function parseBool(value: string): boolean | null {
  const v = value.trim().toLowerCase();
  if (v === '') return null;
  const prefixOf = (word: string) => word.startsWith(v);
  if (prefixOf('true') || prefixOf('yes')) return true;
  if (prefixOf('false') || prefixOf('no')) return false;
  if (v === 'on') return true;
  if (v === 'of' || v === 'off') return false; // "o" alone is ambiguous
  if (v === '1') return true;
  if (v === '0') return false;
  return null;
}

export interface ReplicationDeps {
  settings: () => SessionSettings;
  cancelKeys: CancelKeys;
  observer: SessionObserver;
  log: Logger;
}

const ERROR_RESPONSE = 0x45;
const READY_FOR_QUERY = 0x5a;
const BACKEND_KEY_DATA = 0x4b;

/**
 * A replication connection (pg_basebackup, pg_receivewal, pg_recvlogical, a logical
 * subscription) relayed byte for byte: the replication protocol's commands and its CopyBoth
 * streams are never inspected, framed or held. Only the server's answers up to its first
 * ReadyForQuery are read, to log and count a refusal and to learn the cancel key.
 */
export class ReplicationRelay implements BackendStreamSink {
  private upstream: net.Socket | null = null;
  private ready = false;
  private readonly walker = new BackendStream(this);
  private closed = false;
  private failure: string | null = null;
  private pid = 0;
  private readonly cancelTarget = { cancel: () => this.cancel() };
  private key = 0;
  private readonly closeListeners: (() => void)[] = [];

  constructor(
    private readonly client: net.Socket,
    private readonly startupPacket: Buffer,
    private readonly params: Map<string, string>,
    readonly id: string,
    private readonly deps: ReplicationDeps,
  ) {}

  onClose(listener: () => void): void {
    this.closeListeners.push(listener);
  }

  private get logContext() {
    return { session: this.id, user: this.params.get('user'), database: this.params.get('database'), replication: this.params.get('replication') };
  }

  async start(initialClientBytes: Buffer): Promise<void> {
    const settings = this.deps.settings();
    const client = this.client;
    client.pause();
    client.on('error', (err) => this.fail(`client socket: ${err.message}`));
    client.on('close', () => this.close());
    let up: net.Socket;
    try {
      up = await connectUpstream(settings.upstream, settings.connectTimeoutMs);
    } catch (err) {
      this.deps.observer.replication('failed');
      this.deps.log.warn({ ...this.logContext, err: (err as Error).message }, 'replication connection failed: server unreachable');
      client.end(
        errorResponse(
          new PgError(SqlState.ConnectionFailure, `pgbg-proxy could not connect to the server at ${settings.upstream.host}:${settings.upstream.port}`, (err as Error).message, undefined, 'FATAL'),
        ),
      );
      this.closed = true;
      for (const l of this.closeListeners) l();
      return;
    }
    if (this.closed || client.destroyed) {
      up.destroy();
      return;
    }
    this.upstream = up;
    this.deps.observer.upstreamConnected(1);
    up.on('error', (err) => this.fail(`server socket: ${err.message}`));
    up.on('close', () => this.close());
    up.on('data', (chunk: Buffer) => {
      this.deps.observer.bytes('server_to_client', chunk.length);
      if (this.ready) this.toClient(chunk);
      else this.walker.push(chunk);
    });
    client.on('data', (chunk: Buffer) => {
      this.deps.observer.bytes('client_to_server', chunk.length);
      if (!up.write(chunk)) client.pause();
    });
    up.on('drain', () => client.resume());
    client.on('drain', () => up.resume());
    up.write(initialClientBytes.length ? Buffer.concat([this.startupPacket, initialClientBytes]) : this.startupPacket);
    client.resume();
  }

  private toClient(bytes: Buffer): void {
    if (!this.client.write(bytes)) this.upstream?.pause();
  }

  // ---- the server's answers up to its first ReadyForQuery (BackendStreamSink) ----------------

  capturing(): boolean {
    return !this.ready;
  }
  relay(bytes: Buffer): void {
    this.toClient(bytes);
  }
  noteMessage(): void {}
  capture(type: number, message: Buffer): void {
    this.toClient(message);
    if (type === BACKEND_KEY_DATA && message.length === 13) {
      this.pid = message.readInt32BE(5);
      this.key = message.readInt32BE(9);
      this.deps.cancelKeys.register(this.pid, this.key, this.cancelTarget);
    } else if (type === ERROR_RESPONSE) {
      const f = errorFields(message);
      this.deps.observer.replication('refused');
      this.deps.log.warn({ ...this.logContext, code: f.C, severity: f.V ?? f.S, message: f.M }, 'replication connection refused by the server');
    } else if (type === READY_FOR_QUERY) {
      this.ready = true;
      this.deps.observer.replication('started');
      this.deps.log.info({ ...this.logContext, backend_pid: this.pid }, 'replication connection started');
    }
  }

  private cancel(): void {
    const s = this.deps.settings();
    sendCancel(s.upstream, this.pid, this.key, s.connectTimeoutMs).catch((err) =>
      this.deps.log.warn({ session: this.id, err: (err as Error).message }, 'cancel request to server failed'),
    );
  }

  // ---- endings ----------------------------------------------------------------------------

  private fail(reason: string): void {
    if (this.closed || this.failure) return;
    this.failure = reason;
    this.deps.observer.replication('failed');
    this.deps.log.warn({ ...this.logContext, err: reason }, 'replication connection broken');
    this.close();
  }

  /** Ends both sides; what the server said last has already been relayed. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.pid) this.deps.cancelKeys.release(this.pid, this.cancelTarget);
    if (this.upstream) {
      this.deps.observer.upstreamConnected(-1);
      this.upstream.end();
      this.upstream.destroySoon?.();
    }
    this.client.destroySoon();
    this.deps.log.info({ session: this.id, ended_by: this.failure ?? 'peer' }, 'replication connection ended');
    for (const l of this.closeListeners) l();
  }
}

/** ErrorResponse fields by their one-letter codes. */
function errorFields(message: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 5;
  while (pos < message.length && message[pos] !== 0) {
    const end = message.indexOf(0, pos + 1);
    if (end < 0) break;
    out[String.fromCharCode(message[pos])] = message.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return out;
}
