/** Raw frontend/backend protocol helpers for tests that must write bytes no driver would. */
import net from 'node:net';
import { createHash } from 'node:crypto';


export function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}
export function frame(type: string, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(type), int32(body.length + 4), body]);
}
export function startupPacket(protocol: number, params: Record<string, string>): Buffer {
  const body = Buffer.concat([...Object.entries(params).map(([k, v]) => Buffer.from(`${k}\0${v}\0`)), Buffer.from([0])]);
  return Buffer.concat([int32(body.length + 8), int32(protocol), body]);
}
export function rawExchange(port: number, packet: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.on('close', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
    s.write(packet);
  });
}
export interface Msg {
  type: string;
  body: Buffer;
}
export function reader(socket: net.Socket) {
  let buf = Buffer.alloc(0);
  const waiting: (() => void)[] = [];
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    waiting.splice(0).forEach((w) => w());
  });
  return async function next(): Promise<Msg> {
    for (;;) {
      if (buf.length >= 5) {
        const len = buf.readInt32BE(1);
        if (buf.length >= len + 1) {
          const m = { type: String.fromCharCode(buf[0]), body: buf.subarray(5, len + 1) };
          buf = buf.subarray(len + 1);
          return m;
        }
      }
      await new Promise<void>((r) => waiting.push(r));
    }
  };
}
const readers = new WeakMap<net.Socket, () => Promise<Msg>>();
export async function authenticatedSocket(port: number, user: string, database = process.env.WIRE_DB ?? 'app'): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  const next = reader(socket);
  readers.set(socket, next);
  socket.write(startupPacket(3 << 16, { user, database }));
  for (;;) {
    const m = await next();
    if (m.type === 'E') throw new Error(m.body.toString());
    if (m.type === 'Z') return socket;
  }
}
export async function sendAndReadUntilReady(socket: net.Socket, data: Buffer): Promise<Msg[]> {
  const next = readers.get(socket)!;
  socket.write(data);
  const out: Msg[] = [];
  for (;;) {
    const m = await next();
    out.push(m);
    if (m.type === 'Z') return out;
  }
}
export async function copyIn(port: number, user: string, sql: string, data: string): Promise<string> {
  const socket = await authenticatedSocket(port, user);
  const next = readers.get(socket)!;
  socket.write(frame('Q', Buffer.from(sql + '\0')));
  const g = await next();
  if (g.type !== 'G') throw new Error(`expected CopyInResponse, got ${g.type}: ${g.body.toString()}`);
  const bytes = Buffer.from(data);
  for (let i = 0; i < bytes.length; i += 7000) socket.write(frame('d', bytes.subarray(i, i + 7000)));
  socket.write(frame('c', Buffer.alloc(0)));
  let tag = '';
  for (;;) {
    const m = await next();
    if (m.type === 'C') tag = m.body.subarray(0, m.body.length - 1).toString();
    if (m.type === 'E') throw new Error(m.body.toString());
    if (m.type === 'Z') break;
  }
  socket.end(frame('X', Buffer.alloc(0)));
  return tag;
}
export async function copyOut(port: number, user: string, sql: string): Promise<string> {
  const socket = await authenticatedSocket(port, user);
  const next = readers.get(socket)!;
  socket.write(frame('Q', Buffer.from(sql + '\0')));
  const parts: Buffer[] = [];
  for (;;) {
    const m = await next();
    if (m.type === 'd') parts.push(Buffer.from(m.body));
    if (m.type === 'E') throw new Error(m.body.toString());
    if (m.type === 'Z') break;
  }
  socket.end(frame('X', Buffer.alloc(0)));
  return Buffer.concat(parts).toString();
}
export function sha(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}
