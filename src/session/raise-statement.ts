import type { PgError } from '../protocol/errors.js';

/**
 * A DO block that raises the given error inside the server. The proxy sends it in place of a
 * statement it refuses when the client's session is in a transaction block or in the middle of a
 * pipeline: the server then reports the error in the right order and aborts the client's
 * transaction exactly as if the statement itself had failed there.
 */
export function raiseStatement(error: PgError): string {
  const parts = [`ERRCODE = ${literal(error.code)}`, `MESSAGE = ${literal(error.message)}`];
  if (error.detail) parts.push(`DETAIL = ${literal(error.detail)}`);
  if (error.hint) parts.push(`HINT = ${literal(error.hint)}`);
  return `DO $pgbg_raise$BEGIN RAISE EXCEPTION USING ${parts.join(', ')}; END$pgbg_raise$`;
}

function literal(text: string): string {
  // The dollar sign is dropped so no text can close the block's dollar quote. An E'' string with
  // every backslash doubled means the same whatever the session's standard_conforming_strings
  // (a plain '' literal ending in a backslash would swallow its closing quote when it is off).
  return `E'${text.replace(/\$/g, '').replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}
