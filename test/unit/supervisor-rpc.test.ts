import { describe, expect, it } from 'vitest';
import { Rpc } from '../../src/supervisor/rpc.js';
import { offerCancel } from '../../src/supervisor/cancel-relay.js';
import type { RpcMessage } from '../../src/supervisor/messages.js';

/** Two ends wired to each other through JSON, as node's IPC channel carries them. */
function pair(serveB: (op: string) => unknown, deliver = true) {
  let a: Rpc;
  let b: Rpc;
  const wire = (to: () => Rpc) => (msg: RpcMessage) => {
    const copy = JSON.parse(JSON.stringify(msg));
    if (deliver) setImmediate(() => to().handle(copy));
  };
  a = new Rpc(wire(() => b), () => {
    throw new Error('a serves nothing');
  });
  b = new Rpc(wire(() => a), serveB);
  return { a, b };
}

describe('supervisor IPC request/reply', () => {
  it('answers a request with the served value, and an error with its message', async () => {
    const { a } = pair(async (op) => {
      if (op === 'sessions') return [{ id: 'x', worker: 7 }];
      throw new Error(`unknown request ${op}`);
    });
    expect(await a.request('sessions', 1000)).toEqual([{ id: 'x', worker: 7 }]);
    await expect(a.request('nope', 1000)).rejects.toThrow('unknown request nope');
  });

  it('fails a request nobody answers after its timeout, and open requests when the other side goes', async () => {
    const { a } = pair(() => 1, false);
    const started = Date.now();
    await expect(a.request('metrics', 100)).rejects.toThrow(/no answer to "metrics" within 100 ms/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(90);
    const open = a.request('metrics', 10_000);
    a.close('worker exited');
    await expect(open).rejects.toThrow('worker exited');
  });

  it('ignores messages that are not its own', () => {
    const { a } = pair(() => 1);
    expect(a.handle({ pgbg: 'cancel' })).toBe(false);
  });
});

describe('cancel relay', () => {
  it('offers a CancelRequest to every worker but the one it arrived at', () => {
    const seen: [number, number, number][] = [];
    const workers = [1, 2, 3].map((id) => ({ id, offer: (pid: number, key: number) => seen.push([id, pid, key]) }));
    offerCancel(workers, 2, 1234, -5);
    expect(seen).toEqual([
      [1, 1234, -5],
      [3, 1234, -5],
    ]);
    offerCancel(workers, 1, 1.5, 2);
    expect(seen).toHaveLength(2);
  });
});
