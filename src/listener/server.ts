import net from 'node:net';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { ProxyConfig } from '../config/schema.js';
import { errorResponse, legacyErrorResponse } from '../protocol/backend-messages.js';
import { PgError, ProtocolViolation } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import { ClientSession, type SessionSettings } from '../session/client-session.js';
import { quietObserver, type SessionObserver } from '../session/session-observer.js';
import type { StatementRouter } from '../rules/route.js';
import { forwardAll } from '../rules/forward-all.js';
import type { JobSubmitter } from '../jobs/submitter.js';
import { LauncherCheckThrottle } from '../jobs/launcher-check.js';
import { CancelKeys } from './cancel-keys.js';
import { ClientTls } from '../tls/client-tls.js';
import { negotiateStartup } from '../tls/client-negotiation.js';
import { UpstreamTlsState, type UpstreamTls } from '../tls/upstream-tls.js';
import { ReplicationRelay, wantsReplication } from '../session/replication-relay.js';
import { listenUnixSocket } from './unix-socket.js';
import { LocalClientSlots, type ClientSlots } from './client-slots.js';
import { SILENT_STARTUP_FAILURES, UnsupportedProtocol } from '../protocol/startup.js';

/** Something that answers a connection for the admin pseudo-database instead of the server. */
export type AdminConsoleHandler = (socket: net.Socket, params: Map<string, string>, rest: Buffer, sessionId: string) => void;

export interface ProxyParts {
  log: Logger;
  router?: () => StatementRouter;
  jobs?: JobSubmitter | null;
  observer?: SessionObserver;
  adminConsole?: AdminConsoleHandler;
  /** tls.server state shared with the proxy's own connections; the listener keeps its own when absent. */
  upstreamTls?: UpstreamTlsState;
  /** tls.client state, when the caller loaded it already; the listener keeps its own when absent. */
  clientTls?: ClientTls;
  /**
   * Workers > 1: a CancelRequest whose key no session of this process holds is handed on
   * (src/supervisor/cancel-relay.ts), since the connection it cancels may live in another worker.
   */
  cancelElsewhere?: (pid: number, key: number) => void;
  /**
   * Workers > 1: the listening sockets are the supervisor's, shared with every worker; it
   * claims and removes the Unix socket file (src/listener/unix-socket.ts).
   */
  sharedListen?: boolean;
  /** Admission against limits.maxClients; a count of this process's own sessions when absent. */
  clientSlots?: ClientSlots;
}

export interface RunningListener {
  readonly address: { host: string; port: number };
  /** The Unix-domain socket clients may connect to (listenSocketDir), or null. */
  readonly socketPath: string | null;
  readonly sessions: ReadonlySet<ClientSession>;
  /** Cancels what the session holding this key runs, in this process only; false if none holds it. */
  cancel(pid: number, key: number): boolean;
  /** Applies what can change without a restart (limits, timeouts, rules via the router). */
  reload(config: ProxyConfig): void;
  /** Stops accepting, lets sessions go idle up to graceMs, then closes the rest. */
  close(graceMs?: number): Promise<void>;
}

export function sessionSettings(config: ProxyConfig, upstreamTls?: UpstreamTls): SessionSettings {
  return {
    upstream: { host: config.upstream.host, port: config.upstream.port, tls: upstreamTls },
    connectTimeoutMs: config.upstream.connectTimeout,
    maxMessageBytes: config.limits.maxMessageBytes,
    inTransaction: config.jobs.inTransaction,
  };
}

export async function startListener(initial: ProxyConfig, parts: ProxyParts): Promise<RunningListener> {
  let config = initial;
  const log = parts.log;
  // Both throw when TLS is configured with files that cannot be used: better than starting without it.
  const clientTls = parts.clientTls ?? new ClientTls(config.tls.client, log);
  const upstreamTls = parts.upstreamTls ?? new UpstreamTlsState(config.tls.server, log);
  let settings = sessionSettings(config, upstreamTls.current);
  const cancelKeys = new CancelKeys();
  const launcherChecks = new LauncherCheckThrottle();
  const sessions = new Set<ClientSession>();
  const replication = new Set<ReplicationRelay>();
  const observer = parts.observer ?? quietObserver;
  const slots = parts.clientSlots ?? new LocalClientSlots();
  let pending = 0;
  let closing = false;
  const router = parts.router ?? (() => forwardAll);

  const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => {});
    if (closing) {
      socket.destroy();
      return;
    }
    pending++;
    negotiateStartup(socket, clientTls, config.limits.startupTimeout, log, observer)
      .then(async ({ socket, outcome }) => {
        if (outcome.kind === 'closed') return;
        if (outcome.kind === 'cancel') {
          // Nothing is sent back to a CancelRequest, matched or not, as with PostgreSQL.
          if (!cancelKeys.cancel(outcome.pid, outcome.key)) parts.cancelElsewhere?.(outcome.pid, outcome.key);
          socket.end();
          return;
        }
        const params = outcome.packet.params;
        if (clientTls.refusesPlain(socket)) {
          log.warn({ remote: socket.remoteAddress, user: params.get('user'), database: params.get('database') }, 'client refused: TLS required (tls.client.mode = require)');
          return refuse(socket, clientTls.plainRefusal(socket.remoteAddress, params));
        }
        const id = randomBytes(4).toString('hex');
        const replicationRequested = wantsReplication(params);
        const refusal = (error: PgError) => {
          // A refused replication connection is logged and counted as such (the metric to watch
          // for a client that retries for ever).
          if (replicationRequested) {
            observer.replication('refused');
            log.warn({ session: id, user: params.get('user'), code: error.code, err: error.message }, 'replication connection refused by the proxy');
          }
          refuse(socket, error);
        };
        if (closing) return refusal(new PgError(SqlState.CannotConnectNow, 'pgbg-proxy is shutting down', undefined, undefined, 'FATAL'));
        const limit = config.limits.maxClients;
        if (!(await slots.take(limit))) {
          log.warn({ limit }, 'client refused: max clients reached');
          return refusal(new PgError(SqlState.TooManyConnections, `sorry, too many clients already (limits.maxClients = ${limit})`, undefined, undefined, 'FATAL'));
        }
        // An admin console session is refused when the proxy is full but does not hold a slot.
        const isConsole = parts.adminConsole !== undefined && !replicationRequested && params.get('database') === config.admin.database;
        if (isConsole || closing || socket.destroyed) slots.release();
        if (closing) return refusal(new PgError(SqlState.CannotConnectNow, 'pgbg-proxy is shutting down', undefined, undefined, 'FATAL'));
        if (socket.destroyed) return;
        if (replicationRequested) {
          // Relayed byte for byte: see ReplicationRelay.
          const relay = new ReplicationRelay(socket, outcome.packet.raw, params, id, { settings: () => settings, cancelKeys, observer, log });
          replication.add(relay);
          relay.onClose(() => {
            replication.delete(relay);
            slots.release();
          });
          void relay.start(outcome.rest);
          return;
        }
        if (parts.adminConsole && params.get('database') === config.admin.database) {
          parts.adminConsole(socket, params, outcome.rest, id);
          return;
        }
        const session = new ClientSession(socket, outcome.packet.raw, params, id, {
          settings: () => settings,
          router,
          jobs: parts.jobs ?? null,
          launcherCheckDue: (database, login) => launcherChecks.due(database, login),
          cancelKeys,
          observer,
          log,
        });
        sessions.add(session);
        session.onClose(() => {
          sessions.delete(session);
          slots.release();
        });
        log.info({ session: id, remote: socket.remoteAddress, user: params.get('user'), database: params.get('database') }, 'session started');
        void session.start(outcome.rest);
      })
      .catch((err) => {
        if (err instanceof ProtocolViolation) {
          observer.protocolError(err.reason);
          if (SILENT_STARTUP_FAILURES.has(err.reason)) {
            // As PostgreSQL does: logged (an empty connection excepted), the client told nothing.
            if (err.reason !== 'startup_eof') log.warn({ remote: socket.remoteAddress, reason: err.reason, err: err.message }, 'startup failed: connection closed');
          } else {
            log.warn({ remote: socket.remoteAddress, reason: err.reason, err: err.message }, 'startup refused');
            if (err instanceof UnsupportedProtocol && err.legacyFormat) return void socket.end(legacyErrorResponse('FATAL', err.message));
            const code = err.reason === 'bad_protocol' ? SqlState.FeatureNotSupported : SqlState.ProtocolViolation;
            // Inside TLS the answer goes through the TLS socket (negotiateStartup attaches it).
            return refuse((err as { socket?: net.Socket }).socket ?? socket, new PgError(code, err.message, undefined, undefined, 'FATAL'));
          }
        } else {
          log.error({ err }, 'startup failed');
        }
        socket.destroy();
      })
      .finally(() => pending--);
  });
  server.maxConnections = config.limits.maxClients * 2 + 16;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'listener error'));
  const addr = server.address() as net.AddressInfo;
  log.info({ listen: `${addr.address}:${addr.port}`, upstream: `${config.upstream.host}:${config.upstream.port}` }, 'listening');
  // Unix-socket clients take the same path as TCP ones: their connections are handed to the
  // TCP server's own connection handler.
  const unix = config.listenSocketDir
    ? await listenUnixSocket(config.listenSocketDir, addr.port, (socket) => server.emit('connection', socket), log, parts.sharedListen).catch((err) => {
        server.close();
        throw err;
      })
    : null;

  return {
    address: { host: addr.address, port: addr.port },
    socketPath: unix?.path ?? null,
    sessions,
    cancel: (pid, key) => cancelKeys.cancel(pid, key),
    reload(next) {
      config = next;
      clientTls.reload(next.tls.client);
      if (!parts.upstreamTls) upstreamTls.reload(next.tls.server);
      settings = sessionSettings(next, upstreamTls.current);
    },
    async close(graceMs = config.shutdown.grace) {
      closing = true;
      // server.close() calls back only once every connection has ended: start it, but drain
      // (and after the grace, end) the sessions before waiting for it.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      const unixClosed = unix?.close();
      const deadline = Date.now() + graceMs;
      while (sessions.size + replication.size > 0 && Date.now() < deadline) {
        for (const s of sessions) s.closeIfIdle();
        if (sessions.size + replication.size === 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      for (const s of sessions) {
        s.fatal(new PgError(SqlState.AdminShutdown, 'terminating connection: pgbg-proxy shutdown grace period ended', undefined, undefined, 'FATAL'));
      }
      for (const r of replication) r.close();
      while (pending > 0 && Date.now() < deadline + 1000) await new Promise((r) => setTimeout(r, 10));
      await Promise.race([closed, new Promise((r) => setTimeout(r, 1000).unref())]);
      await unixClosed;
    },
  };
}

function refuse(socket: net.Socket, error: PgError): void {
  socket.end(errorResponse(error));
}
