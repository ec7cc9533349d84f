/**
 * An idle proxy sleeps. Every timer a process keeps is a wake-up (an epoll return, a voluntary
 * context switch of its main thread) whether or not any client is there, and under load those
 * wake-ups are CPU taken from relaying. prom-client samples the event-loop lag with a 10 ms timer
 * by default: 100 wake-ups a second, 1.35% of a core with nothing to do (measured). Counted from
 * /proc: the main thread's voluntary context switches over a quiet period, in every process of
 * the proxy (the supervisor and its workers with PGBG_WORKERS=2).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { eventually, getCluster } from '../harness/index.js';
import { startChildProxy, type ChildProxy } from '../support/child-proxy.js';
import { testWorkers } from '../support/proxy.js';

const cluster = getCluster();
let proxy: ChildProxy;

beforeAll(async () => {
  proxy = await startChildProxy(['--upstream', `${cluster.host}:${cluster.port}`, '--log-level', 'warn']);
  const workers = testWorkers();
  if (workers > 1) await eventually(async () => proxy.relayPids().length === workers && !proxy.relayPids().includes(proxy.child.pid!), 20_000);
});
afterAll(async () => {
  await proxy?.kill('SIGKILL');
});

/** Voluntary context switches of a process's main thread (its event loop). */
function wakeUps(pid: number): number {
  return Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/task/${pid}/status`, 'utf8'))![1]);
}

describe('an idle proxy', () => {
  it('wakes its event loop fewer than 40 times a second in each process', async () => {
    // A session opened and closed first: the proxy has served, then goes quiet.
    const c = new pg.Client({ ...cluster.clientConfig({ user: 'alice' }), port: proxy.port });
    await c.connect();
    await c.query('SELECT 1');
    await c.end();
    await new Promise((r) => setTimeout(r, 1500));
    const pids = [...new Set([proxy.child.pid!, ...proxy.relayPids()])];
    const before = pids.map(wakeUps);
    const seconds = 5;
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const rates = pids.map((pid, i) => (wakeUps(pid) - before[i]) / seconds);
    console.log(`[idle] main-thread wake-ups per second: ${rates.map((r) => r.toFixed(1)).join(', ')}`);
    // Measured: about 10 a second in each process now, 97 with the 10 ms timer.
    for (const rate of rates) expect(rate).toBeLessThan(40);
  });
});
