import type { SessionChannel } from '../upstream/channel.js';
import type { BoundParams } from './submitter.js';
import type { ParamRef } from './plan.js';
import { runOrThrow } from './upstream-sql.js';

/**
 * Turns bound parameters into typed SQL literals, using the server's own output functions: each
 * value goes back to the server exactly as the client bound it (text or binary, in the client's
 * encoding) and comes out as quote_nullable(value::text)::type. The proxy never decodes a
 * binary format itself. Schema-qualified throughout: it runs under the client's search_path.
 */
export async function literalsFor(channel: SessionChannel, params: BoundParams): Promise<string[]> {
  const n = params.values.length;
  if (n === 0) return [];
  // Qualified: this runs in the client's session, whatever its search_path.
  const columns = params.types.map((oid, i) => `pg_catalog.quote_nullable($${i + 1}::pg_catalog.text) OPERATOR(pg_catalog.||) '::' OPERATOR(pg_catalog.||) pg_catalog.format_type(${Number(oid)}::pg_catalog.oid, NULL)`);
  const result = await runOrThrow(channel, `SELECT ${columns.join(', ')}`, params.values, { types: params.types, formats: params.formats, readOnly: true });
  const row = result.rows[0];
  if (!row || row.length !== n) throw new Error('parameter literals: unexpected answer from the server');
  return row.map((v) => v ?? 'NULL');
}

/** Puts each literal where its $n stood (byte offsets), parenthesised so it binds as one value. */
export function substitute(statement: string, refs: ParamRef[], literals: string[]): string {
  if (refs.length === 0) return statement;
  const bytes = Buffer.from(statement, 'utf8');
  const parts: Buffer[] = [];
  let pos = 0;
  for (const ref of [...refs].sort((a, b) => a.start - b.start)) {
    const lit = literals[ref.index - 1];
    if (lit === undefined) throw new Error(`no value bound for $${ref.index}`);
    parts.push(bytes.subarray(pos, ref.start), Buffer.from(`(${lit})`, 'utf8'));
    pos = ref.end;
  }
  parts.push(bytes.subarray(pos));
  return Buffer.concat(parts).toString('utf8');
}
