import type { Logger } from 'pino';
import type { ProxyConfig } from './config/schema.js';
import { createLogger } from './log/logger.js';
import { startListener, type RunningListener } from './listener/server.js';
import type { StatementRouter } from './rules/route.js';
import { forwardAll } from './rules/forward-all.js';
import { JobRouter } from './rules/job-router.js';
import { loadSqlParser } from './rules/sql-parser.js';
import { PgBackgroundSubmitter } from './jobs/job-submitter.js';
import { admissionConfig, inheritedAdmissionId, newAdmissionId, schedulingPolicy } from './jobs/scheduling-policy.js';
import { Reconciler } from './jobs/reconciler.js';
import { migrate } from './jobs/migrate.js';
import pg from 'pg';
import { ProxyMetrics } from './metrics/proxy-metrics.js';
import { packageVersion } from './metrics/package-version.js';
import { JobMetrics } from './metrics/job-metrics.js';
import { startMetricsServer } from './metrics/http-server.js';
import { cachedExposition } from './metrics/exposition-cache.js';
import { readinessCheck } from './metrics/readiness.js';
import { AdminConsole } from './admin/admin-console.js';
import { createAdminControls } from './admin/controls.js';
import { PauseSwitch } from './admin/pause-switch.js';
import { connectPgClient, UpstreamTlsState } from './tls/upstream-tls.js';
import { ClientTls } from './tls/client-tls.js';
import type { ClusterLink } from './supervisor/cluster-link.js';

/** A running pgbg-proxy: the listener and whatever runs beside it. */
export interface RunningProxy {
  readonly address: { host: string; port: number };
  readonly listener: RunningListener;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
  /** Port of the HTTP metrics endpoint, when metricsListen is set. */
  readonly metricsPort: number | null;
  /** PAUSE / RESUME from the admin console; the job submission path asks pause.isPaused(). */
  readonly pause: PauseSwitch;
  reload(config: ProxyConfig): void;
  close(graceMs?: number): Promise<void>;
}

export interface StartOptions {
  log?: Logger;
  /** Reads the configuration sources again; the admin console's RELOAD uses it as SIGHUP does. */
  reread?: () => ProxyConfig;
  /**
   * Set in a worker of a supervisor (workers > 1, src/supervisor/): the metrics endpoint, the
   * reconciler, job metrics, migration and PAUSE state exist once, in the supervisor.
   */
  cluster?: ClusterLink;
}

function routerFor(config: ProxyConfig): StatementRouter {
  return config.jobs.enabled ? new JobRouter(config.rules) : forwardAll;
}

/** Wires the parts together for one configuration. */
export async function startProxy(config: ProxyConfig, options: StartOptions = {}): Promise<RunningProxy> {
  const log = options.log ?? createLogger(config.log);
  if (config.jobs.enabled) await loadSqlParser();
  // tls.server, shared by client sessions' upstream connections and the proxy's own.
  // Both load their files now: a TLS file that cannot be used stops the start before anything runs.
  const upstreamTls = new UpstreamTlsState(config.tls.server, log);
  const clientTls = new ClientTls(config.tls.client, log);
  const serverTls = () => upstreamTls.current;
  // Under a supervisor (workers > 1) it migrates, reconciles and serves /metrics, once.
  const inCluster = options.cluster !== undefined;
  if (config.jobs.migrateOnStart && !inCluster) await migrateRegistry(config, log, upstreamTls);
  let router = routerFor(config);
  // Where this proxy's admission limits live in the registry (its supervisor's, under workers).
  const admission = inCluster ? inheritedAdmissionId() : newAdmissionId();
  const reconciler = !inCluster && config.jobs.enabled && config.jobs.registryUrl ? new Reconciler(config.jobs.registryUrl, config.jobs.reconcileInterval, log, config.upstream.connectTimeout, serverTls, admission ?? undefined) : null;
  reconciler?.setAdmissionConfig(admissionConfig(config));
  reconciler?.start();
  let current = config;
  let sessionCount = () => 0;
  const metrics = new ProxyMetrics(packageVersion(), () => sessionCount());
  const jobMetrics = !inCluster && config.jobs.enabled && config.jobs.registryUrl ? new JobMetrics(config.jobs.registryUrl, metrics.registry, log, () => current.metricsSnapshotTtl, config.upstream.connectTimeout, serverTls) : null;
  const pause = new PauseSwitch();
  if (!inCluster) pause.exportTo(metrics.registry);
  const localControls = createAdminControls({
    current: () => current,
    reread: options.reread,
    apply: (next) => running.reload(next),
    pauseSwitch: pause,
    sessions: () => listener.sessions,
    registry: metrics.registry,
  });
  const controls = options.cluster ? options.cluster.controls(localControls) : localControls;
  const adminConsole = new AdminConsole({ controls, log, upstreamTls: serverTls });
  const listener = await startListener(config, {
    log,
    router: () => router,
    jobs: config.jobs.enabled ? new PgBackgroundSubmitter(log, pause.isPaused, schedulingPolicy(() => current, admission)) : null,
    observer: metrics,
    adminConsole: adminConsole.handler,
    upstreamTls,
    clientTls,
    cancelElsewhere: options.cluster?.cancelElsewhere,
    sharedListen: inCluster,
    clientSlots: options.cluster?.clientSlots,
  });
  sessionCount = () => listener.sessions.size;
  const http = config.metricsListen && !inCluster ? await startMetricsServer(config.metricsListen, cachedExposition(metrics.registry, () => current.metricsSnapshotTtl), readinessCheck(() => current, serverTls), log) : null;
  const running: RunningProxy = {
    address: listener.address,
    listener,
    log,
    metrics,
    metricsPort: http?.port ?? null,
    pause,
    reload(next) {
      current = next;
      upstreamTls.reload(next.tls.server);
      router = routerFor(next);
      listener.reload(next);
      reconciler?.setInterval(next.jobs.reconcileInterval);
      reconciler?.setAdmissionConfig(admissionConfig(next));
      log.info({ rules: next.rules.length }, 'configuration reloaded');
    },
    async close(graceMs) {
      // The listener stops accepting first; console sessions end alongside the drain.
      await Promise.all([listener.close(graceMs), adminConsole.close()]);
      await reconciler?.stop();
      await http?.close();
      await jobMetrics?.close();
    },
  };
  return running;
}

/** `start --migrate`: the registry database named by jobs.registryUrl gets the current schema. */
export async function migrateRegistry(config: ProxyConfig, log: Logger, tls: UpstreamTlsState): Promise<void> {
  const url = config.jobs.registryUrl;
  if (!url) throw new Error('jobs.migrateOnStart needs jobs.registryUrl (or PGBG_REGISTRY_URL)');
  const client = await connectPgClient(url, tls.current, (ssl) => new pg.Client({ connectionString: url, application_name: 'pgbg-proxy migrate', ssl }));
  try {
    const { from, to } = await migrate(client);
    log.info({ from, to }, from === to ? 'registry is current' : 'registry migrated');
  } finally {
    await client.end();
  }
}
