import cluster from 'node:cluster';
import type { Logger } from 'pino';
import { validateConfig } from '../config/load.js';
import { createLogger } from '../log/logger.js';
import { startProxy, type RunningProxy } from '../proxy.js';
import type { AdminControls, ClientSessionInfo, MetricSnapshot } from '../admin/controls.js';
import { isPgbgMessage, type ToPrimary, type ToWorker } from './messages.js';
import { Rpc } from './rpc.js';
import { cancelOffered, cancelViaSupervisor } from './cancel-relay.js';
import { supervisedClientSlots } from './client-slots.js';

/** How long a console command waits for the supervisor (which may itself ask every worker). */
const SUPERVISOR_TIMEOUT_MS = 10_000;

/**
 * One relay process under the supervisor (src/supervisor/primary.ts): it serves whole client
 * sessions on the shared listening address, and leaves what must exist once (metrics endpoint,
 * reconciler, reload, PAUSE state, shutdown) to the supervisor. Resolves with the exit code
 * once the supervisor (or a signal) has had it drain.
 */
export async function runWorker(): Promise<number> {
  const send = (msg: ToPrimary) => {
    if (process.connected) process.send!(msg, undefined, undefined, () => {});
  };
  const early: ToWorker[] = [];
  const start = await new Promise<ToWorker & { pgbg: 'start' }>((resolve) => {
    const onMessage = (msg: unknown) => {
      if (!isPgbgMessage(msg)) return;
      const m = msg as ToWorker;
      if (m.pgbg === 'start') {
        process.off('message', onMessage);
        resolve(m);
      } else early.push(m);
    };
    process.on('message', onMessage);
    send({ pgbg: 'ready' });
  });
  const config = validateConfig(start.config, 'configuration from the supervisor');
  const log: Logger = createLogger(config.log).child({ worker: cluster.worker?.id });

  let proxy: RunningProxy | null = null;
  const rpc = new Rpc(send, async (op) => {
    if (!proxy) throw new Error('worker still starting');
    if (op === 'sessions') return sessionList(proxy);
    if (op === 'metrics') return proxy.metrics.registry.getMetricsAsJSON();
    throw new Error(`unknown request ${op}`);
  });
  proxy = await startProxy(config, {
    log,
    cluster: {
      controls: (local) => supervisedControls(local, rpc),
      cancelElsewhere: cancelViaSupervisor(send, log),
      clientSlots: supervisedClientSlots((op, timeoutMs) => rpc.request<boolean>(op, timeoutMs), () => send({ pgbg: 'slot-release' }), log),
    },
  });
  const running = proxy;
  running.pause.mirror(start.pausedSince ? new Date(start.pausedSince) : null);

  return await new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (graceMs: number | undefined, why: string) => {
      if (stopping) {
        if (graceMs !== 0) return;
        log.warn({ why }, 'closing now');
      } else log.info({ why }, 'worker draining sessions');
      stopping = true;
      void running.close(graceMs).then(() => {
        rpc.close('worker stopped');
        // Disconnecting marks this exit as intended, so the supervisor does not replace it.
        if (cluster.worker?.isConnected()) cluster.worker.disconnect();
        // Anything left holding the event loop (an idle registry connection, a socket in its
        // last close) must not keep the process: the supervisor waits for it to exit. Logs are
        // written synchronously, so nothing is lost.
        setTimeout(() => process.exit(0), 100).unref();
        resolve(0);
      });
    };
    const onMessage = (msg: unknown) => {
      if (!isPgbgMessage(msg)) return;
      const m = msg as ToWorker;
      if (rpc.handle(m)) return;
      switch (m.pgbg) {
        case 'config':
          try {
            running.reload(validateConfig(m.config, 'configuration from the supervisor'));
          } catch (err) {
            // The supervisor validated it with the same schema; this cannot happen unless the
            // two run different code.
            log.error({ err: (err as Error).message }, 'reload from the supervisor refused');
          }
          break;
        case 'paused':
          running.pause.mirror(m.since ? new Date(m.since) : null);
          break;
        case 'cancel':
          cancelOffered(running.listener.cancel, m.pid, m.key, log);
          break;
        case 'shutdown':
          stop(m.graceMs, 'supervisor shutdown');
          break;
      }
    };
    process.on('message', onMessage);
    for (const m of early) onMessage(m);
    // A signal to the whole process group (Ctrl-C in a terminal) reaches the workers too: they
    // drain as the supervisor would have them. SIGHUP is the supervisor's alone: it validates
    // the configuration once and sends it here.
    process.on('SIGTERM', () => stop(undefined, 'SIGTERM'));
    process.on('SIGINT', () => stop(undefined, 'SIGINT'));
    process.on('SIGHUP', () => {});
    send({ pgbg: 'listening', host: running.address.host, port: running.address.port });
  });
}

/** The console's controls in a worker: shared state and every worker's sessions via the supervisor. */
function supervisedControls(local: AdminControls, rpc: Rpc): AdminControls {
  return {
    reload: () => rpc.request<string>('reload', SUPERVISOR_TIMEOUT_MS),
    pause: () => rpc.request<boolean>('pause', SUPERVISOR_TIMEOUT_MS),
    resume: () => rpc.request<boolean>('resume', SUPERVISOR_TIMEOUT_MS),
    get paused() {
      return local.paused;
    },
    config: () => local.config(),
    sessions: () => rpc.request<ClientSessionInfo[]>('sessions', SUPERVISOR_TIMEOUT_MS),
    metricsJson: () => rpc.request<MetricSnapshot[]>('metrics', SUPERVISOR_TIMEOUT_MS),
  };
}

/** This worker's client sessions as plain data (IPC carries JSON). */
function sessionList(proxy: RunningProxy): ClientSessionInfo[] {
  const out: ClientSessionInfo[] = [];
  for (const s of proxy.listener.sessions) {
    out.push({
      id: s.id,
      user: s.user,
      database: s.database,
      applicationName: s.applicationName,
      startedAt: s.startedAt,
      txStatus: s.txStatus,
      idle: s.idle,
      adopted: s.adopted,
      pendingJobCount: s.pendingJobCount,
      worker: process.pid,
    });
  }
  return out;
}
