import { describe, expect, it } from 'vitest';
import { OutboundBatch } from '../../src/session/outbound-batch.js';

function drained(batch: OutboundBatch): Buffer[] {
  const out: Buffer[] = [];
  batch.drainTo((b) => out.push(b));
  return out;
}

describe('OutboundBatch', () => {
  it('writes adjacent slices of one chunk as one buffer over the same memory', () => {
    const chunk = Buffer.from('PPPPPBBBBDDDEESS');
    const batch = new OutboundBatch();
    batch.add(chunk.subarray(0, 5));
    batch.add(chunk.subarray(5, 9));
    batch.add(chunk.subarray(9, 12));
    batch.add(chunk.subarray(12, 16));
    expect(batch.empty).toBe(false);
    const out = drained(batch);
    expect(out).toHaveLength(1);
    expect(out[0].toString()).toBe('PPPPPBBBBDDDEESS');
    // not a copy: a change to the chunk shows through
    chunk[0] = 0x58;
    expect(out[0][0]).toBe(0x58);
    expect(batch.empty).toBe(true);
    expect(drained(batch)).toHaveLength(0);
  });

  it('writes ranges that make up a whole read as the read itself', () => {
    const chunk = Buffer.from('PPPPPBBBBDDDEESS');
    const batch = new OutboundBatch();
    batch.addRange(chunk, 0, 5);
    batch.addRange(chunk, 5, 9);
    batch.addRange(chunk, 9, 16);
    const out = drained(batch);
    expect(out).toHaveLength(1);
    expect(out[0]).toBe(chunk);
  });

  it('joins a sliced message and the ranges of its read around it into one view of the read', () => {
    const chunk = Buffer.from('PPPPPBBBBDDDEESS');
    const batch = new OutboundBatch();
    batch.add(chunk.subarray(0, 5)); // a Parse the session read as a Buffer of its own
    batch.addRange(chunk, 5, 9);
    batch.add(chunk.subarray(9, 12));
    batch.addRange(chunk, 12, 14);
    const out = drained(batch);
    expect(out).toHaveLength(1);
    expect(out[0].toString()).toBe('PPPPPBBBBDDDEE');
    expect(out[0].buffer).toBe(chunk.buffer);
    expect(out[0].byteOffset).toBe(chunk.byteOffset);
  });

  it('keeps ranges with a gap between them, or out of order, as separate writes', () => {
    const chunk = Buffer.from('aaaaBBBBcccc');
    const batch = new OutboundBatch();
    batch.addRange(chunk, 0, 4);
    batch.addRange(chunk, 8, 12);
    batch.addRange(chunk, 4, 8);
    batch.addRange(chunk, 8, 10);
    expect(drained(batch).map((x) => x.toString())).toEqual(['aaaa', 'cccc', 'BBBBcc']);
  });

  it('passes a lone buffer on as the same object', () => {
    const msg = Buffer.from('Q\0\0\0\x09abcd');
    const batch = new OutboundBatch();
    batch.add(msg);
    const out = drained(batch);
    expect(out).toHaveLength(1);
    expect(out[0]).toBe(msg);
  });

  it('keeps gaps, other chunks and reordering as separate writes, in order', () => {
    const a = Buffer.from('aaaaBBBBcccc');
    const b = Buffer.from('xxxx');
    const batch = new OutboundBatch();
    batch.add(a.subarray(0, 4));
    batch.add(a.subarray(8, 12)); // a gap: bytes 4-8 were held back
    batch.add(b);
    batch.add(a.subarray(4, 8)); // behind what came before it in the chunk
    batch.add(a.subarray(8, 10)); // adjacent to the one before
    const out = drained(batch).map((x) => x.toString());
    expect(out).toEqual(['aaaa', 'cccc', 'xxxx', 'BBBBcc']);
  });

  it('may be filled again while its buffers are written', () => {
    const batch = new OutboundBatch();
    const written: string[] = [];
    batch.add(Buffer.from('one'));
    batch.add(Buffer.from('two'));
    batch.drainTo((buf) => {
      written.push(buf.toString());
      if (written.length === 1) batch.add(Buffer.from('later'));
    });
    expect(written).toEqual(['one', 'two']);
    expect(drained(batch).map((x) => x.toString())).toEqual(['later']);
  });
});
