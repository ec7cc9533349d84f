import { validateConfig } from '../../src/config/load.js';
import type { ProxyConfigInput } from '../../src/config/schema.js';
import { createLogger } from '../../src/log/logger.js';
import { startProxy, type RunningProxy } from '../../src/proxy.js';
import { clusterInfo, makeCluster, type Cluster } from '../harness/cluster.js';

/** The same helpers as the cluster's (url, connect, query, psql), aimed at a proxy in front of it. */
export interface TestProxy extends Omit<Cluster, 'stop'> {
  proxy: RunningProxy;
  close(): Promise<void>;
}

/** Starts a proxy in this process in front of the cluster; log level from PGBG_TEST_LOG (silent). */
export async function startTestProxy(cluster: Cluster, overrides: ProxyConfigInput = {}): Promise<TestProxy> {
  const config = validateConfig({
    listen: '127.0.0.1:0',
    upstream: { host: cluster.host, port: cluster.port },
    ...overrides,
    log: { level: process.env.PGBG_TEST_LOG ?? 'silent', pretty: false },
  });
  const proxy = await startProxy(config, { log: createLogger(config.log, process.stderr) });
  const via = makeCluster({ ...clusterInfo(cluster), port: proxy.address.port }, { owned: false });
  return Object.assign(via, {
    proxy,
    close: () => proxy.close(0),
  });
}
