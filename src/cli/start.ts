import type { ProxyConfig } from '../config/schema.js';
import { ConfigError, validateConfig } from '../config/load.js';
import { workerCount } from '../supervisor/worker-count.js';

/**
 * `pgbg-proxy start`: runs until SIGTERM/SIGINT (graceful drain) and reloads on SIGHUP.
 * The reload re-reads the same sources (file, environment, flags) through `reread`.
 */
export async function runStart(config: ProxyConfig, reread?: () => ProxyConfig, rereadRaw?: () => Record<string, unknown>): Promise<number> {
  const workers = workerCount(config.workers);
  if (workers > 1 && rereadRaw) {
    // Several relay processes under a supervisor (README "Workers"); it validates what it hands on.
    const raw = rereadRaw();
    return (await import('../supervisor/primary.js')).runPrimary(validateConfig(raw), raw, workers, rereadRaw);
  }
  // Loaded here, not at the top: a supervisor (above) relays nothing and does without it.
  const { startProxy } = await import('../proxy.js');
  const proxy = await startProxy(config, { reread });
  const log = proxy.log;
  return await new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: closing now');
        void proxy.close(0).then(() => resolve(1));
        return;
      }
      stopping = true;
      log.info({ signal, grace_ms: config.shutdown.grace }, 'shutting down: draining sessions');
      void proxy.close().then(() => {
        log.info('stopped');
        resolve(0);
      });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => {
      if (!reread) return;
      try {
        proxy.reload(reread());
      } catch (err) {
        log.error({ err: err instanceof ConfigError ? err.message : err }, 'reload refused: configuration invalid, keeping the old one');
      }
    });
  });
}
