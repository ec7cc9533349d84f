import type { Logger } from 'pino';
import type { ProxyConfig } from './config/schema.js';
import { createLogger } from './log/logger.js';
import { startListener, type RunningListener } from './listener/server.js';
import type { StatementRouter } from './rules/route.js';
import { forwardAll } from './rules/forward-all.js';

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

/** Wires the parts together for one configuration. */
export async function startProxy(config: ProxyConfig, options: StartOptions = {}): Promise<RunningProxy> {
  const log = options.log ?? createLogger(config.log);
  let router: StatementRouter = forwardAll;
  const listener = await startListener(config, { log, router: () => router });
  return {
    address: listener.address,
    listener,
    log,
    reload(next) {
      listener.reload(next);
      log.info('configuration reloaded');
    },
    async close(graceMs) {
      await listener.close(graceMs);
    },
  };
}
