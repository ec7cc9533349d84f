import { ProtocolViolation } from './errors.js';

/** PostgreSQL's own bound on a startup packet (MAX_STARTUP_PACKET_LENGTH). */
export const MAX_STARTUP_PACKET = 10000;
export const PROTOCOL_3_0 = 196608;
const CANCEL_REQUEST_CODE = 80877102;
const SSL_REQUEST_CODE = 80877103;
const GSSENC_REQUEST_CODE = 80877104;

export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; pid: number; key: number }
  | { kind: 'startup'; protocol: number; params: Map<string, string>; raw: Buffer };

/**
 * Startup failures on which PostgreSQL closes the connection without a word to the client (it
 * only logs them): a length out of range (which is also what a Terminate, an HTTP request or a
 * TLS ClientHello sent in place of a startup packet looks like), a packet that never completes.
 */
export const SILENT_STARTUP_FAILURES: ReadonlySet<string> = new Set(['startup_length', 'startup_eof', 'startup_timeout']);

/** Returns the packet length if `buf` holds a whole startup packet, 0 if more bytes are needed. */
export function startupPacketLength(buf: Buffer): number {
  if (buf.length < 4) return 0;
  const len = buf.readInt32BE(0);
  // The server's own bounds: 4 bytes of protocol code at least, MAX_STARTUP_PACKET_LENGTH of body.
  if (len < 8 || len - 4 > MAX_STARTUP_PACKET) throw new ProtocolViolation(`invalid length of startup packet (${len})`, 'startup_length');
  return buf.length >= len ? len : 0;
}

/**
 * A protocol version the server does not speak. PostgreSQL answers a client below 3.0 in the
 * old protocol's error format (so that it can read why), any other in the 3.0 format.
 */
export class UnsupportedProtocol extends ProtocolViolation {
  constructor(
    readonly major: number,
    readonly minor: number,
  ) {
    super(`unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`, 'bad_protocol');
  }
  get legacyFormat(): boolean {
    return this.major < 3;
  }
}

/** The server's FATAL for every malformed parameter list (postmaster.c, ProcessStartupPacket). */
const BAD_LAYOUT = 'invalid startup packet layout: expected terminator as last byte';

export function readStartupPacket(packet: Buffer): StartupPacket {
  const code = packet.readInt32BE(4);
  if (code === SSL_REQUEST_CODE && packet.length === 8) return { kind: 'ssl' };
  if (code === GSSENC_REQUEST_CODE && packet.length === 8) return { kind: 'gssenc' };
  if (code === CANCEL_REQUEST_CODE) {
    // The server reads a CancelRequest of any length (missing bytes as zeros) and never answers.
    const body = Buffer.alloc(16);
    packet.copy(body, 0, 0, Math.min(16, packet.length));
    return { kind: 'cancel', pid: body.readInt32BE(8), key: body.readInt32BE(12) };
  }
  if (code >> 16 !== 3) throw new UnsupportedProtocol(code >>> 16, code & 0xffff);
  const params = new Map<string, string>();
  let pos = 8;
  while (pos < packet.length) {
    const keyEnd = packet.indexOf(0, pos);
    if (keyEnd < 0) throw new ProtocolViolation(BAD_LAYOUT, 'bad_startup');
    if (keyEnd === pos) {
      if (keyEnd !== packet.length - 1) throw new ProtocolViolation(BAD_LAYOUT, 'bad_startup');
      return { kind: 'startup', protocol: code, params, raw: packet };
    }
    const key = packet.toString('utf8', pos, keyEnd);
    const valEnd = packet.indexOf(0, keyEnd + 1);
    if (valEnd < 0) throw new ProtocolViolation(BAD_LAYOUT, 'bad_startup');
    params.set(key, packet.toString('utf8', keyEnd + 1, valEnd));
    pos = valEnd + 1;
  }
  throw new ProtocolViolation(BAD_LAYOUT, 'bad_startup');
}

/** A startup packet with the given parameters (used to open side sessions and rewrite startup). */
export function buildStartupPacket(params: Map<string, string>, protocol = PROTOCOL_3_0): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of params) parts.push(Buffer.from(k + '\0' + v + '\0', 'utf8'));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  const out = Buffer.alloc(8 + body.length);
  out.writeInt32BE(8 + body.length, 0);
  out.writeInt32BE(protocol, 4);
  body.copy(out, 8);
  return out;
}
