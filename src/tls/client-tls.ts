import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { TlsConfig } from '../config/schema.js';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';

type ClientTlsConfig = TlsConfig['client'];

/** The ALPN protocol name PostgreSQL 17 registers and requires for direct TLS. */
export const PG_ALPN = 'postgresql';

/** TLS versions below this are refused on both sides (PostgreSQL's ssl_min_protocol_version default). */
export const MIN_TLS_VERSION = 'TLSv1.2';

/**
 * The client-facing TLS state: the mode and the certificate/key, as a secure context handed to
 * each new connection. A reload builds a new context; connections already in TLS keep the one
 * they started with, so no session is dropped. A reload whose files cannot be loaded keeps the
 * previous state whole and says so (PostgreSQL: "SSL configuration was not reloaded").
 */
export class ClientTls {
  private state: { mode: ClientTlsConfig['mode']; context: tls.SecureContext | null; subject: string };

  /** Throws when TLS is enabled and the files cannot be loaded: the proxy must not start half-configured. */
  constructor(config: ClientTlsConfig, private readonly log: Logger) {
    this.state = loadClientTls(config);
  }

  get mode(): ClientTlsConfig['mode'] {
    return this.state.mode;
  }

  /** TLS is offered to clients that ask (SSLRequest answered 'S', direct TLS accepted). */
  get enabled(): boolean {
    return this.state.context !== null;
  }

  reload(config: ClientTlsConfig): void {
    try {
      const next = loadClientTls(config);
      const changed = next.mode !== this.state.mode || next.subject !== this.state.subject;
      this.state = next;
      if (changed || next.context) this.log.info({ mode: next.mode, certificate: next.subject || undefined }, 'client TLS configuration loaded');
    } catch (err) {
      this.log.error({ err: (err as Error).message, mode: this.state.mode }, 'client TLS configuration was not reloaded; the previous one stays in use');
    }
  }

  /** TLS is offered on this connection: enabled, and not a Unix-domain socket (the server never offers it there). */
  offersTo(socket: net.Socket): boolean {
    return this.enabled && !isUnixSocket(socket);
  }

  /**
   * A TCP connection that did not negotiate TLS while tls.client.mode is require. A Unix-domain
   * socket is not refused: `hostssl` never applies to `local` connections on the server either.
   */
  refusesPlain(socket: net.Socket): boolean {
    return this.state.mode === 'require' && !(socket as tls.TLSSocket).encrypted && !isUnixSocket(socket);
  }

  /**
   * The server's answer to a plain-text client that no pg_hba.conf line admits without
   * encryption: FATAL 28000, naming host, user, database and "no encryption", as the server does.
   */
  plainRefusal(remote: string | undefined, params: ReadonlyMap<string, string>): PgError {
    const user = params.get('user') ?? '';
    const database = params.get('database') || user;
    return new PgError(
      SqlState.InvalidAuthorization,
      `no pg_hba.conf entry for host "${remote ?? ''}", user "${user}", database "${database}", no encryption`,
      'pgbg-proxy accepts TLS connections only (tls.client.mode = require).',
      'Connect with sslmode=require or stronger.',
      'FATAL',
    );
  }

  /**
   * Starts the server side of a TLS handshake on `socket` and resolves once it completes. The
   * caller has already written 'S' (SSLRequest) or pushed the ClientHello back (direct TLS).
   * ALPN: a client that offers protocols without `postgresql` gets the fatal
   * no_application_protocol alert, as from PostgreSQL 17; one that offers none is accepted here
   * (the caller decides whether direct TLS needs it).
   */
  accept(socket: net.Socket, timeoutMs: number): Promise<tls.TLSSocket> {
    const context = this.state.context;
    if (!context) return Promise.reject(new Error('TLS is not enabled'));
    return new Promise((resolve, reject) => {
      const secure = new tls.TLSSocket(socket, { isServer: true, secureContext: context, ALPNProtocols: [PG_ALPN], requestCert: false });
      const timer = setTimeout(() => done(new Error(`TLS handshake did not complete within ${timeoutMs} ms`)), timeoutMs);
      const onError = (err: Error) => done(err);
      const onClose = () => done(new Error('connection closed during the TLS handshake'));
      function done(err: Error | null) {
        clearTimeout(timer);
        secure.off('secure', onSecure);
        secure.off('error', onError);
        secure.off('close', onClose);
        secure.on('error', () => {});
        if (err) {
          secure.destroy();
          socket.destroy();
          reject(err);
        } else {
          resolve(secure);
        }
      }
      const onSecure = () => done(null);
      secure.once('secure', onSecure);
      secure.on('error', onError);
      secure.once('close', onClose);
    });
  }
}

function loadClientTls(config: ClientTlsConfig): { mode: ClientTlsConfig['mode']; context: tls.SecureContext | null; subject: string } {
  if (config.mode === 'disable') return { mode: config.mode, context: null, subject: '' };
  const cert = readPem(config.cert!, 'tls.client.cert');
  const key = readPem(config.key!, 'tls.client.key');
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext({ cert, key, minVersion: MIN_TLS_VERSION });
  } catch (err) {
    throw new Error(`tls.client: cannot use ${config.cert} with ${config.key}: ${(err as Error).message}`);
  }
  let subject = '';
  try {
    const x509 = new X509Certificate(cert);
    subject = `${x509.subject.replace(/\n/g, ', ')} (serial ${x509.serialNumber})`;
  } catch {
    /* a description only */
  }
  return { mode: config.mode, context, subject };
}

/** A connection accepted on a Unix-domain socket has no remote address (TCP ones always have one while open). */
export function isUnixSocket(socket: net.Socket): boolean {
  return socket.remoteAddress === undefined && !socket.destroyed;
}

export function readPem(path: string, key: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`${key}: cannot read ${path}: ${(err as Error).message}`);
  }
}
