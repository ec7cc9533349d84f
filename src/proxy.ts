import type { Logger } from 'pino';
import type { ProxyConfig } from './config/schema.js';
import { createLogger } from './log/logger.js';
import { startListener, type RunningListener } from './listener/server.js';
import type { StatementRouter } from './rules/route.js';
import { forwardAll } from './rules/forward-all.js';
import { JobRouter } from './rules/job-router.js';
import { loadSqlParser } from './rules/sql-parser.js';
import { PgBackgroundSubmitter } from './jobs/job-submitter.js';

/** A running pgbg-proxy: the listener and whatever runs beside it. */
export interface RunningProxy {
  readonly address: { host: string; port: number };
  readonly listener: RunningListener;
  readonly log: Logger;
  reload(config: ProxyConfig): void;
  close(graceMs?: number): Promise<void>;
}

export interface StartOptions {
  log?: Logger;
}

function routerFor(config: ProxyConfig): StatementRouter {
  return config.jobs.enabled ? new JobRouter(config.rules) : forwardAll;
}

/** Wires the parts together for one configuration. */
export async function startProxy(config: ProxyConfig, options: StartOptions = {}): Promise<RunningProxy> {
  const log = options.log ?? createLogger(config.log);
  if (config.jobs.enabled) await loadSqlParser();
  let router = routerFor(config);
  const listener = await startListener(config, {
    log,
    router: () => router,
    jobs: config.jobs.enabled ? new PgBackgroundSubmitter(log) : null,
  });
  return {
    address: listener.address,
    listener,
    log,
    reload(next) {
      router = routerFor(next);
      listener.reload(next);
      log.info({ rules: next.rules.length }, 'configuration reloaded');
    },
    async close(graceMs) {
      await listener.close(graceMs);
    },
  };
}
