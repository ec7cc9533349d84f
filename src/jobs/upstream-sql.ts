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
 * Runs one statement with parameters on the client's upstream session, as an implicit
 * transaction of its own (the session is idle when the proxy does this).
 */
export async function runStatement(
  channel: SessionChannel,
  sql: string,
  values: (Buffer | string | null)[] = [],
  options: { types?: number[]; formats?: number[] } = {},
): Promise<Exchange> {
  // The leading Close clears a statement left behind when an earlier exchange failed before its
  // own Close (after an error the server skips everything up to Sync).
  return channel.exchange([
    fe.close('S', STATEMENT),
    fe.parse(STATEMENT, sql, options.types ?? []),
    fe.bind('', STATEMENT, values, options.formats ?? []),
    fe.execute(),
    fe.close('S', STATEMENT),
    fe.sync(),
  ]);
}

/** Like runStatement, but throws the server's error. */
export async function runOrThrow(
  channel: SessionChannel,
  sql: string,
  values: (Buffer | string | null)[] = [],
  options: { types?: number[]; formats?: number[] } = {},
): Promise<Exchange> {
  const result = await runStatement(channel, sql, values, options);
  const err = serverError(result);
  if (err) throw err;
  return result;
}

/** Parses and describes a statement without running it: checks syntax, names and parameter types. */
export async function describeStatement(channel: SessionChannel, sql: string, types: number[]): Promise<{ paramTypes: number[]; error: PgError | null }> {
  const result = await channel.exchange([fe.close('S', STATEMENT), fe.parse(STATEMENT, sql, types), fe.describe('S', STATEMENT), fe.close('S', STATEMENT), fe.sync()]);
  const pd = result.messages.find((m) => m.name === 'parameterDescription') as unknown as { dataTypeIDs: number[] } | undefined;
  return { paramTypes: pd?.dataTypeIDs ?? [], error: serverError(result) };
}
