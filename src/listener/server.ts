import net from 'node:net';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { ProxyConfig } from '../config/schema.js';
import { errorResponse } from '../protocol/backend-messages.js';
import { PgError, ProtocolViolation } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import { ClientSession, type SessionSettings } from '../session/client-session.js';
import { quietObserver, type SessionObserver } from '../session/session-observer.js';
import type { StatementRouter } from '../rules/route.js';
import type { JobSubmitter } from '../jobs/submitter.js';
import { CancelKeys } from './cancel-keys.js';
import { readStartup } from './startup-reader.js';

/** Something that answers a connection for the admin pseudo-database instead of the server. */
export type AdminConsoleHandler = (socket: net.Socket, params: Map<string, string>, rest: Buffer, sessionId: string) => void;

export interface ProxyParts {
  log: Logger;
  router?: () => StatementRouter;
  jobs?: JobSubmitter | null;
  observer?: SessionObserver;
  adminConsole?: AdminConsoleHandler;
  /**
   * Workers > 1: a CancelRequest whose key no session of this process holds is handed on
   * (src/supervisor/cancel-relay.ts), since the connection it cancels may live in another worker.
   */
  cancelElsewhere?: (pid: number, key: number) => void;
}

export interface RunningListener {
  readonly address: { host: string; port: number };
  readonly sessions: ReadonlySet<ClientSession>;
  /** Cancels what the session holding this key runs, in this process only; false if none holds it. */
  cancel(pid: number, key: number): boolean;
  /** Applies what can change without a restart (limits, timeouts, rules via the router). */
  reload(config: ProxyConfig): void;
  /** Stops accepting, lets sessions go idle up to graceMs, then closes the rest. */
  close(graceMs?: number): Promise<void>;
}

export function sessionSettings(config: ProxyConfig): SessionSettings {
  return {
    upstream: { host: config.upstream.host, port: config.upstream.port },
    connectTimeoutMs: config.upstream.connectTimeout,
    maxMessageBytes: config.limits.maxMessageBytes,
    inTransaction: config.jobs.inTransaction,
    supervisePollMs: config.jobs.supervisePoll,
  };
}

export async function startListener(initial: ProxyConfig, parts: ProxyParts): Promise<RunningListener> {
  let config = initial;
  let settings = sessionSettings(config);
  const log = parts.log;
  const cancelKeys = new CancelKeys();
  const sessions = new Set<ClientSession>();
  const observer = parts.observer ?? quietObserver;
  let pending = 0;
  let closing = false;
  const router = parts.router ?? (() => ({ route: () => ({ action: 'forward' as const }) }));

  const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => {});
    if (closing) {
      socket.destroy();
      return;
    }
    pending++;
    readStartup(socket, config.limits.startupTimeout)
      .then((outcome) => {
        if (outcome.kind === 'cancel') {
          // Nothing is sent back to a CancelRequest, matched or not, as with PostgreSQL.
          if (!cancelKeys.cancel(outcome.pid, outcome.key)) parts.cancelElsewhere?.(outcome.pid, outcome.key);
          socket.end();
          return;
        }
        const params = outcome.packet.params;
        const id = randomBytes(4).toString('hex');
        if (closing) return refuse(socket, new PgError(SqlState.CannotConnectNow, 'pgbg-proxy is shutting down', undefined, undefined, 'FATAL'));
        if (sessions.size >= config.limits.maxClients) {
          log.warn({ limit: config.limits.maxClients }, 'client refused: max clients reached');
          return refuse(socket, new PgError(SqlState.TooManyConnections, `sorry, too many clients already (limits.maxClients = ${config.limits.maxClients})`, undefined, undefined, 'FATAL'));
        }
        if (params.get('replication')) {
          return refuse(socket, new PgError(SqlState.FeatureNotSupported, 'pgbg-proxy does not relay replication connections', undefined, 'Connect to the server directly for replication.', 'FATAL'));
        }
        if (parts.adminConsole && params.get('database') === config.admin.database) {
          parts.adminConsole(socket, params, outcome.rest, id);
          return;
        }
        const session = new ClientSession(socket, outcome.packet.raw, params, id, {
          settings: () => settings,
          router,
          jobs: parts.jobs ?? null,
          cancelKeys,
          observer,
          log,
        });
        sessions.add(session);
        session.onClose(() => sessions.delete(session));
        log.info({ session: id, remote: socket.remoteAddress, user: params.get('user'), database: params.get('database') }, 'session started');
        void session.start(outcome.rest);
      })
      .catch((err) => {
        if (err instanceof ProtocolViolation) {
          observer.protocolError(err.reason);
          if (err.reason !== 'startup_eof') {
            log.warn({ remote: socket.remoteAddress, reason: err.reason, err: err.message }, 'startup refused');
            const code = err.reason === 'bad_protocol' ? SqlState.FeatureNotSupported : SqlState.ProtocolViolation;
            return refuse(socket, new PgError(code, err.message, undefined, undefined, 'FATAL'));
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

  return {
    address: { host: addr.address, port: addr.port },
    sessions,
    cancel: (pid, key) => cancelKeys.cancel(pid, key),
    reload(next) {
      config = next;
      settings = sessionSettings(next);
    },
    async close(graceMs = config.shutdown.grace) {
      closing = true;
      // server.close() calls back only once every connection has ended: start it, but drain
      // (and after the grace, end) the sessions before waiting for it.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      const deadline = Date.now() + graceMs;
      while (sessions.size > 0 && Date.now() < deadline) {
        for (const s of sessions) s.closeIfIdle();
        if (sessions.size === 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      for (const s of sessions) {
        s.fatal(new PgError(SqlState.AdminShutdown, 'terminating connection: pgbg-proxy shutdown grace period ended', undefined, undefined, 'FATAL'));
      }
      while (pending > 0 && Date.now() < deadline + 1000) await new Promise((r) => setTimeout(r, 10));
      await Promise.race([closed, new Promise((r) => setTimeout(r, 1000).unref())]);
    },
  };
}

function refuse(socket: net.Socket, error: PgError): void {
  socket.end(errorResponse(error));
}
