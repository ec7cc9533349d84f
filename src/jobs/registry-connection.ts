import pg from 'pg';
import type { Logger } from 'pino';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import { connectPgClient, type UpstreamTls } from '../tls/upstream-tls.js';

export interface RegistryConnectionOptions {
  /** Shown in pg_stat_activity: who in the proxy this connection serves. */
  applicationName: string;
  /** A bound on each statement, for users that must never hang on a lock. */
  statementTimeoutMs?: number;
  /** tls.server as currently loaded (read at each connect); absent: plain text. */
  tls?: () => UpstreamTls;
}

/**
 * The proxy's own connection to the job registry database (jobs.registryUrl), as the operator
 * role there (meant to be a pgbg_admin member, which sees every job through the registry's
 * row-level security). Used by the admin console, the reconciler and the job metrics, each with
 * its own connection.
 *
 * One connection, opened on first use; its users take turns (pg.Client's own queueing of
 * concurrent queries is deprecated). It follows the URL getter across reloads and is reopened
 * after a failure.
 */
export class RegistryConnection {
  private client: pg.Client | null = null;
  private connectedUrl: string | null = null;
  private closed = false;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly url: () => string | null,
    private readonly connectTimeoutMs: () => number,
    private readonly log: Logger,
    private readonly options: RegistryConnectionOptions,
  ) {}

  /**
   * Runs one statement; every failure becomes a PgError the console can show. A statement run
   * periodically can be given a name: it is then prepared once per connection and its plan reused.
   */
  query<R extends pg.QueryResultRow = Record<string, unknown>>(sql: string, values: unknown[] = [], preparedName?: string): Promise<pg.QueryResult<R>> {
    const run = this.tail.then(async () => {
      const client = await this.connection();
      try {
        return await client.query<R>(preparedName ? { name: preparedName, text: sql, values } : { text: sql, values });
      } catch (err) {
        throw asPgError(err);
      }
    });
    this.tail = run.catch(() => {});
    return run;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.drop();
  }

  private async connection(): Promise<pg.Client> {
    if (this.closed) throw new PgError(SqlState.AdminShutdown, 'pgbg-proxy is shutting down');
    const url = this.url();
    if (!url) {
      throw new PgError(
        SqlState.ObjectNotInPrerequisiteState,
        `jobs.registryUrl is not set: the ${this.options.applicationName} cannot read the job registry`,
        undefined,
        'Set jobs.registryUrl (or PGBG_REGISTRY_URL) to a connection string of a pgbg_admin role in the registry database, then RELOAD.',
      );
    }
    if (this.connectedUrl !== url) await this.drop();
    if (this.client) return this.client;
    return this.open(url);
  }

  private async open(url: string): Promise<pg.Client> {
    let client: pg.Client;
    try {
      client = await connectPgClient(url, this.options.tls?.(), (ssl) => {
        const c = new pg.Client({
          connectionString: url,
          application_name: this.options.applicationName,
          connectionTimeoutMillis: this.connectTimeoutMs(),
          statement_timeout: this.options.statementTimeoutMs,
          ssl,
        });
        c.on('error', (err) => {
          this.log.warn({ err: err.message, connection: this.options.applicationName }, 'registry connection lost');
          if (this.client === c) {
            this.client = null;
            this.connectedUrl = null;
          }
        });
        return c;
      });
    } catch (err) {
      const e = asPgError(err);
      throw new PgError(e.code, `could not connect to the job registry: ${e.message}`, e.detail, e.hint);
    }
    this.client = client;
    this.connectedUrl = url;
    return client;
  }

  private async drop(): Promise<void> {
    const c = this.client;
    this.client = null;
    this.connectedUrl = null;
    await c?.end().catch(() => {});
  }
}

/** A server error keeps its SQLSTATE and fields; anything else (network) is a connection failure. */
export function asPgError(err: unknown): PgError {
  if (err instanceof PgError) return err;
  const e = err as { code?: unknown; message?: string; detail?: string; hint?: string };
  if (typeof e?.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) return new PgError(e.code, e.message ?? 'error', e.detail, e.hint);
  return new PgError(SqlState.ConnectionFailure, e?.message ?? String(err));
}
