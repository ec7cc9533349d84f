import type net from 'node:net';
import type { Logger } from 'pino';
import type { AdminConsoleHandler } from '../listener/server.js';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import { admitAdmin } from './admin-auth.js';
import { ConsoleSession } from './console-session.js';
import type { AdminControls } from './controls.js';
import { RegistryConnection } from '../jobs/registry-connection.js';
import type { UpstreamTls } from '../tls/upstream-tls.js';

export interface AdminConsoleOptions {
  controls: AdminControls;
  log: Logger;
  /** tls.server as currently loaded, for the login relay and the registry connection. */
  upstreamTls?: () => UpstreamTls;
}

/**
 * The admin console: connections whose startup names the database admin.database (default
 * `pgbg`) are handed here by the listener instead of being relayed. Each is authenticated by
 * the server (admin-auth.ts), then served by a ConsoleSession.
 *
 * Usage: `psql -h PROXY_HOST -p PROXY_PORT -U ADMIN_ROLE pgbg`, then SHOW HELP.
 */
export class AdminConsole {
  private readonly sessions = new Set<ConsoleSession>();
  /** Connections still logging in: closed too on shutdown. */
  private readonly loggingIn = new Set<net.Socket>();
  private readonly registry: RegistryConnection;
  private closing = false;

  constructor(private readonly options: AdminConsoleOptions) {
    const controls = options.controls;
    this.registry = new RegistryConnection(
      () => controls.config().jobs.registryUrl,
      () => controls.config().upstream.connectTimeout,
      options.log,
      // a console command must never hang on a lock in the registry
      { applicationName: 'pgbg-proxy admin console', statementTimeoutMs: 30_000, tls: options.upstreamTls },
    );
  }

  /** For ProxyParts.adminConsole. */
  readonly handler: AdminConsoleHandler = (socket, params, rest, sessionId) => {
    void this.accept(socket, params, rest, sessionId).catch((err) => {
      this.options.log.error({ session: sessionId, err }, 'admin console: login failed');
      socket.destroy();
    });
  };

  /** Admin console sessions now logged in. */
  get sessionCount(): number {
    return this.sessions.size;
  }

  private async accept(socket: net.Socket, params: Map<string, string>, rest: Buffer, sessionId: string): Promise<void> {
    const { controls, log } = this.options;
    const config = controls.config();
    this.loggingIn.add(socket);
    let admission;
    try {
      admission = await admitAdmin(socket, params, rest, {
        upstream: { host: config.upstream.host, port: config.upstream.port, tls: this.options.upstreamTls?.() },
        connectTimeoutMs: config.upstream.connectTimeout,
        timeoutMs: config.limits.startupTimeout,
        authDatabase: config.admin.authDatabase,
        allowedUsers: config.admin.users,
        log,
        sessionId,
      });
    } finally {
      this.loggingIn.delete(socket);
    }
    if (!admission) return;
    if (this.closing) {
      socket.end();
      return;
    }
    const session = new ConsoleSession(socket, sessionId, admission.identity, params.get('application_name') ?? '', {
      context: { controls, registry: this.registry, consoleSessions: () => this.sessions, log },
      maxMessageBytes: config.limits.maxMessageBytes,
      log,
    });
    this.sessions.add(session);
    session.onClose(() => this.sessions.delete(session));
    session.start(admission.clientBytes);
  }

  /** Ends every console connection and the registry connection. */
  async close(): Promise<void> {
    this.closing = true;
    for (const socket of this.loggingIn) socket.destroy();
    for (const s of [...this.sessions]) s.terminate(new PgError(SqlState.AdminShutdown, 'terminating connection: pgbg-proxy is shutting down', undefined, undefined, 'FATAL'));
    await this.registry.close();
  }
}
