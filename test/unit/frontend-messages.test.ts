import { describe, expect, it } from 'vitest';
import { nulFrom, parseLayout, querySqlEnd, readBind, readParse, readQuery } from '../../src/protocol/frontend-messages.js';
import { bind, parse, query } from '../../src/protocol/frontend-writer.js';
import { mayHoldHint } from '../../src/rules/hint.js';
import { frame as framed } from '../support/wire.js';
import { parameterDescription } from '../../src/protocol/backend-messages.js';
import { FrontendFramer, STREAM_MIN_BYTES } from '../../src/protocol/frontend-framer.js';

describe('parameter counts are unsigned 16-bit (up to 65,535)', () => {
  it('reads and writes a Parse with 40,000 parameter types', () => {
    const types = Array.from({ length: 40_000 }, (_, i) => (i % 2 ? 23 : 25));
    const msg = parse('s1', 'SELECT 1', types);
    expect(msg.readUInt16BE(5 + 3 + 9)).toBe(40_000);
    const read = readParse(msg);
    expect(read.paramTypes).toHaveLength(40_000);
    expect(read.paramTypes[39_999]).toBe(23);
  });

  it('reads and writes a Bind with 65,535 values and formats', () => {
    const values = Array.from({ length: 65_535 }, (_, i) => (i === 7 ? null : String(i)));
    const formats = new Array(65_535).fill(0);
    const read = readBind(bind('', 's1', values, formats));
    expect(read.params).toHaveLength(65_535);
    expect(read.paramFormats).toHaveLength(65_535);
    expect(read.params[7]).toBeNull();
    expect(read.params[65_534]!.toString()).toBe('65534');
  });

  it('writes a ParameterDescription with 40,000 types', () => {
    const msg = parameterDescription(new Array(40_000).fill(23));
    expect(msg.readUInt16BE(5)).toBe(40_000);
  });
});

describe('large messages in pieces', () => {
  function message(type: string, bodyLength: number): Buffer {
    const out = Buffer.alloc(5 + bodyLength, 0x61);
    out[0] = type.charCodeAt(0);
    out.writeInt32BE(4 + bodyLength, 1);
    return out;
  }

  it('hands a large message the sink wants on in the pieces it arrived in, then frames the next message', () => {
    const framer = new FrontendFramer(64 * 1024 * 1024);
    const big = message('B', STREAM_MIN_BYTES * 2);
    const small = message('S', 0);
    const stream = Buffer.concat([message('S', 0), big, small]);
    const whole: string[] = [];
    const pieces: { type: string; length: number; first: boolean; last: boolean }[] = [];
    const sink = {
      wants: (type: number, total: number) => {
        expect(total).toBe(big.length);
        return type === 0x42;
      },
      piece: (type: number, bytes: Buffer, first: boolean, last: boolean) => pieces.push({ type: String.fromCharCode(type), length: bytes.length, first, last }),
    };
    for (let i = 0; i < stream.length; i += 65536) framer.push(stream.subarray(i, i + 65536), (t) => whole.push(String.fromCharCode(t)), sink);
    expect(whole).toEqual(['S', 'S']);
    expect(pieces.reduce((n, p) => n + p.length, 0)).toBe(big.length);
    expect(pieces[0].first).toBe(true);
    expect(pieces.filter((p) => p.last)).toHaveLength(1);
    expect(pieces[pieces.length - 1].last).toBe(true);
    expect(framer.midStream).toBe(false);
    expect(framer.bufferedBytes).toBe(0);
  });

  it('assembles a large message the sink does not want, and every message below the threshold', () => {
    const framer = new FrontendFramer(64 * 1024 * 1024);
    const big = message('Q', STREAM_MIN_BYTES * 2);
    const out: Buffer[] = [];
    const sink = { wants: () => false, piece: () => expect.fail('no piece expected') };
    for (let i = 0; i < big.length; i += 65536) framer.push(big.subarray(i, i + 65536), (_t, m) => out.push(Buffer.from(m)), sink);
    expect(out).toHaveLength(1);
    expect(out[0].equals(big)).toBe(true);
  });
});

describe('reading a statement without decoding it (the path of unhinted statements)', () => {
  it('finds the SQL of a well-formed Query and refuses any other (the full reader then names the fault)', () => {
    const q = query('SELECT 1');
    expect(querySqlEnd(q)).toBe(q.length - 1);
    expect(q.toString('utf8', 5, querySqlEnd(q))).toBe(readQuery(q));
    expect(querySqlEnd(framed('Q', Buffer.from('SELECT 1')))).toBe(-1); // unterminated
    expect(querySqlEnd(framed('Q', Buffer.from('SELECT 1\0junk')))).toBe(-1); // bytes after the text
    expect(querySqlEnd(framed('Q', Buffer.from('SELECT 1\0\0')))).toBe(-1);
    expect(() => readQuery(framed('Q', Buffer.from('SELECT 1\0junk')))).toThrow(/length does not match/);
  });

  it('finds the name and SQL of a well-formed Parse, with its parameter types, and refuses any other', () => {
    const p = parse('s1', 'SELECT $1', [23]);
    const layout = parseLayout(p)!;
    expect(p.toString('utf8', 5, layout.nameEnd)).toBe('s1');
    expect(p.toString('utf8', layout.nameEnd + 1, layout.sqlEnd)).toBe('SELECT $1');
    expect(parseLayout(parse('', 'SELECT 1'))).not.toBeNull();
    // a type count that does not match the bytes, a missing count, an unterminated text
    const wrongCount = Buffer.from(p);
    wrongCount.writeUInt16BE(2, layout.sqlEnd + 1);
    expect(parseLayout(wrongCount)).toBeNull();
    expect(() => readParse(wrongCount)).toThrow();
    expect(parseLayout(framed('P', Buffer.from('s1\0SELECT 1\0')))).toBeNull();
    expect(parseLayout(framed('P', Buffer.from('s1\0SELECT 1')))).toBeNull();
    expect(parseLayout(framed('P', Buffer.from('s1')))).toBeNull();
  });

  it('finds the first zero byte as the native indexOf does, in short and long texts', () => {
    // Up to 512 bytes from the start a loop searches, beyond it the native search: they must agree.
    for (const size of [0, 1, 6, 511, 512, 513, 517, 1030, 5000]) {
      const text = Buffer.alloc(size, 'x');
      for (const from of [0, 5, 511, 512, 513]) expect(nulFrom(text, from), `none, size ${size} from ${from}`).toBe(-1);
      for (const at of [0, 4, 5, 300, 511, 512, 516, 517, 518, 1029, size - 1]) {
        if (at < 0 || at >= size) continue;
        const withNul = Buffer.from(text);
        withNul[at] = 0;
        if (at + 7 < size) withNul[at + 7] = 0; // a later zero must not be the answer
        for (const from of [0, 5, at, at + 1]) {
          expect(nulFrom(withNul, from), `size ${size} zero at ${at} from ${from}`).toBe(withNul.indexOf(0, from));
        }
      }
    }
  });

  it('sees a hint opening only within the given range of bytes', () => {
    const q = query('/*+ background */ SELECT 1');
    expect(mayHoldHint(q, 5, q.length - 1)).toBe(true);
    expect(mayHoldHint(q, 6, q.length - 1)).toBe(false);
    expect(mayHoldHint(q, 5, 7)).toBe(false); // "/*" only
    expect(mayHoldHint(query('SELECT 1 /* plain */'), 5, 25)).toBe(false);
    const latin1 = Buffer.from('SELECT \'é\' /*+ background */', 'latin1');
    expect(mayHoldHint(latin1, 0, latin1.length)).toBe(true);
  });

  it('finds a hint opening the same way in short and long statements, up to the range end', () => {
    // Long texts take the native search, short ones a loop: both must agree at every position.
    for (const size of [8, 300, 511, 512, 513, 4000]) {
      const text = Buffer.alloc(size, 'x');
      expect(mayHoldHint(text, 0, size)).toBe(false);
      for (const at of [0, Math.floor(size / 2), size - 3]) {
        const withHint = Buffer.from(text);
        withHint.write('/*+', at, 'latin1');
        expect(mayHoldHint(withHint, 0, size)).toBe(true);
        expect(mayHoldHint(withHint, 0, at + 2)).toBe(false); // the range ends inside the opening
        expect(mayHoldHint(withHint, at + 1, size)).toBe(false); // the range starts after it
      }
    }
  });
});
