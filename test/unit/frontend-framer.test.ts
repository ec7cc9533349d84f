import { afterEach, describe, expect, it, vi } from 'vitest';
import { FrontendFramer } from '../../src/protocol/frontend-framer.js';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import { prng } from '../support/prng.js';


const SEED = Number(process.env.PGBG_FRAMER_SEED ?? (Date.now() & 0x7fffffff));
console.log(`[frontend-framer.test] seed ${SEED} (replay with PGBG_FRAMER_SEED=${SEED})`);

const VALID_TYPES = [...'BCdcfDEHFPpQSX'];

function message(type: string | number, body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out[0] = typeof type === 'string' ? type.charCodeAt(0) : type;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** Feeds chunks and returns what came out (copies, so later pushes cannot alter them). */
function feed(framer: FrontendFramer, chunks: Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) framer.push(c, (type, msg) => {
    expect(msg[0]).toBe(type);
    out.push(Buffer.from(msg));
  });
  return out;
}

function violation(fn: () => void): ProtocolViolation {
  try {
    fn();
  } catch (err) {
    if (err instanceof ProtocolViolation) return err;
    throw err;
  }
  throw new Error('expected a ProtocolViolation');
}

/** Splits buf at `cuts` random points (sorted, possibly repeated: empty chunks are allowed). */
function split(buf: Buffer, rnd: () => number, cuts: number): Buffer[] {
  const points = Array.from({ length: cuts }, () => Math.floor(rnd() * (buf.length + 1))).sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    chunks.push(buf.subarray(prev, p));
    prev = p;
  }
  chunks.push(buf.subarray(prev));
  return chunks;
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('FrontendFramer splits a stream into messages', () => {
  it('yields the same messages whatever the chunk boundaries (property, seeded)', () => {
    const rnd = prng(SEED);
    let total = 0;
    for (let round = 0; round < 300; round++) {
      const msgs: Buffer[] = [];
      const n = 1 + Math.floor(rnd() * 30);
      for (let i = 0; i < n; i++) {
        const type = VALID_TYPES[Math.floor(rnd() * VALID_TYPES.length)];
        // Mostly small bodies, sometimes empty, sometimes larger than a socket read.
        const r = rnd();
        const len = r < 0.1 ? 0 : r < 0.9 ? Math.floor(rnd() * 64) : Math.floor(rnd() * 200_000);
        const body = Buffer.alloc(len);
        for (let j = 0; j < Math.min(len, 64); j++) body[j] = Math.floor(rnd() * 256);
        if (len > 64) body.fill(round & 0xff, 64);
        msgs.push(message(type, body));
      }
      const stream = Buffer.concat(msgs);
      const chunks = split(stream, rnd, Math.floor(rnd() * 40));
      const framer = new FrontendFramer(1 << 20);
      const got = feed(framer, chunks);
      expect(got.length, `round ${round}, seed ${SEED}`).toBe(msgs.length);
      for (let i = 0; i < msgs.length; i++) expect(got[i].equals(msgs[i]), `round ${round} message ${i}, seed ${SEED}`).toBe(true);
      expect(framer.bufferedBytes).toBe(0);
      total += msgs.length;
    }
    expect(total).toBeGreaterThan(300);
  });

  it('handles one byte at a time and keeps only the incomplete tail buffered', () => {
    const msgs = [message('Q', Buffer.from('SELECT 1\0')), message('S', Buffer.alloc(0)), message('P', Buffer.from('\0SELECT $1\0\0\0'))];
    const stream = Buffer.concat(msgs);
    const framer = new FrontendFramer(1024);
    const got: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) {
      framer.push(stream.subarray(i, i + 1), (_t, m) => got.push(Buffer.from(m)));
      const complete = got.reduce((s, m) => s + m.length, 0);
      expect(framer.bufferedBytes).toBe(i + 1 - complete);
    }
    expect(framer.bufferedBytes).toBe(0);
    expect(got.map((m) => m.toString('latin1'))).toEqual(msgs.map((m) => m.toString('latin1')));
  });

  it('hands out messages that stay intact when later chunks arrive', () => {
    const framer = new FrontendFramer(1 << 16);
    const kept: Buffer[] = [];
    const a = message('Q', Buffer.from('SELECT 1\0'));
    const b = message('Q', Buffer.alloc(5000, 0x61));
    const stream = Buffer.concat([a, b, a]);
    // a whole, b split over three chunks, then a again
    for (const c of [stream.subarray(0, a.length + 3), stream.subarray(a.length + 3, a.length + 2000), stream.subarray(a.length + 2000)]) {
      framer.push(c, (_t, m) => kept.push(m));
    }
    expect(kept.length).toBe(3);
    expect(kept[0].equals(a)).toBe(true);
    expect(kept[1].equals(b)).toBe(true);
    expect(kept[2].equals(a)).toBe(true);
  });

  it('accepts a message of exactly maxMessageBytes and refuses one byte more', () => {
    const max = 4096;
    const exact = message('d', Buffer.alloc(max - 5, 1));
    expect(exact.length).toBe(max);
    expect(feed(new FrontendFramer(max), [exact]).length).toBe(1);
    const over = message('d', Buffer.alloc(max - 4, 1));
    const err = violation(() => feed(new FrontendFramer(max), [over.subarray(0, 5)]));
    expect(err.reason).toBe('too_large');
  });
});

describe('FrontendFramer.pushRanges', () => {
  it('hands on each message as a range of the read it came in, and an assembled one whole', () => {
    const a = message('P', Buffer.from('\0SELECT 1\0\0\0'));
    const b = message('B', Buffer.alloc(8));
    const s = message('S', Buffer.alloc(0));
    const read1 = Buffer.concat([a, b, s.subarray(0, 2)]);
    const read2 = s.subarray(2);
    const framer = new FrontendFramer(1024);
    const got: { type: number; bytes: Buffer; start: number; end: number }[] = [];
    for (const read of [read1, read2]) framer.pushRanges(read, (type, bytes, start, end) => got.push({ type, bytes, start, end }));
    expect(got.map((g) => String.fromCharCode(g.type))).toEqual(['P', 'B', 'S']);
    expect(got[0]).toMatchObject({ bytes: read1, start: 0, end: a.length });
    expect(got[1]).toMatchObject({ bytes: read1, start: a.length, end: a.length + b.length });
    expect(got[2].bytes.equals(s)).toBe(true);
    expect(got[2]).toMatchObject({ start: 0, end: s.length });
  });
});

describe('FrontendFramer rejects bad input', () => {
  it('rejects an invalid type byte after delivering the messages before it', () => {
    for (const bad of [0x00, 0x41 /* A */, 0x7a /* z */, 0xff, 0x71 /* q */]) {
      const framer = new FrontendFramer(1024);
      const got: number[] = [];
      const err = violation(() =>
        framer.push(Buffer.concat([message('S', Buffer.alloc(0)), message(bad, Buffer.alloc(3))]), (t) => got.push(t)),
      );
      expect(err.reason).toBe('bad_type');
      expect(got).toEqual([0x53]);
    }
  });

  it('rejects lengths below 4, negative lengths, and lengths beyond the limit', () => {
    for (const [len, reason] of [
      [0, 'bad_length'],
      [3, 'bad_length'],
      [-1, 'bad_length'],
      [-0x80000000, 'bad_length'],
      [1025, 'too_large'],
    ] as const) {
      const head = Buffer.alloc(5);
      head[0] = 0x51;
      head.writeInt32BE(len, 1);
      expect(violation(() => feed(new FrontendFramer(1024), [head])).reason, `length ${len}`).toBe(reason);
    }
  });

  it('detects a bad header even when it arrives one byte at a time', () => {
    const head = Buffer.from([0x51, 0x7f, 0xff, 0xff, 0xff]);
    const framer = new FrontendFramer(1 << 20);
    for (let i = 0; i < 4; i++) framer.push(head.subarray(i, i + 1), () => undefined);
    expect(framer.bufferedBytes).toBe(4);
    expect(violation(() => framer.push(head.subarray(4), () => undefined)).reason).toBe('too_large');
  });

  it('refuses a 2 GiB length without allocating for it', () => {
    const sizes: number[] = [];
    const wrap = <K extends 'alloc' | 'allocUnsafe' | 'allocUnsafeSlow'>(name: K) => {
      const original = Buffer[name].bind(Buffer) as (size: number, ...rest: unknown[]) => Buffer;
      vi.spyOn(Buffer, name).mockImplementation(((size: number, ...rest: unknown[]) => {
        sizes.push(size);
        return original(size, ...rest);
      }) as never);
    };
    wrap('alloc');
    wrap('allocUnsafe');
    wrap('allocUnsafeSlow');
    const before = process.memoryUsage().arrayBuffers;
    // The largest limit the schema allows (1 GiB), and a header claiming 2 GiB - 1.
    const framer = new FrontendFramer(1 << 30);
    const head = Buffer.from([0x51, 0x7f, 0xff, 0xff, 0xff, 0x53, 0x45, 0x4c]);
    const err = violation(() => framer.push(head, () => undefined));
    expect(err.reason).toBe('too_large');
    expect(err.message).toMatch(/2147483648 bytes exceeds the limit of 1073741824/);
    expect(Math.max(0, ...sizes)).toBeLessThan(1 << 16);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(16 << 20);
    expect(framer.bufferedBytes).toBe(0);
  });

  it('allocates for a large allowed message only once, not per chunk', () => {
    const sizes: number[] = [];
    const original = Buffer.allocUnsafe.bind(Buffer);
    const body = Buffer.alloc(300_000, 0x62);
    const msg = message('d', body);
    const chunks = split(msg, prng(SEED ^ 0x5eed), 50).filter((c) => c.length > 0);
    const framer = new FrontendFramer(1 << 20);
    vi.spyOn(Buffer, 'allocUnsafe').mockImplementation((size: number) => {
      sizes.push(size);
      return original(size);
    });
    vi.spyOn(Buffer, 'concat');
    const got = feed(framer, chunks);
    expect(got.length).toBe(1);
    expect(got[0].equals(msg)).toBe(true);
    // one buffer of the message's size; concatenation only for a header split across chunks
    expect(sizes.filter((s) => s >= 100_000)).toEqual([msg.length]);
    expect((Buffer.concat as unknown as { mock: { calls: unknown[] } }).mock.calls.length).toBeLessThanOrEqual(2);
  });
});
