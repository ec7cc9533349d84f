import { describe, expect, it } from 'vitest';
import { BackendStream, type BackendStreamSink } from '../../src/protocol/backend-stream.js';
import { prng } from '../support/prng.js';
import { frame as message } from '../support/wire.js';

const SEED = Number(process.env.PGBG_BACKEND_STREAM_SEED ?? (Date.now() & 0x7fffffff));
console.log(`[backend-stream.test] seed ${SEED} (replay with PGBG_BACKEND_STREAM_SEED=${SEED})`);

/** What the stream did: bytes relayed in order (copied), messages noted and captured. */
class RecordingSink implements BackendStreamSink {
  relayed: Buffer[] = [];
  noted: { type: string; status: number }[] = [];
  captured: Buffer[] = [];
  /** Everything seen, in order: relayed bytes and captured messages, as one byte stream. */
  order: Buffer[] = [];
  constructor(private readonly capture_: Set<string>) {}
  relay(bytes: Buffer): void {
    const copy = Buffer.from(bytes);
    this.relayed.push(copy);
    this.order.push(copy);
  }
  noteMessage(type: number, status: number): void {
    this.noted.push({ type: String.fromCharCode(type), status });
  }
  capture(type: number, message: Buffer): void {
    expect(message[0]).toBe(type);
    const copy = Buffer.from(message);
    this.captured.push(copy);
    this.order.push(copy);
  }
  capturing(type: number): boolean {
    return this.capture_.has(String.fromCharCode(type));
  }
}

function randomMessages(rand: () => number, n: number): Buffer[] {
  const kinds: [string, () => Buffer][] = [
    ['Z', () => Buffer.from([['I', 'T', 'E'][Math.floor(rand() * 3)].charCodeAt(0)])],
    ['T', () => Buffer.alloc(Math.floor(rand() * 40), 7)],
    ['D', () => Buffer.alloc(Math.floor(rand() * (rand() < 0.1 ? 5000 : 30)), 9)],
    ['C', () => Buffer.from('SELECT 1\0')],
    ['n', () => Buffer.alloc(0)],
    ['S', () => Buffer.from('client_encoding\0UTF8\0')],
    ['1', () => Buffer.alloc(0)],
  ];
  return Array.from({ length: n }, () => {
    const [type, body] = kinds[Math.floor(rand() * kinds.length)];
    return message(type, body());
  });
}

/** Cuts bytes at random points: pieces of 1 byte up to the whole. */
function split(rand: () => number, bytes: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  while (pos < bytes.length) {
    const size = rand() < 0.3 ? 1 + Math.floor(rand() * 7) : 1 + Math.floor(rand() * 200);
    out.push(bytes.subarray(pos, pos + size));
    pos += size;
  }
  return out;
}

describe('BackendStream', () => {
  it('relays every byte in order, notes every message with its ReadyForQuery status, wherever reads split them', () => {
    const rand = prng(SEED);
    for (let round = 0; round < 300; round++) {
      const msgs = randomMessages(rand, 1 + Math.floor(rand() * 30));
      const whole = Buffer.concat(msgs);
      const sink = new RecordingSink(new Set());
      const stream = new BackendStream(sink);
      for (const piece of split(rand, whole)) stream.push(piece);
      expect(Buffer.concat(sink.relayed).equals(whole)).toBe(true);
      expect(sink.noted).toEqual(msgs.map((m) => ({ type: String.fromCharCode(m[0]), status: m[0] === 0x5a ? m[5] : 0 })));
      expect(stream.atBoundary).toBe(true);
    }
  });

  it('captures whole messages of the types asked for and relays the rest, in the original order', () => {
    const rand = prng(SEED + 1);
    for (let round = 0; round < 300; round++) {
      const msgs = randomMessages(rand, 1 + Math.floor(rand() * 30));
      const whole = Buffer.concat(msgs);
      const sink = new RecordingSink(new Set(['S', 'Z']));
      const stream = new BackendStream(sink);
      for (const piece of split(rand, whole)) stream.push(piece);
      const wanted = msgs.filter((m) => m[0] === 0x53 || m[0] === 0x5a);
      expect(sink.captured.map((m) => m.toString('hex'))).toEqual(wanted.map((m) => m.toString('hex')));
      // relayed bytes and captured messages together are the stream, nothing lost or doubled
      expect(Buffer.concat(sink.order).equals(whole)).toBe(true);
      // captured messages are not noted (the consumer reads them whole)
      expect(sink.noted.map((n) => n.type)).toEqual(msgs.filter((m) => m[0] !== 0x53 && m[0] !== 0x5a).map((m) => String.fromCharCode(m[0])));
      expect(stream.atBoundary).toBe(true);
    }
  });

  it('holds a header split across reads until it is whole, relaying nothing of it early', () => {
    const sink = new RecordingSink(new Set());
    const stream = new BackendStream(sink);
    const rfq = message('Z', Buffer.from('T'));
    stream.push(rfq.subarray(0, 3));
    expect(sink.relayed).toEqual([]);
    expect(sink.noted).toEqual([]);
    expect(stream.atBoundary).toBe(false);
    stream.push(rfq.subarray(3));
    expect(Buffer.concat(sink.relayed).equals(rfq)).toBe(true);
    expect(sink.noted).toEqual([{ type: 'Z', status: 'T'.charCodeAt(0) }]);
  });
});
