/**
 * A Prometheus stand-in for the scrape-cost part: GET /metrics every intervalMs on one kept-alive
 * connection. curl (one process, `--rate`) is used when present because it costs the shared
 * 2-core machine much less CPU than a fetch loop in the benchmark's own Node process, and a real
 * Prometheus would not run on the proxy's cores either; BENCH_SCRAPER=fetch forces the fetch loop.
 */
import { spawn, spawnSync } from 'node:child_process';
import { sleep } from './procs.js';

export interface ScrapeStats {
  scrapes: number;
  errors: number;
  bytes: number;
  ms: number[];
}

export interface Scraper {
  readonly kind: 'curl' | 'fetch';
  readonly stats: ScrapeStats;
  stop(): Promise<void>;
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

export function scraperKind(): 'curl' | 'fetch' {
  if (process.env.BENCH_SCRAPER === 'fetch') return 'fetch';
  return spawnSync('curl', ['--version']).status === 0 ? 'curl' : 'fetch';
}

export function startScraper(url: string, intervalMs: number, kind = scraperKind()): Scraper {
  return kind === 'curl' ? curlScraper(url, intervalMs) : fetchScraper(url, intervalMs);
}

function curlScraper(url: string, intervalMs: number): Scraper {
  const stats: ScrapeStats = { scrapes: 0, errors: 0, bytes: 0, ms: [] };
  const perHour = Math.max(1, Math.round(3_600_000 / intervalMs));
  // A URL glob makes one curl run many sequential transfers over one connection; the
  // write-out line of each goes to stderr, the bodies to stdout (read and dropped).
  const child = spawn(
    'curl',
    ['-s', '--rate', `${perHour}/h`, '-w', '%{stderr}%{http_code} %{time_total} %{size_download}\\n', `${url}?n=[1-10000000]`],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout.resume();
  let partial = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      const [code, seconds, size] = line.trim().split(' ');
      if (code === '200') {
        stats.scrapes++;
        stats.bytes = Number(size);
        stats.ms.push(Number(seconds) * 1000);
      } else if (code) {
        stats.errors++;
      }
    }
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  return {
    kind: 'curl',
    stats,
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

function fetchScraper(url: string, intervalMs: number): Scraper {
  const stats: ScrapeStats = { scrapes: 0, errors: 0, bytes: 0, ms: [] };
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      const t0 = nowMs();
      try {
        const res = await fetch(url);
        const text = await res.text();
        if (res.ok) {
          stats.scrapes++;
          stats.bytes = Buffer.byteLength(text);
          stats.ms.push(nowMs() - t0);
        } else {
          stats.errors++;
        }
      } catch {
        stats.errors++;
      }
      if (!stopped) await sleep(Math.max(0, intervalMs - (nowMs() - t0)));
    }
  })();
  return {
    kind: 'fetch',
    stats,
    async stop() {
      stopped = true;
      await done;
    },
  };
}
