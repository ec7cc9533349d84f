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

/** Returns the packet length if `buf` holds a whole startup packet, 0 if more bytes are needed. */
export function startupPacketLength(buf: Buffer): number {
  if (buf.length < 4) return 0;
  const len = buf.readInt32BE(0);
  if (len < 8 || len > MAX_STARTUP_PACKET) throw new ProtocolViolation(`invalid startup packet length ${len}`, 'bad_startup');
  return buf.length >= len ? len : 0;
}

export function readStartupPacket(packet: Buffer): StartupPacket {
  const code = packet.readInt32BE(4);
  if (code === SSL_REQUEST_CODE && packet.length === 8) return { kind: 'ssl' };
  if (code === GSSENC_REQUEST_CODE && packet.length === 8) return { kind: 'gssenc' };
  if (code === CANCEL_REQUEST_CODE && packet.length === 16) {
    return { kind: 'cancel', pid: packet.readInt32BE(8), key: packet.readInt32BE(12) };
  }
  if (code >> 16 !== 3) {
    throw new ProtocolViolation(
      `unsupported frontend protocol ${code >> 16}.${code & 0xffff}: server supports 3.0 to 3.0`,
      'bad_protocol',
    );
  }
  const params = new Map<string, string>();
  let pos = 8;
  while (pos < packet.length) {
    const keyEnd = packet.indexOf(0, pos);
    if (keyEnd < 0) throw new ProtocolViolation('unterminated startup parameter', 'bad_startup');
    if (keyEnd === pos) {
      if (keyEnd !== packet.length - 1) throw new ProtocolViolation('bytes after startup packet terminator', 'bad_startup');
      return { kind: 'startup', protocol: code, params, raw: packet };
    }
    const key = packet.toString('utf8', pos, keyEnd);
    const valEnd = packet.indexOf(0, keyEnd + 1);
    if (valEnd < 0) throw new ProtocolViolation('unterminated startup parameter value', 'bad_startup');
    params.set(key, packet.toString('utf8', keyEnd + 1, valEnd));
    pos = valEnd + 1;
  }
  throw new ProtocolViolation('startup packet lacks its terminator', 'bad_startup');
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
