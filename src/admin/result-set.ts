import { commandComplete, dataRow, rowDescription, type ColumnSpec } from '../protocol/backend-messages.js';

/**
 * Result sets of the admin console, encoded as real RowDescription / DataRow / CommandComplete
 * messages so any SQL client (psql, drivers, GUI tools) reads them like a query result.
 *
 * Most columns are text. Counts, ids and flags carry their PostgreSQL type so that drivers hand
 * back numbers and booleans, and psql aligns numbers to the right.
 */

export type ColumnType = 'text' | 'int4' | 'int8' | 'float8' | 'bool';

export interface ResultColumn {
  name: string;
  type: ColumnType;
}

/** One value: null is SQL NULL; numbers and bigints suit numeric columns, booleans bool columns. */
export type Cell = string | number | bigint | boolean | null;

export interface ResultSet {
  /** null: the command returns no rows at all (Describe answers NoData), like SET. */
  columns: ResultColumn[] | null;
  rows: Cell[][];
  /** CommandComplete tag: 'SHOW' for SHOW commands, as PgBouncer's console does. */
  tag: string;
}

const TYPES: Record<ColumnType, Omit<ColumnSpec, 'name'>> = {
  text: { typeOid: 25, typeSize: -1 },
  int4: { typeOid: 23, typeSize: 4 },
  int8: { typeOid: 20, typeSize: 8 },
  float8: { typeOid: 701, typeSize: 8 },
  bool: { typeOid: 16, typeSize: 1 },
};

export function column(name: string, type: ColumnType = 'text'): ResultColumn {
  return { name, type };
}

/** Columns given as 'name' (text) or 'name:type'. */
export function columns(...specs: string[]): ResultColumn[] {
  return specs.map((spec) => {
    const [name, type] = spec.split(':') as [string, ColumnType | undefined];
    return column(name, type ?? 'text');
  });
}

/** RowDescription; formats as the client's Bind asked (empty: all text). */
export function describeColumns(cols: ResultColumn[], formats: number[] = []): Buffer {
  return rowDescription(
    cols.map((c) => ({ name: c.name, ...TYPES[c.type] })),
    formats,
  );
}

/**
 * The DataRows and CommandComplete of a result, with a leading RowDescription when
 * `describe` is set (simple protocol; in the extended protocol Describe sends it).
 */
export function encodeResult(result: ResultSet, options: { describe: boolean; formats?: number[] }): Buffer {
  const formats = options.formats ?? [];
  const out: Buffer[] = [];
  const cols = result.columns;
  if (cols) {
    if (options.describe) out.push(describeColumns(cols, formats));
    for (const row of result.rows) {
      out.push(dataRow(cols.map((c, i) => encodeCell(row[i] ?? null, c.type, formatOf(formats, i)))));
    }
  }
  out.push(commandComplete(result.tag));
  return Buffer.concat(out);
}

function formatOf(formats: number[], i: number): number {
  if (formats.length === 0) return 0;
  if (formats.length === 1) return formats[0]!;
  return formats[i] ?? 0;
}

/** A value in PostgreSQL's text output format, or its binary send format when asked for. */
export function encodeCell(value: Cell, type: ColumnType, format: number): Buffer | null {
  if (value === null) return null;
  if (format === 1) return encodeBinary(value, type);
  if (typeof value === 'boolean') return Buffer.from(value ? 't' : 'f');
  if (type === 'float8' && typeof value === 'number') return Buffer.from(float8Text(value));
  return Buffer.from(String(value), 'utf8');
}

function encodeBinary(value: Exclude<Cell, null>, type: ColumnType): Buffer {
  switch (type) {
    case 'text':
      return Buffer.from(typeof value === 'boolean' ? (value ? 't' : 'f') : String(value), 'utf8');
    case 'bool':
      return Buffer.from([value === true || value === 't' || value === 'true' ? 1 : 0]);
    case 'int4': {
      const b = Buffer.alloc(4);
      b.writeInt32BE(Number(value));
      return b;
    }
    case 'int8': {
      const b = Buffer.alloc(8);
      b.writeBigInt64BE(BigInt(typeof value === 'boolean' ? Number(value) : value));
      return b;
    }
    case 'float8': {
      const b = Buffer.alloc(8);
      b.writeDoubleBE(Number(value));
      return b;
    }
  }
}

function float8Text(n: number): string {
  if (Number.isNaN(n)) return 'NaN';
  if (n === Infinity) return 'Infinity';
  if (n === -Infinity) return '-Infinity';
  return String(n);
}
