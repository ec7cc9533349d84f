import cluster, { type Worker } from 'node:cluster';
import net from 'node:net';
import type { Logger } from 'pino';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { ProxyConfig } from '../config/schema.js';
import { ConfigError, validateConfig } from '../config/load.js';
import { createLogger } from '../log/logger.js';
import { packageVersion } from '../metrics/package-version.js';
import { ProxyMetrics } from '../metrics/proxy-metrics.js';
import { JobMetrics } from '../metrics/job-metrics.js';
import { startMetricsServer } from '../metrics/http-server.js';
import { cachedRendering } from '../metrics/exposition-cache.js';
import { readinessCheck } from '../metrics/readiness.js';
import { admissionConfig, newAdmissionId } from '../jobs/scheduling-policy.js';
import { Reconciler } from '../jobs/reconciler.js';
import { UpstreamTlsState } from '../tls/upstream-tls.js';
import { PauseSwitch } from '../admin/pause-switch.js';
import type { ClientSessionInfo, MetricSnapshot } from '../admin/controls.js';
import { isPgbgMessage, type RawConfig, type ToPrimary, type ToWorker } from './messages.js';
import { Rpc } from './rpc.js';
import { offerCancel } from './cancel-relay.js';
import { SlotLedger } from './client-slots.js';
import { claimSocketFile, releaseSocketFile } from '../listener/unix-socket.js';

/** How long the supervisor waits for one worker's sessions or metrics before leaving it out. */
const WORKER_TIMEOUT_MS = 3000;
/** How long the first workers may take to start listening. */
const START_TIMEOUT_MS = 30_000;

/** HOST:PORT for the workers' listen, with port 0 replaced by a port free now. */
async function concreteListen(address: { host: string; port: number }): Promise<string> {
  let port = address.port;
  if (port === 0) {
    const probe = net.createServer();
    await new Promise<void>((resolve, reject) => {
      probe.once('error', reject);
      probe.listen(0, address.host, () => resolve());
    });
    port = (probe.address() as net.AddressInfo).port;
    await new Promise((r) => probe.close(r));
  }
  return `${address.host.includes(':') ? `[${address.host}]` : address.host}:${port}`;
}

/**
 * V8's young generation grows up to 3 x 16 MiB under a relay's steady allocation (a Buffer view
 * per message) and is not given back: measured, each worker's resident memory rose by about
 * 20 MiB after 6 s of pgbench, and 2,000 idle sessions on two workers then passed 256 MiB. At
 * 4 MiB semi-spaces it stays at its idle size (pgbench tps unchanged within noise): what dies
 * young in a relay dies within one message. An operator's own setting (execArgv or
 * NODE_OPTIONS) wins.
 */
export function workerExecArgv(execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  const setsSemiSpace = (s: string) => /--max-semi-space-size\b/.test(s);
  if (execArgv.some(setsSemiSpace) || setsSemiSpace(nodeOptions ?? '')) return [...execArgv];
  return [...execArgv, '--max-semi-space-size=4'];
}

interface WorkerEntry {
  readonly id: number;
  readonly worker: Worker;
  readonly rpc: Rpc;
  listening: boolean;
  send(msg: ToWorker): void;
  offer(pid: number, key: number): void;
}

/**
 * The supervisor of `workers: N` (N > 1): forks N relay processes (src/supervisor/worker.ts)
 * that share the listening address through node:cluster, and owns what must exist once: the
 * metrics endpoint (one /metrics aggregating every worker), job metrics and the reconciler,
 * configuration reload (validated once, then sent to every worker), the PAUSE state, graceful
 * shutdown, and replacing a worker that dies. It relays no client traffic itself.
 */
export async function runPrimary(initial: ProxyConfig, initialRaw: RawConfig, count: number, rereadRaw: () => RawConfig): Promise<number> {
  const log: Logger = createLogger(initial.log).child({ supervisor: true });
  // proxy.js (and the SQL parser it loads) is imported only for this: the supervisor relays
  // nothing, and stays lighter without it.
  // tls.server for the supervisor's own connections (migrate, reconciler, job metrics, /readyz),
  // as a single process uses it for its own.
  const upstreamTls = new UpstreamTlsState(initial.tls.server, log);
  const serverTls = () => upstreamTls.current;
  if (initial.jobs.migrateOnStart) await (await import('../proxy.js')).migrateRegistry(initial, log, upstreamTls);
  let current = initial;
  // Every worker (replacements too) must listen on the same port: port 0 is turned into a
  // concrete free port once, here. The listening address does not change on reload.
  const listen = await concreteListen(initial.listen);
  const pinned = (raw: RawConfig): RawConfig => ({ ...raw, listen });
  // The Unix socket is shared like the TCP one: claimed here once (a live one is never taken
  // over), listened on by every worker, removed here after the last worker stopped.
  const socketFile = initial.listenSocketDir ? await claimSocketFile(initial.listenSocketDir, Number(listen.slice(listen.lastIndexOf(':') + 1)), log) : null;
  let currentRaw = pinned(initialRaw);

  // The supervisor's own registry: its process metrics, the PAUSE flag and the job metrics read
  // from the server; every worker's registry is added to it at scrape time.
  const metrics = new ProxyMetrics(packageVersion(), () => 0);
  const pause = new PauseSwitch();
  pause.exportTo(metrics.registry);
  const registryUrl = current.jobs.enabled ? current.jobs.registryUrl : null;
  // One admission id for the whole proxy: the workers inherit it with their environment.
  const admission = newAdmissionId();
  process.env.PGBG_ADMISSION_ID = admission;
  const reconciler = registryUrl ? new Reconciler(registryUrl, current.jobs.reconcileInterval, log, current.upstream.connectTimeout, serverTls, admission) : null;
  reconciler?.setAdmissionConfig(admissionConfig(current));
  reconciler?.start();
  const jobMetrics = registryUrl ? new JobMetrics(registryUrl, metrics.registry, log, () => current.metricsSnapshotTtl, current.upstream.connectTimeout, serverTls) : null;

  const workers = new Map<number, WorkerEntry>();
  // Client sessions of every worker, against limits.maxClients (the whole proxy's limit).
  const slots = new SlotLedger();
  let stopping = false;
  let recentExits: number[] = [];
  let firstListening: (() => void) | null = null;
  let address: { host: string; port: number } | null = null;

  const askAll = async <T>(op: string): Promise<T[]> => {
    const answers = await Promise.all(
      [...workers.values()].map((w) =>
        w.rpc.request<T>(op, WORKER_TIMEOUT_MS).catch((err) => {
          log.warn({ worker: w.id, op, err: (err as Error).message }, 'worker did not answer; left out');
          return null;
        }),
      ),
    );
    return answers.filter((a): a is Awaited<T> => a !== null) as T[];
  };

  const aggregate = async (): Promise<Registry> => {
    const parts = await askAll<MetricSnapshot[]>('metrics');
    parts.push((await metrics.registry.getMetricsAsJSON()) as unknown as MetricSnapshot[]);
    // prom-client omits the start time from aggregates; the earliest start (the supervisor's)
    // keeps the metric there under its usual name.
    for (const part of parts) {
      for (const m of part as (MetricSnapshot & { aggregator?: string })[]) if (m.name.endsWith('process_start_time_seconds')) m.aggregator = 'min';
    }
    return AggregatorRegistry.aggregate(parts as unknown as Parameters<typeof AggregatorRegistry.aggregate>[0]);
  };

  const broadcast = (msg: ToWorker) => {
    for (const w of workers.values()) w.send(msg);
  };

  const setPaused = (paused: boolean): boolean => {
    const changed = paused ? pause.pause() : pause.resume();
    broadcast({ pgbg: 'paused', since: pause.pausedSince?.toISOString() ?? null });
    return changed;
  };

  /** SIGHUP and the console's RELOAD: read and validate once; a bad file changes nothing anywhere. */
  const reload = (): string => {
    const raw = pinned(rereadRaw());
    const next = validateConfig(raw);
    if (next.workers !== current.workers) log.warn({ running: count, configured: next.workers }, 'workers changes take effect at the next start');
    current = next;
    currentRaw = raw;
    broadcast({ pgbg: 'config', config: raw });
    reconciler?.setInterval(next.jobs.reconcileInterval);
    reconciler?.setAdmissionConfig(admissionConfig(next));
    upstreamTls.reload(next.tls.server);
    log.info({ rules: next.rules.length, workers: workers.size }, 'configuration reloaded');
    return `configuration reloaded (${next.rules.length} rules) in ${workers.size} workers`;
  };

  const serve = async (op: string): Promise<unknown> => {
    switch (op) {
      case 'reload':
        return reload();
      case 'pause':
        return setPaused(true);
      case 'resume':
        return setPaused(false);
      case 'sessions':
        return (await askAll<ClientSessionInfo[]>('sessions')).flat();
      case 'metrics':
        return (await aggregate()).getMetricsAsJSON();
      default:
        throw new Error(`unknown request ${op}`);
    }
  };

  const fork = (): WorkerEntry => {
    const worker = cluster.fork();
    const send = (msg: ToWorker) => {
      if (worker.isConnected()) worker.send(msg, undefined, () => {});
    };
    const entry: WorkerEntry = {
      id: worker.id,
      worker,
      rpc: new Rpc(send, (op) => (op === 'take-slot' ? slots.take(worker.id, current.limits.maxClients) : serve(op))),
      listening: false,
      send,
      offer: (pid, key) => send({ pgbg: 'cancel', pid, key }),
    };
    workers.set(worker.id, entry);
    worker.on('message', (msg: unknown) => {
      if (!isPgbgMessage(msg)) return;
      const m = msg as ToPrimary;
      if (entry.rpc.handle(m)) return;
      if (m.pgbg === 'ready') send({ pgbg: 'start', config: currentRaw, pausedSince: pause.pausedSince?.toISOString() ?? null });
      else if (m.pgbg === 'cancel') offerCancel(workers.values(), entry.id, m.pid, m.key);
      else if (m.pgbg === 'slot-release') slots.release(entry.id);
      else if (m.pgbg === 'listening') {
        entry.listening = true;
        address ??= { host: m.host, port: m.port };
        log.info({ worker: entry.id, pid: worker.process.pid }, 'worker listening');
        if (firstListening && [...workers.values()].every((w) => w.listening)) firstListening();
      }
    });
    return entry;
  };

  let startFailed: ((why: string) => void) | null = null;
  cluster.on('exit', (worker, code, signal) => {
    const entry = workers.get(worker.id);
    if (!entry) return;
    workers.delete(worker.id);
    slots.forget(worker.id);
    entry.rpc.close('worker exited');
    if (stopping) return;
    if (startFailed && !entry.listening) return startFailed(`worker ${worker.id} exited (code ${code}, signal ${signal}) before listening`);
    // Only the clients this worker served lose their connections; the others go on. A worker
    // that keeps dying at once is restarted no faster than once a second.
    const now = Date.now();
    recentExits = recentExits.filter((t) => now - t < 10_000);
    recentExits.push(now);
    const delay = recentExits.length > 3 ? 1000 : 0;
    log.error({ worker: worker.id, pid: worker.process.pid, code, signal, restart_in_ms: delay }, 'worker exited; starting a replacement');
    setTimeout(() => {
      if (!stopping) fork();
    }, delay);
  });

  cluster.setupPrimary({ execArgv: workerExecArgv(process.execArgv, process.env.NODE_OPTIONS) });
  // Signals are taken from the start: the shared port accepts connections as soon as the first
  // worker listens, and a SIGHUP before a handler exists would end the supervisor (its default
  // action). A reload meanwhile reaches the workers that started; later ones start with it. A
  // SIGTERM / SIGINT meanwhile is kept and acted on once the workers listen.
  let pendingStop: string | null = null;
  let onStopSignal = (signal: string) => {
    pendingStop ??= signal;
  };
  process.on('SIGTERM', () => onStopSignal('SIGTERM'));
  process.on('SIGINT', () => onStopSignal('SIGINT'));
  process.on('SIGHUP', () => {
    try {
      reload();
    } catch (err) {
      log.error({ err: err instanceof ConfigError ? err.message : (err as Error).message }, 'reload refused: configuration invalid, keeping the old one');
    }
  });

  for (let i = 0; i < count; i++) fork();
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`workers did not listen within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      firstListening = () => {
        clearTimeout(timer);
        resolve();
      };
      startFailed = (why) => {
        clearTimeout(timer);
        reject(new Error(why));
      };
    });
  } catch (err) {
    log.error({ err: (err as Error).message }, 'workers failed to start');
    stopping = true;
    for (const w of workers.values()) w.worker.process.kill('SIGKILL');
    await reconciler?.stop();
    await jobMetrics?.close();
    if (socketFile) await releaseSocketFile(socketFile);
    return 1;
  } finally {
    firstListening = null;
    startFailed = null;
  }
  log.info({ listen: `${address!.host}:${address!.port}`, workers: workers.size }, 'all workers listening');

  const http = current.metricsListen
    ? await startMetricsServer(
        current.metricsListen,
        cachedRendering(metrics.registry.contentType, async () => (await aggregate()).metrics(), () => current.metricsSnapshotTtl),
        readinessCheck(() => current, serverTls),
        log,
      )
    : null;

  return await new Promise<number>((resolve) => {
    let signalled = false;
    const stop = (signal: string) => {
      if (signalled) {
        log.warn({ signal }, 'second signal: workers close now');
        broadcast({ pgbg: 'shutdown', graceMs: 0 });
        return;
      }
      signalled = true;
      stopping = true;
      log.info({ signal, grace_ms: current.shutdown.grace, workers: workers.size }, 'shutting down: workers draining sessions');
      broadcast({ pgbg: 'shutdown' });
      const killAt = Date.now() + current.shutdown.grace + 5000;
      const wait = setInterval(() => {
        if (workers.size > 0 && Date.now() < killAt) return;
        clearInterval(wait);
        for (const w of workers.values()) {
          log.error({ worker: w.id }, 'worker did not exit after the grace period: killed');
          w.worker.process.kill('SIGKILL');
        }
        void (async () => {
          await reconciler?.stop();
          await http?.close();
          await jobMetrics?.close();
          if (socketFile) await releaseSocketFile(socketFile);
          log.info('stopped');
          resolve(0);
        })();
      }, 50);
    };
    onStopSignal = stop;
    if (pendingStop) stop(pendingStop);
  });
}
