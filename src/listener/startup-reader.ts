import type net from 'node:net';
import { readStartupPacket, startupPacketLength, type StartupPacket } from '../protocol/startup.js';
import { ProtocolViolation } from '../protocol/errors.js';

export type StartupOutcome =
  | { kind: 'cancel'; pid: number; key: number }
  | { kind: 'startup'; packet: Extract<StartupPacket, { kind: 'startup' }>; rest: Buffer }
  /** SSLRequest while TLS is offered: the caller answers it (src/tls/client-negotiation.ts). */
  | { kind: 'ssl' }
  /** The connection opened with a TLS record (PostgreSQL 17 direct TLS): `head` is what was read. */
  | { kind: 'direct-tls'; head: Buffer };

/** How a connection's TLS negotiation stands, for readStartup. */
export interface StartupTlsState {
  /** An SSLRequest resolves as { kind: 'ssl' } instead of being answered 'N'. */
  offerTls: boolean;
  /** The connection is already in TLS: a further SSLRequest or GSSENCRequest is refused, as the server does. */
  encrypted: boolean;
}

/** The first byte of a TLS handshake record; a startup length never starts with it (it would mean > 300 MB). */
const TLS_HANDSHAKE = 0x16;

/**
 * Reads a new connection's first packets: answers SSLRequest and GSSENCRequest with 'N' (the
 * client goes on in plain text, as `sslmode=prefer` does), and resolves with a CancelRequest or
 * a StartupMessage. Where TLS is offered, an SSLRequest (or a connection opening with a TLS
 * record) resolves instead, for src/tls/client-negotiation.ts to start TLS and call again. Never holds more than one startup packet's worth of bytes.
 */
export function readStartup(socket: net.Socket, timeoutMs: number, tls: StartupTlsState = { offerTls: false, encrypted: false }): Promise<StartupOutcome> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    let first = true;
    const timer = setTimeout(() => finish(new ProtocolViolation('startup packet not received in time', 'startup_timeout')), timeoutMs);
    const onData = (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      if (first && !tls.encrypted && buf[0] === TLS_HANDSHAKE) return finish(null, { kind: 'direct-tls', head: buf });
      first = false;
      try {
        for (;;) {
          const len = startupPacketLength(buf);
          if (len === 0) return;
          const packet = readStartupPacket(buf.subarray(0, len));
          const rest = buf.subarray(len);
          if (packet.kind === 'ssl' || packet.kind === 'gssenc') {
            if (tls.encrypted) {
              // The server reads a second negotiation request inside TLS as an unknown protocol version.
              throw new ProtocolViolation(`unsupported frontend protocol 1234.${packet.kind === 'ssl' ? 5679 : 5680}: server supports 3.0 to 3.0`, 'bad_protocol');
            }
            if (rest.length > 0) throw new ProtocolViolation('bytes after SSL/GSS negotiation request', 'bad_startup');
            if (packet.kind === 'ssl' && tls.offerTls) return finish(null, { kind: 'ssl' });
            socket.write('N');
            buf = rest;
            continue;
          }
          if (packet.kind === 'cancel') return finish(null, { kind: 'cancel', pid: packet.pid, key: packet.key });
          return finish(null, { kind: 'startup', packet, rest: Buffer.from(rest) });
        }
      } catch (err) {
        finish(err as Error);
      }
    };
    const onEnd = () => finish(new ProtocolViolation('connection closed during startup', 'startup_eof'));
    function finish(err: Error | null, outcome?: StartupOutcome) {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onEnd);
      socket.off('error', onEnd);
      socket.pause();
      if (err) reject(err);
      else resolve(outcome!);
    }
    socket.on('data', onData);
    socket.on('close', onEnd);
    socket.on('error', onEnd);
  });
}
