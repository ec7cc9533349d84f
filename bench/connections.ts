/**
 * Connection cost: N clients open sessions (startup + authentication until ReadyForQuery)
 * through a middle process and then stay idle. Reports the time to open a session (p50, p99)
 * and the middle's resident memory before and with all N idle, i.e. memory per idle session.
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { median, percentile } from './stats.js';
import { processTree, sleep } from './procs.js';

export interface IdleSessionResult {
  name: string;
  clients: number;
  opened: number;
  failures: number;
  firstFailure?: string;
  openMsP50: number;
  openMsP99: number;
  rssBeforeMiB: number;
  rssIdleMiB: number;
  /** Proportional set size: shared pages (the node binary, mapped by every worker) divided among their sharers. */
  pssBeforeMiB: number;
  pssIdleMiB: number;
  kibPerSession: number;
}

/**
 * Resident set (VmRSS) of a process and its descendants (with BENCH_WORKERS > 1: the proxy's
 * supervisor and its workers), MiB; NaN when the process itself cannot be read.
 */
export function rssMiB(pid: number | null | undefined): number {
  if (!pid) return NaN;
  let total = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      if (m) total += Number(m[1]) / 1024;
      else if (p === pid) return NaN;
    } catch {
      if (p === pid) return NaN;
    }
  }
  return total;
}

/**
 * Proportional set size (Pss from /proc/PID/smaps_rollup) of a process and its descendants, MiB:
 * what the processes together hold, each page shared by k processes counted 1/k in each. The
 * RSS sum counts the Node.js binary's code, shared by the supervisor and every worker, once per
 * process. NaN when unavailable.
 */
export function pssMiB(pid: number | null | undefined): number {
  if (!pid) return NaN;
  let total = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /^Pss:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${p}/smaps_rollup`, 'utf8'));
      if (m) total += Number(m[1]) / 1024;
      else if (p === pid) return NaN;
    } catch {
      if (p === pid) return NaN;
    }
  }
  return total;
}

export async function measureIdleSessions(
  name: string,
  config: pg.ClientConfig,
  pid: number | null | undefined,
  clients: number,
  batch: number,
): Promise<IdleSessionResult> {
  await sleep(500);
  const rssBefore = rssMiB(pid);
  const pssBefore = pssMiB(pid);
  const open: pg.Client[] = [];
  const times: number[] = [];
  let failures = 0;
  let firstFailure: string | undefined;
  try {
    for (let start = 0; start < clients; start += batch) {
      const n = Math.min(batch, clients - start);
      await Promise.all(
        Array.from({ length: n }, async () => {
          // A connect that cannot finish counts as failed instead of stalling the benchmark.
          const c = new pg.Client({ connectionTimeoutMillis: 30_000, ...config });
          c.on('error', () => undefined);
          const t0 = process.hrtime.bigint();
          try {
            await c.connect();
            times.push(Number(process.hrtime.bigint() - t0) / 1e6);
            open.push(c);
          } catch (err) {
            failures++;
            firstFailure ??= (err as Error).message;
          }
        }),
      );
    }
    await sleep(1000);
    const rssIdle = rssMiB(pid);
    const pssIdle = pssMiB(pid);
    return {
      name,
      clients,
      opened: open.length,
      failures,
      firstFailure,
      openMsP50: median(times),
      openMsP99: percentile(times, 99),
      rssBeforeMiB: rssBefore,
      rssIdleMiB: rssIdle,
      pssBeforeMiB: pssBefore,
      pssIdleMiB: pssIdle,
      kibPerSession: open.length > 0 ? ((rssIdle - rssBefore) * 1024) / open.length : NaN,
    };
  } finally {
    await Promise.all(open.map((c) => c.end().catch(() => undefined)));
  }
}
