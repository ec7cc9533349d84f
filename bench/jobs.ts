/**
 * "Time to job id": how long a client waits, per statement, between sending a hinted statement
 * through the proxy and receiving the job-id row, compared with launching the same SQL straight
 * through pg_background on a direct connection (launch + detach in one statement, which is what
 * the proxy's pgbg.submit_and_launch also does for a transactional job; without the detach a
 * session stops at pg_background.max_workers = 16 tracked workers).
 */
import pg from 'pg';
import { mean, median, percentile, min, max } from './stats.js';
import { sleep } from './procs.js';

export interface JobBenchConfig {
  proxy: pg.ClientConfig;
  direct: pg.ClientConfig;
  /** Direct superuser connection used to wait for workers and jobs to finish. */
  monitor: pg.ClientConfig;
  /** Statements per kind in the sequential part. */
  count: number;
  /** Sequential statements per alternating block. */
  block: number;
  /** Clients in the concurrent part. */
  concurrency: number;
  /** Statements per client per concurrent round (two rounds per kind, ABBA order). */
  perClient: number;
  /** The SQL a job runs. */
  jobSql: string;
}

export interface LatencySummary {
  n: number;
  errors: number;
  firstError?: string;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  minMs: number;
  maxMs: number;
  /** Statements per second when sent one after another (n / sum of round trips). */
  sequentialPerSecond: number;
}

export interface ConcurrentSummary {
  clients: number;
  jobs: number;
  errors: number;
  firstError?: string;
  seconds: number;
  /** Statements answered per second (job ids handed out). */
  perSecond: number;
  /** Seconds from the first statement until every job had finished (no job queued or running, no worker left). */
  secondsToDone: number;
  /** Jobs finished per second: jobs / secondsToDone. */
  donePerSecond: number;
}

export type Kind = 'proxy' | 'direct';

export interface JobBenchResult {
  /** Why the proxy (hinted) half was skipped, if it was. */
  proxySkipped?: string;
  proxyStatement: string;
  directStatement: string;
  proxySampleRow?: Record<string, unknown>;
  sequential: Partial<Record<Kind, LatencySummary>>;
  concurrent: Partial<Record<Kind, ConcurrentSummary>>;
  /** Longest wait for workers/jobs to finish between blocks, ms. */
  maxDrainMs: number;
  drainTimeouts: number;
  /** Job states in pgbg.jobs after the part (filled in by the caller). */
  registryStates?: Record<string, number>;
}

function dollarQuote(sql: string): string {
  let tag = 'q';
  while (sql.includes(`$${tag}$`)) tag += 'q';
  return `$${tag}$${sql}$${tag}$`;
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

async function connect(cfg: pg.ClientConfig, name: string): Promise<pg.Client> {
  const client = new pg.Client({ ...cfg, application_name: name });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/**
 * Waits until no pg_background worker runs and no job is queued or running.
 * Returns the time waited (ms) and whether it timed out.
 */
export async function drain(monitor: pg.Client, timeoutMs = 60_000): Promise<{ ms: number; timedOut: boolean; left: string }> {
  const t0 = nowMs();
  const hasRegistry = (await monitor.query(`SELECT to_regclass('pgbg.jobs') IS NOT NULL AS ok`)).rows[0].ok as boolean;
  // Launchers (pgbg.run_launcher) are pg_background workers too, but idle ones are no job.
  const sql = `SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_background' AND query NOT LIKE 'CALL pgbg.run_launcher(%')::int AS workers, ${
    hasRegistry ? `(SELECT count(*) FROM pgbg.jobs WHERE state IN ('queued', 'running'))::int` : '0'
  } AS active`;
  for (;;) {
    const r = (await monitor.query(sql)).rows[0] as { workers: number; active: number };
    if (r.workers === 0 && r.active === 0) return { ms: nowMs() - t0, timedOut: false, left: '' };
    if (nowMs() - t0 > timeoutMs) return { ms: nowMs() - t0, timedOut: true, left: `${r.workers} workers, ${r.active} jobs queued/running` };
    await sleep(20);
  }
}

function summarize(samples: number[], errors: number, firstError: string | undefined): LatencySummary {
  const total = samples.reduce((a, b) => a + b, 0);
  return {
    n: samples.length,
    errors,
    firstError,
    p50Ms: median(samples),
    p99Ms: percentile(samples, 99),
    meanMs: mean(samples),
    minMs: min(samples),
    maxMs: max(samples),
    sequentialPerSecond: samples.length > 0 ? samples.length / (total / 1000) : NaN,
  };
}

export async function runJobBench(cfg: JobBenchConfig, log: (line: string) => void): Promise<JobBenchResult> {
  const proxyStatement = `/*+ background */ ${cfg.jobSql}`;
  const directStatement = `SELECT h.pid, h.cookie, pg_background_detach_v2(h.pid, h.cookie) FROM pg_background_submit_v2(${dollarQuote(cfg.jobSql)}) h`;
  const result: JobBenchResult = { proxyStatement, directStatement, sequential: {}, concurrent: {}, maxDrainMs: 0, drainTimeouts: 0 };

  const monitor = await connect(cfg.monitor, 'pgbg-bench monitor');
  const clients: pg.Client[] = [monitor];
  try {
    const settle = async () => {
      const d = await drain(monitor);
      result.maxDrainMs = Math.max(result.maxDrainMs, d.ms);
      if (d.timedOut) {
        result.drainTimeouts++;
        log(`  warning: jobs still active after ${Math.round(d.ms)} ms (${d.left}); continuing`);
      }
    };

    const kinds: Kind[] = [];
    const conns: Partial<Record<Kind, pg.Client>> = {};
    // Probe the hinted path once: the submission path may not be finished.
    try {
      const proxyClient = await connect(cfg.proxy, 'pgbg-bench');
      clients.push(proxyClient);
      const r = await proxyClient.query(proxyStatement);
      result.proxySampleRow = r.rows[0];
      log(`  probe through the proxy: ${proxyStatement} -> ${JSON.stringify(r.rows[0])} (columns: ${r.fields.map((f) => f.name).join(', ')})`);
      if (r.rows.length !== 1) throw new Error(`expected one job-id row, got ${r.rows.length} rows`);
      conns.proxy = proxyClient;
      kinds.push('proxy');
    } catch (err) {
      const e = err as Error & { code?: string };
      result.proxySkipped = `${e.code ? `[${e.code}] ` : ''}${e.message}`;
      log(`  hinted statement through the proxy failed, skipping the proxy half: ${result.proxySkipped}`);
    }
    const directClient = await connect(cfg.direct, 'pgbg-bench');
    clients.push(directClient);
    await directClient.query(directStatement); // probe (throws if pg_background is unusable)
    conns.direct = directClient;
    kinds.push('direct');
    await settle();

    // Sequential, alternating blocks.
    const samples: Record<Kind, number[]> = { proxy: [], direct: [] };
    const errors: Record<Kind, number> = { proxy: 0, direct: 0 };
    const firstError: Partial<Record<Kind, string>> = {};
    const blocks = Math.ceil(cfg.count / cfg.block);
    for (let b = 0; b < blocks; b++) {
      // ABBA within each pair of blocks, so neither kind always goes first.
      const order = b % 2 === 0 ? kinds : [...kinds].reverse();
      for (const kind of order) {
        const client = conns[kind]!;
        const sql = kind === 'proxy' ? proxyStatement : directStatement;
        const n = Math.min(cfg.block, cfg.count - b * cfg.block);
        for (let i = 0; i < n; i++) {
          const t0 = nowMs();
          try {
            await client.query(sql);
            samples[kind].push(nowMs() - t0);
          } catch (err) {
            errors[kind]++;
            firstError[kind] ??= (err as Error).message;
          }
        }
        await settle();
      }
    }
    for (const kind of kinds) result.sequential[kind] = summarize(samples[kind], errors[kind], firstError[kind]);

    // Concurrent: `concurrency` clients per kind, each sending perClient statements back to back.
    const pools: Partial<Record<Kind, pg.Client[]>> = {};
    for (const kind of kinds) {
      pools[kind] = [];
      for (let i = 0; i < cfg.concurrency; i++) {
        const c = await connect(kind === 'proxy' ? cfg.proxy : cfg.direct, 'pgbg-bench');
        clients.push(c);
        pools[kind]!.push(c);
      }
    }
    const acc: Record<Kind, ConcurrentSummary> = {
      proxy: { clients: cfg.concurrency, jobs: 0, errors: 0, seconds: 0, perSecond: NaN, secondsToDone: 0, donePerSecond: NaN },
      direct: { clients: cfg.concurrency, jobs: 0, errors: 0, seconds: 0, perSecond: NaN, secondsToDone: 0, donePerSecond: NaN },
    };
    const rounds = [...kinds, ...[...kinds].reverse()];
    for (const kind of rounds) {
      const sql = kind === 'proxy' ? proxyStatement : directStatement;
      const t0 = nowMs();
      await Promise.all(
        pools[kind]!.map(async (c) => {
          for (let i = 0; i < cfg.perClient; i++) {
            try {
              await c.query(sql);
              acc[kind].jobs++;
            } catch (err) {
              acc[kind].errors++;
              acc[kind].firstError ??= (err as Error).message;
            }
          }
        }),
      );
      acc[kind].seconds += (nowMs() - t0) / 1000;
      await settle();
      acc[kind].secondsToDone += (nowMs() - t0) / 1000;
    }
    for (const kind of kinds) {
      acc[kind].perSecond = acc[kind].jobs / acc[kind].seconds;
      acc[kind].donePerSecond = acc[kind].jobs / acc[kind].secondsToDone;
      result.concurrent[kind] = acc[kind];
    }
    return result;
  } finally {
    for (const c of clients.reverse()) await c.end().catch(() => undefined);
  }
}
