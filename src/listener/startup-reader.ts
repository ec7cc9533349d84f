import type net from 'node:net';
import { readStartupPacket, startupPacketLength, type StartupPacket } from '../protocol/startup.js';
import { ProtocolViolation } from '../protocol/errors.js';

export type StartupOutcome =
  | { kind: 'cancel'; pid: number; key: number }
  | { kind: 'startup'; packet: Extract<StartupPacket, { kind: 'startup' }>; rest: Buffer };

/**
 * Reads a new connection's first packets: answers SSLRequest and GSSENCRequest with 'N' (the
 * client goes on in plain text, as `sslmode=prefer` does), and resolves with a CancelRequest or
 * a StartupMessage. Never holds more than one startup packet's worth of bytes.
 */
export function readStartup(socket: net.Socket, timeoutMs: number): Promise<StartupOutcome> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new ProtocolViolation('startup packet not received in time', 'startup_timeout')), timeoutMs);
    const onData = (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      try {
        for (;;) {
          const len = startupPacketLength(buf);
          if (len === 0) return;
          const packet = readStartupPacket(buf.subarray(0, len));
          const rest = buf.subarray(len);
          if (packet.kind === 'ssl' || packet.kind === 'gssenc') {
            if (rest.length > 0) throw new ProtocolViolation('bytes after SSL/GSS negotiation request', 'bad_startup');
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
