import { validateConfig } from '../../src/config/load.js';
import type { ProxyConfigInput } from '../../src/config/schema.js';
import { createLogger } from '../../src/log/logger.js';
import { startProxy, type RunningProxy } from '../../src/proxy.js';
import { clusterInfo, makeCluster, type Cluster } from '../harness/cluster.js';
import { startSupervisedTestProxy } from './supervised-proxy.js';

/**
 * What a test may ask of the proxy it started, answered the same way whether the proxy runs in
 * this process (`workers: 1`) or as a supervisor with relay processes (PGBG_WORKERS=2 npm test):
 * in the second case from outside, through /metrics, the admin console and signals.
 */
export interface ProxyHandle {
  readonly address: { host: string; port: number };
  /** Port of the HTTP metrics endpoint, when the test set metricsListen. */
  readonly metricsPort: number | null;
  /** The Unix-domain socket the proxy listens on, when listenSocketDir is set. */
  readonly socketPath: string | null;
  /** Pids of the processes relaying client sessions (this process, or the supervisor's workers). */
  relayPids(): number[];
  /** Client and console sessions open now (the pgbg_client_connections gauge). */
  sessionCount(): Promise<number>;
  /** application_name of each client session (SHOW CLIENTS). */
  applicationNames(): Promise<string[]>;
  /** Whether launching new jobs is paused (the pgbg_launching_paused gauge). */
  isPaused(): Promise<boolean>;
  /** Sum of a metric's values whose labels include `labels`. */
  metricValue(name: string, labels?: Record<string, string>): Promise<number>;
  /** Applies a new configuration (the test's overrides, on the same listening address), as SIGHUP does. */
  reload(overrides: ProxyConfigInput): Promise<void>;
}

/** The same helpers as the cluster's (url, connect, query, psql), aimed at a proxy in front of it. */
export interface TestProxy extends Omit<Cluster, 'stop'> {
  proxy: ProxyHandle;
  close(): Promise<void>;
}

/** Relay processes the suite runs its proxies with: PGBG_WORKERS (default 1), as the CLI reads it. */
export function testWorkers(): number {
  const raw = process.env.PGBG_WORKERS;
  if (!raw) return 1;
  const n = raw === 'auto' ? 2 : Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`PGBG_WORKERS=${raw}: a whole number >= 1 expected`);
  return n;
}

/** Configuration a test proxy runs with: the test's overrides in front of the cluster. */
export function testConfigInput(cluster: Cluster, overrides: ProxyConfigInput, listen: string): ProxyConfigInput {
  return {
    listen,
    upstream: { host: cluster.host, port: cluster.port },
    ...overrides,
  };
}

/**
 * Starts a proxy in front of the cluster; log level from PGBG_TEST_LOG (silent). With
 * PGBG_WORKERS > 1 it is the real CLI with that many relay processes; otherwise it runs here.
 */
export async function startTestProxy(cluster: Cluster, overrides: ProxyConfigInput = {}): Promise<TestProxy> {
  const workers = testWorkers();
  if (workers > 1) {
    const supervised = await startSupervisedTestProxy(cluster, overrides, workers);
    const via = makeCluster({ ...clusterInfo(cluster), port: supervised.handle.address.port }, { owned: false });
    return Object.assign(via, { proxy: supervised.handle, close: supervised.close });
  }
  const log = { level: (process.env.PGBG_TEST_LOG ?? 'silent') as 'silent', pretty: false };
  const input = (o: ProxyConfigInput): ProxyConfigInput => ({ ...testConfigInput(cluster, o, '127.0.0.1:0'), log });
  const config = validateConfig(input(overrides));
  const proxy = await startProxy(config, { log: createLogger(config.log, process.stderr) });
  const via = makeCluster({ ...clusterInfo(cluster), port: proxy.address.port }, { owned: false });
  return Object.assign(via, {
    proxy: inProcessHandle(proxy, input),
    close: () => proxy.close(0),
  });
}

function inProcessHandle(proxy: RunningProxy, input: (o: ProxyConfigInput) => ProxyConfigInput): ProxyHandle {
  return {
    address: proxy.address,
    metricsPort: proxy.metricsPort,
    socketPath: proxy.listener.socketPath ?? null,
    relayPids: () => [process.pid],
    sessionCount: async () => proxy.listener.sessions.size,
    applicationNames: async () => [...proxy.listener.sessions].map((s) => s.applicationName ?? ''),
    isPaused: async () => proxy.pause.isPaused(),
    async metricValue(name, labels = {}) {
      const metric = proxy.metrics.registry.getSingleMetric(name);
      if (!metric) return 0;
      const { values } = await metric.get();
      return values.filter((v) => Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want)).reduce((sum, v) => sum + v.value, 0);
    },
    async reload(overrides) {
      proxy.reload(validateConfig({ ...input(overrides), listen: `${proxy.address.host}:${proxy.address.port}` }));
    },
  };
}
