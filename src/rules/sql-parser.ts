import { loadModule, parseSync, scanSync } from '@libpg-query/parser';

/** PostgreSQL's own scanner and grammar (libpg_query compiled to WebAssembly). */
export interface ScanToken {
  start: number;
  end: number;
  text: string;
  tokenName: string;
}

export interface ParsedStatement {
  /** One key: the parse node type, e.g. UpdateStmt. */
  stmt: Record<string, Record<string, unknown>>;
  stmt_location?: number;
  stmt_len?: number;
}

let ready: Promise<void> | null = null;

/** Loads the WebAssembly module once; call before the first scan or parse. */
export function loadSqlParser(): Promise<void> {
  ready ??= loadModule();
  return ready;
}

/** Token offsets are byte offsets into the UTF-8 text. */
export function scan(sql: string): ScanToken[] {
  return (scanSync(sql) as { tokens: ScanToken[] }).tokens;
}

export function parseStatements(sql: string): ParsedStatement[] {
  return ((parseSync(sql) as { stmts?: ParsedStatement[] }).stmts ?? []) as ParsedStatement[];
}
