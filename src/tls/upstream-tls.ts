import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import pg from 'pg';
import type { ConnectionOptions } from 'node:tls';
import type { TlsConfig } from '../config/schema.js';
import { MIN_TLS_VERSION, PG_ALPN, readPem } from './client-tls.js';

type ServerTlsConfig = TlsConfig['server'];
export type ServerTlsMode = ServerTlsConfig['mode'];

/** The loaded tls.server settings: what every connection to the server is opened with. */
export interface UpstreamTls {
  readonly mode: ServerTlsMode;
  /** CA, client certificate and key, loaded once per configuration; null when mode is disable. */
  readonly context: tls.SecureContext | null;
  /** The chain is checked (verify-ca, verify-full, and require with a CA, as libpq does). */
  readonly verifyChain: boolean;
  readonly verifyHost: boolean;
}

export const PLAIN_UPSTREAM: UpstreamTls = Object.freeze({ mode: 'disable', context: null, verifyChain: false, verifyHost: false });

/** Reads the files named by tls.server; throws naming the key when one cannot be used. */
export function loadUpstreamTls(config: ServerTlsConfig): UpstreamTls {
  if (config.mode === 'disable') return PLAIN_UPSTREAM;
  const options: tls.SecureContextOptions = { minVersion: MIN_TLS_VERSION };
  if (config.ca) options.ca = readPem(config.ca, 'tls.server.ca');
  if (config.cert) options.cert = readPem(config.cert, 'tls.server.cert');
  if (config.key) options.key = readPem(config.key, 'tls.server.key');
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext(options);
  } catch (err) {
    throw new Error(`tls.server: cannot use the configured files: ${(err as Error).message}`);
  }
  const verifyChain = config.mode === 'verify-ca' || config.mode === 'verify-full' || (config.mode === 'require' && Boolean(config.ca));
  return { mode: config.mode, context, verifyChain, verifyHost: config.mode === 'verify-full' };
}

/**
 * The current tls.server state, shared by client sessions' upstream connections and the proxy's
 * own (registry, admin console, reconciler, metrics). A reload rereads the files; when they
 * cannot be used the previous state stays, and the log says so.
 */
export class UpstreamTlsState {
  private state: UpstreamTls;

  constructor(config: ServerTlsConfig, private readonly log: Logger) {
    this.state = loadUpstreamTls(config);
  }

  get current(): UpstreamTls {
    return this.state;
  }

  reload(config: ServerTlsConfig): void {
    try {
      this.state = loadUpstreamTls(config);
    } catch (err) {
      this.log.error({ err: (err as Error).message, mode: this.state.mode }, 'server TLS configuration was not reloaded; the previous one stays in use');
    }
  }
}

/** libpq never uses TLS over a Unix-domain socket, whatever sslmode says; neither does the proxy. */
export function usesTls(host: string, t: UpstreamTls): boolean {
  return t.mode !== 'disable' && !host.startsWith('/');
}

function tlsOptions(host: string, t: UpstreamTls): ConnectionOptions {
  return {
    secureContext: t.context!,
    minVersion: MIN_TLS_VERSION,
    rejectUnauthorized: t.verifyChain,
    // verify-ca checks the chain only; tls.checkServerIdentity (the default) checks the name.
    ...(t.verifyHost ? {} : { checkServerIdentity: () => undefined }),
    // SNI must not carry an IP address (RFC 6066); the identity check uses `host` then.
    ...(net.isIP(host) === 0 ? { servername: host } : {}),
    host,
    // PostgreSQL 17 checks ALPN when a client sends it; libpq 17 always does.
    ALPNProtocols: [PG_ALPN],
  };
}

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/**
 * Negotiates TLS on a fresh connection to the server the way libpq does for sslmode: an
 * SSLRequest, then the handshake on 'S'; on 'N', plain text for prefer and an error for the
 * others. Bytes after the 'S' before the handshake are refused (CVE-2021-23222). Resolves with
 * the socket to use (the TLS socket, or the same socket in plain text).
 */
export function startUpstreamTls(socket: net.Socket, host: string, t: UpstreamTls, timeoutMs: number): Promise<net.Socket> {
  if (!usesTls(host, t)) return Promise.resolve(socket);
  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => fail(new Error(`TLS negotiation with the server did not complete within ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const onError = (err: Error) => fail(err);
    const onClose = () => fail(new Error('the server closed the connection during TLS negotiation'));
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.once('data', (chunk: Buffer) => {
      // Not paused on 'N': the caller's 'data' listener must find the socket flowing (a stream
      // paused explicitly stays paused when a listener is added). Nothing arrives meanwhile:
      // the server waits for the startup packet.
      if (chunk[0] === 0x4e /* N */) {
        if (chunk.length > 1) return fail(new Error('received unencrypted data after SSL response'));
        if (t.mode !== 'prefer') return fail(new Error(`server does not support SSL, but SSL was required (tls.server.mode = ${t.mode})`));
        settled = true;
        clearTimeout(timer);
        socket.off('error', onError);
        socket.off('close', onClose);
        return resolve(socket);
      }
      if (chunk[0] !== 0x53 /* S */) return fail(new Error(`the server answered the SSLRequest with an unexpected byte 0x${chunk[0].toString(16)}`));
      if (chunk.length > 1) return fail(new Error('received unencrypted data after SSL response'));
      socket.pause();
      socket.off('close', onClose);
      const secure = tls.connect({ socket, ...tlsOptions(host, t) });
      secure.once('secureConnect', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.off('error', onError);
        secure.off('error', onTlsError);
        resolve(secure);
      });
      const onTlsError = (err: Error) => {
        secure.destroy();
        fail(new Error(`TLS connection to the server failed (tls.server.mode = ${t.mode}): ${err.message}`));
      };
      secure.on('error', onTlsError);
    });
    socket.write(SSL_REQUEST);
  });
}

/**
 * The `ssl` option for node-postgres connections the proxy opens itself (registry, console,
 * reconciler, metrics), for a host that is not a Unix socket. pg has no "prefer": openRegistryClient
 * retries in plain text when the server answers 'N'. A connection string's own sslmode wins (pg
 * reads the URL after its options).
 */
export function pgSsl(host: string | undefined, t: UpstreamTls): false | ConnectionOptions {
  if (!usesTls(host ?? '', t)) return false;
  const { host: _host, servername: _sn, ...rest } = tlsOptions(host ?? 'localhost', t);
  return rest;
}

/** What pg says when the server answers 'N' to its SSLRequest. */
export function isServerWithoutTls(err: unknown): boolean {
  return (err as Error)?.message === 'The server does not support SSL connections';
}

/**
 * Opens a node-postgres connection for the proxy's own use with tls.server applied: `make`
 * builds the client for a given `ssl` option (the caller sets its other options and listeners).
 * The client is connected, or ended and the error thrown.
 */
export async function connectPgClient(url: string, t: UpstreamTls | undefined, make: (ssl: false | ConnectionOptions) => pg.Client): Promise<pg.Client> {
  // pg parses the URL itself (host=/socket/dir query parameters included): ask it for the host.
  const host = t && t.mode !== 'disable' ? new pg.Client({ connectionString: url }).host : undefined;
  const ssl = t ? pgSsl(host, t) : false;
  const attempt = async (option: false | ConnectionOptions) => {
    const client = make(option);
    try {
      await client.connect();
      return client;
    } catch (err) {
      client.end().catch(() => {});
      throw err;
    }
  };
  try {
    return await attempt(ssl);
  } catch (err) {
    if (ssl && t?.mode === 'prefer' && isServerWithoutTls(err)) return attempt(false);
    throw err;
  }
}
