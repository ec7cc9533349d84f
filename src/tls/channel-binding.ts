import type net from 'node:net';
import type tls from 'node:tls';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';

const AUTHENTICATION = 0x52; // 'R'
const SASL = 10;
const PASSWORD_MESSAGE = 0x70; // 'p': SASLInitialResponse here

/**
 * SCRAM authentication relayed through a proxy that terminates TLS.
 *
 * Channel binding (SCRAM-SHA-256-PLUS, `tls-server-end-point`) binds the exchange to the
 * certificate of the TLS connection the client sees: the proxy's. The server checks it against
 * its own certificate, so it can succeed only when the proxy shows clients the server's own
 * certificate. Otherwise:
 * - The -PLUS mechanisms are taken out of AuthenticationSASL, so no client picks one that
 *   must fail; a client that requires channel binding (libpq `channel_binding=require`) stops
 *   with its own error ("channel binding is required, but server did not offer an
 *   authentication method that supports channel binding").
 * - A client in TLS then says "I support channel binding but the server does not" (gs2 flag
 *   `y`, libpq's default channel_binding=prefer). A server in TLS refuses that as a downgrade
 *   attack, and the flag is covered by the client's proof, so the proxy cannot rewrite it. The
 *   proxy refuses it itself with an error that says why and what to do, before the server
 *   counts a failed login.
 */
export class ScramChannelBinding {
  private awaitingInitialResponse = false;
  private spans: boolean | null = null;

  constructor(
    private readonly client: net.Socket,
    private readonly upstream: net.Socket,
  ) {}

  /** Channel binding can succeed end to end: both legs in TLS, and the client sees the server's own certificate. */
  get bindingSpansProxy(): boolean {
    if (this.spans === null) {
      const c = this.client as tls.TLSSocket;
      const u = this.upstream as tls.TLSSocket;
      let same = false;
      if (c.encrypted && u.encrypted) {
        const mine = c.getCertificate() as tls.PeerCertificate | null;
        const theirs = u.getPeerCertificate();
        same = Boolean(mine?.raw && theirs?.raw && mine.raw.equals(theirs.raw));
      }
      this.spans = same;
    }
    return this.spans;
  }

  /** A server message during authentication, as the client is to see it. */
  fromServer(message: Buffer): Buffer {
    if (message[0] !== AUTHENTICATION || message.length < 9 || message.readInt32BE(5) !== SASL) return message;
    this.awaitingInitialResponse = true;
    if (this.bindingSpansProxy) return message;
    const mechanisms = readMechanisms(message);
    const kept = mechanisms.filter((m) => !m.endsWith('-PLUS'));
    return kept.length === mechanisms.length ? message : authenticationSasl(kept);
  }

  /** A client message during authentication: an error to end the session with, or null to relay it. */
  fromClient(type: number, message: Buffer): PgError | null {
    if (type !== PASSWORD_MESSAGE || !this.awaitingInitialResponse) return null;
    this.awaitingInitialResponse = false;
    if (!(this.upstream as tls.TLSSocket).encrypted || this.bindingSpansProxy) return null;
    const end = message.indexOf(0, 5);
    // mechanism\0, int32 length, then the client-first-message: gs2 flag first.
    if (end < 0 || end + 5 >= message.length) return null;
    if (message[end + 5] !== 0x79 /* y */) return null;
    return new PgError(
      SqlState.ProtocolViolation,
      'SCRAM channel binding negotiation error',
      'pgbg-proxy terminates TLS, so SCRAM channel binding cannot span it. The client offers channel binding over TLS ' +
        '(libpq channel_binding=prefer, the default), and the server, reached over TLS, would refuse such a login as a downgrade.',
      'Connect with channel_binding=disable, or give the proxy the server\'s own certificate and key (tls.client.cert/key) so that channel binding works end to end.',
      'FATAL',
    );
  }
}

/** The mechanism names of an AuthenticationSASL message (NUL-terminated, ending with an empty one). */
export function readMechanisms(message: Buffer): string[] {
  const out: string[] = [];
  let pos = 9;
  const end = Math.min(message.length, 1 + message.readInt32BE(1));
  while (pos < end) {
    const zero = message.indexOf(0, pos);
    if (zero < 0 || zero >= end || zero === pos) break;
    out.push(message.toString('utf8', pos, zero));
    pos = zero + 1;
  }
  return out;
}

/** AuthenticationSASL listing `mechanisms`. */
export function authenticationSasl(mechanisms: string[]): Buffer {
  const body = Buffer.concat([...mechanisms.map((m) => Buffer.from(`${m}\0`, 'utf8')), Buffer.from([0])]);
  const out = Buffer.alloc(9 + body.length);
  out[0] = AUTHENTICATION;
  out.writeInt32BE(8 + body.length, 1);
  out.writeInt32BE(SASL, 5);
  body.copy(out, 9);
  return out;
}
