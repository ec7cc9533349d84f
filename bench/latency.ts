/**
 * Added latency per query: one client, one connection per target, `SELECT 1` over the simple
 * protocol sent one after another, each timed from send to ReadyForQuery. Targets rotate between
 * rounds so that drift on the machine spreads over all of them; the added time of a middle
 * (proxy, PgBouncer, bare relay) is its percentile minus the direct connection's.
 */
import pg from 'pg';
import { median, percentile } from './stats.js';

export interface LatencyTarget {
  name: string;
  config: pg.ClientConfig;
}

export interface LatencySamples {
  name: string;
  samplesMs: number[];
  p50Ms: number;
  p99Ms: number;
}

async function timeQueries(config: pg.ClientConfig, warmup: number, count: number): Promise<number[]> {
  const client = new pg.Client(config);
  await client.connect();
  try {
    for (let i = 0; i < warmup; i++) await client.query('SELECT 1');
    const out: number[] = new Array(count);
    for (let i = 0; i < count; i++) {
      const t0 = process.hrtime.bigint();
      await client.query('SELECT 1');
      out[i] = Number(process.hrtime.bigint() - t0) / 1e6;
    }
    return out;
  } finally {
    await client.end();
  }
}

export async function measureLatency(
  targets: LatencyTarget[],
  opts: { rounds: number; queries: number; warmup: number },
  log: (line: string) => void,
): Promise<LatencySamples[]> {
  const samples = new Map<string, number[]>(targets.map((t) => [t.name, []]));
  for (let round = 0; round < opts.rounds; round++) {
    const order = targets.map((_t, i) => targets[(i + round) % targets.length]!);
    const parts: string[] = [];
    for (const t of order) {
      const ms = await timeQueries(t.config, opts.warmup, opts.queries);
      samples.get(t.name)!.push(...ms);
      parts.push(`${t.name} p50 ${median(ms).toFixed(3)} ms`);
    }
    log(`  round ${round + 1}/${opts.rounds} ${parts.join(', ')}`);
  }
  return targets.map((t) => {
    const ms = samples.get(t.name)!;
    return { name: t.name, samplesMs: [], p50Ms: median(ms), p99Ms: percentile(ms, 99) };
  });
}
