/**
 * The CPU a scraper costs, measured while nothing else runs: alternating windows of the same
 * length with and without GET /metrics every intervalMs, counting the whole machine's busy CPU
 * (/proc/stat: user, nice, system, irq, softirq, steal excluded) and the proxy process's own.
 * On a machine whose CPU is saturated by the workload (as pgbench saturates this one), the
 * machine-wide extra is an upper bound on the throughput a scraper takes away, and unlike a
 * throughput A/B it is not drowned by run-to-run noise.
 */
import os from 'node:os';
import { readFileSync } from 'node:fs';
import { cpuSeconds, sleep } from './procs.js';
import { startScraper } from './scraper.js';

export interface ScrapeCpuResult {
  windows: number;
  windowSeconds: number;
  scrapes: number;
  /** Machine CPU, milliseconds per wall second: medians without and with scraping. */
  machineMsPerSecondWithout: number;
  machineMsPerSecondWith: number;
  /** (with - without) / (cores x 1000): the share of the machine the scraping takes. */
  machineShare: number;
  /** Proxy process CPU per scrape (ms), from the with-minus-without difference. */
  proxyMsPerScrape: number;
}

function machineBusyMs(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq] = fields;
  return ((user + nice + system + irq + softirq) * 1000) / 100; // USER_HZ is 100 on Linux
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export async function measureScrapeCpu(url: string, intervalMs: number, proxyPid: number | undefined, windows: number, windowSeconds: number): Promise<ScrapeCpuResult> {
  const without: { machine: number; proxy: number }[] = [];
  const withScrape: { machine: number; proxy: number; scrapes: number }[] = [];
  // Let what the previous part left behind (autovacuum, checkpoints, exiting backends) settle.
  await sleep(5000);
  for (let i = 0; i < windows; i++) {
    for (const on of i % 2 === 0 ? [false, true] : [true, false]) {
      const scraper = on ? startScraper(url, intervalMs) : null;
      const m0 = machineBusyMs();
      const p0 = cpuSeconds(proxyPid);
      await sleep(windowSeconds * 1000);
      const machine = (machineBusyMs() - m0) / windowSeconds;
      const proxy = ((cpuSeconds(proxyPid) - p0) * 1000) / windowSeconds;
      if (scraper) {
        await scraper.stop();
        withScrape.push({ machine, proxy, scrapes: scraper.stats.scrapes });
      } else {
        without.push({ machine, proxy });
      }
    }
  }
  const scrapesPerSecond = withScrape.reduce((a, w) => a + w.scrapes, 0) / (withScrape.length * windowSeconds);
  const machineWithout = median(without.map((w) => w.machine));
  const machineWith = median(withScrape.map((w) => w.machine));
  const proxyExtra = median(withScrape.map((w) => w.proxy)) - median(without.map((w) => w.proxy));
  return {
    windows,
    windowSeconds,
    scrapes: withScrape.reduce((a, w) => a + w.scrapes, 0),
    machineMsPerSecondWithout: machineWithout,
    machineMsPerSecondWith: machineWith,
    machineShare: (machineWith - machineWithout) / (os.availableParallelism() * 1000),
    proxyMsPerScrape: scrapesPerSecond > 0 ? proxyExtra / scrapesPerSecond : NaN,
  };
}
