import { PgError } from '../protocol/errors.js';
import * as fe from '../protocol/frontend-writer.js';
import type { Exchange, SessionChannel } from '../upstream/channel.js';

/** Name of the proxy's own prepared statement; closed in the same round trip that creates it. */
const STATEMENT = 'pgbg_proxy_internal';

export interface ServerError {
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

/** The server's ErrorResponse as the error the client will see. */
export function serverError(exchange: Exchange): PgError | null {
  const e = exchange.error as unknown as (ServerError & { severity?: string }) | null;
  if (!e) return null;
  return new PgError(e.code, e.message, e.detail, e.hint);
}

/**
 * Runs one statement with parameters on the client's upstream session.
 *
 * Outside a transaction block (the session is idle when the proxy submits), in an explicit
 * READ COMMITTED, READ WRITE transaction with statement_timeout cleared, opened by a simple
 * Query pipelined ahead of the statement: the client's session may say
 * default_transaction_read_only = on (the job row must still commit),
 * default_transaction_isolation = serializable (the registry is written for read committed), or
 * carry a statement_timeout shorter than a launcher's start (a timer armed by an earlier Execute
 * of the same Sync would keep running, hence the BEGIN as a Query of its own). Inside a client's
 * transaction block (Parse-time checks) the statement runs in that block, as it must.
 */
export async function runStatement(
  channel: SessionChannel,
  sql: string,
  values: (Buffer | string | null)[] = [],
  options: {
    types?: number[];
    formats?: number[];
    /** A read: no explicit transaction (works on a standby too). */
    readOnly?: boolean;
    /**
     * SQL to parse (into the unnamed statement, never run) ahead of the statement in the same
     * round trip: its syntax and names are checked by the server first, and if they are wrong
     * the server skips the statement (and the COMMIT) and answers with that error.
     */
    validate?: string;
  } = {},
): Promise<Exchange> {
  const own = channel.txStatus === 'I' && !options.readOnly;
  // The leading Close clears a statement left behind when an earlier exchange failed before its
  // own Close (after an error the server skips everything up to Sync).
  const messages = [
    ...(options.validate !== undefined ? [fe.parse('', options.validate, [], channel.textEncoding)] : []),
    fe.close('S', STATEMENT),
    fe.parse(STATEMENT, sql, options.types ?? [], channel.textEncoding),
    fe.bind('', STATEMENT, values, options.formats ?? [], channel.textEncoding),
    fe.execute(),
    fe.close('S', STATEMENT),
  ];
  if (own) {
    // One round trip: the BEGIN goes as a simple Query of its own ahead of the rest (its timer,
    // armed with the client's statement_timeout, ends with it; the Parse after it finds the
    // timeout cleared), then the statement and the COMMIT up to one Sync.
    messages.unshift(fe.query('BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE; SET LOCAL statement_timeout = 0'));
    messages.push(fe.parse('', 'COMMIT'), fe.bind('', '', []), fe.execute());
  }
  messages.push(fe.sync());
  const result = await channel.exchange(messages, own ? 2 : 1);
  if (own && result.status !== 'I') {
    // Something failed, so the server skipped the COMMIT: end the block it is left in.
    await channel.exchange([fe.query('ROLLBACK')]);
    result.status = channel.txStatus;
  }
  return result;
}

/** Like runStatement, but throws the server's error. */
export async function runOrThrow(
  channel: SessionChannel,
  sql: string,
  values: (Buffer | string | null)[] = [],
  options: { types?: number[]; formats?: number[]; readOnly?: boolean } = {},
): Promise<Exchange> {
  const result = await runStatement(channel, sql, values, options);
  const err = serverError(result);
  if (err) throw err;
  return result;
}

/** Parses and describes a statement without running it: checks syntax, names and parameter types. */
export async function describeStatement(channel: SessionChannel, sql: string, types: number[]): Promise<{ paramTypes: number[]; error: PgError | null }> {
  const result = await channel.exchange([fe.close('S', STATEMENT), fe.parse(STATEMENT, sql, types, channel.textEncoding), fe.describe('S', STATEMENT), fe.close('S', STATEMENT), fe.sync()]);
  const pd = result.messages.find((m) => m.name === 'parameterDescription') as unknown as { dataTypeIDs: number[] } | undefined;
  return { paramTypes: pd?.dataTypeIDs ?? [], error: serverError(result) };
}
