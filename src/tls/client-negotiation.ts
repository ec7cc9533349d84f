import type net from 'node:net';
import type tls from 'node:tls';
import type { Logger } from 'pino';
import { readStartup, type StartupOutcome } from '../listener/startup-reader.js';
import type { SessionObserver } from '../session/session-observer.js';
import { PG_ALPN, type ClientTls } from './client-tls.js';

export type NegotiatedStartup =
  | { socket: net.Socket; outcome: StartupOutcome & { kind: 'cancel' | 'startup' } }
  /** Closed without a word, as the server closes on a TLS failure (logged and counted here). */
  | { socket: net.Socket; outcome: { kind: 'closed' } };

/**
 * A new connection's negotiation up to its StartupMessage or CancelRequest, with TLS where the
 * client asks for it and tls.client allows it:
 * - SSLRequest: 'S', then the TLS handshake, then the startup packet inside TLS;
 * - direct TLS (PostgreSQL 17, `sslnegotiation=direct`): the connection opens with a
 *   ClientHello; accepted only with ALPN `postgresql`, as the server does (a client that
 *   offers other protocols gets the no_application_protocol alert; one that offers none is
 *   closed after the handshake: "received direct SSL connection request without ALPN").
 * The whole negotiation, handshakes included, stays within `timeoutMs`. The returned socket is
 * the TLS socket when TLS was negotiated.
 */
export async function negotiateStartup(socket: net.Socket, clientTls: ClientTls, timeoutMs: number, log: Logger, observer: SessionObserver): Promise<NegotiatedStartup> {
  // Read the peer address while the connection is fresh: Node caches it, and isUnixSocket() relies on it.
  void socket.remoteAddress;
  const deadline = Date.now() + timeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
  let current: net.Socket = socket;
  let encrypted = false;
  for (;;) {
    let outcome: StartupOutcome;
    try {
      outcome = await readStartup(current, left(), { offerTls: !encrypted && clientTls.offersTo(socket), encrypted });
    } catch (err) {
      // The listener answers a broken startup on the connection as it now is (inside TLS, if so).
      throw Object.assign(err as Error, { socket: current });
    }
    if (outcome.kind === 'cancel' || outcome.kind === 'startup') return { socket: current, outcome };
    const direct = outcome.kind === 'direct-tls';
    if (direct && !clientTls.offersTo(socket)) {
      // The server with ssl = off (or on a Unix-domain socket) closes such a connection without a word.
      return closed(socket, log, observer, clientTls.enabled ? 'direct TLS connection attempted on a Unix-domain socket' : 'direct TLS connection attempted, but TLS is not enabled (tls.client.mode = disable)');
    }
    if (outcome.kind === 'direct-tls') socket.unshift(outcome.head);
    else socket.write('S');
    let secure: tls.TLSSocket;
    try {
      secure = await clientTls.accept(socket, left());
    } catch (err) {
      return closed(socket, log, observer, `TLS handshake failed: ${(err as Error).message.trim()}`);
    }
    if (direct && secure.alpnProtocol !== PG_ALPN) {
      secure.destroy();
      return closed(socket, log, observer, 'received direct SSL connection request without ALPN protocol negotiation extension');
    }
    secure.on('error', () => {});
    current = secure;
    encrypted = true;
  }
}

function closed(socket: net.Socket, log: Logger, observer: SessionObserver, why: string): NegotiatedStartup {
  observer.protocolError('tls_negotiation');
  log.warn({ remote: socket.remoteAddress, err: why }, 'connection closed during TLS negotiation');
  socket.destroy();
  return { socket, outcome: { kind: 'closed' } };
}
