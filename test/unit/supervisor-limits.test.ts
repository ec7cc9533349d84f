import { describe, expect, it } from 'vitest';
import { SlotLedger } from '../../src/supervisor/client-slots.js';
import { workerExecArgv } from '../../src/supervisor/primary.js';

describe('SlotLedger (limits.maxClients across workers)', () => {
  it('admits up to the limit over all workers, frees a released slot, and forgets a dead worker\'s', () => {
    const ledger = new SlotLedger();
    expect(ledger.take(1, 3)).toBe(true);
    expect(ledger.take(2, 3)).toBe(true);
    expect(ledger.take(2, 3)).toBe(true);
    expect(ledger.take(1, 3)).toBe(false);
    expect(ledger.take(2, 3)).toBe(false);
    ledger.release(1);
    expect(ledger.total).toBe(2);
    expect(ledger.take(2, 3)).toBe(true);
    ledger.forget(2);
    expect(ledger.total).toBe(0);
    // a release from a worker holding nothing never makes room that is not there
    ledger.release(1);
    expect(ledger.take(1, 1)).toBe(true);
    expect(ledger.take(2, 1)).toBe(false);
  });

  it('a lower limit after a reload refuses new sessions until enough have closed', () => {
    const ledger = new SlotLedger();
    for (let i = 0; i < 4; i++) expect(ledger.take(i % 2, 10)).toBe(true);
    expect(ledger.take(0, 2)).toBe(false);
    ledger.release(0);
    ledger.release(1);
    expect(ledger.take(1, 2)).toBe(false);
    ledger.release(0);
    expect(ledger.take(1, 2)).toBe(true);
  });
});

describe('workerExecArgv', () => {
  it('caps the young generation of the workers', () => {
    expect(workerExecArgv(['--enable-source-maps'], undefined)).toEqual(['--enable-source-maps', '--max-semi-space-size=4']);
  });
  it('leaves an operator\'s own setting alone', () => {
    expect(workerExecArgv(['--max-semi-space-size=16'], undefined)).toEqual(['--max-semi-space-size=16']);
    expect(workerExecArgv([], '--max-old-space-size=512 --max-semi-space-size=8')).toEqual([]);
  });
});
