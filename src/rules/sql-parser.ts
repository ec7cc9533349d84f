import v8 from 'node:v8';

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

type ParserModule = typeof import('@libpg-query/parser');

let parser: ParserModule | null = null;
let ready: Promise<void> | null = null;

/**
 * Loads the WebAssembly module once; call before the first scan or parse.
 *
 * The package instantiates its module when imported, so it is imported here and not at the top:
 * a process that never routes (the supervisor of several workers, a proxy with jobs disabled)
 * does not hold it (about 30 MiB resident).
 *
 * Liftoff only: V8 otherwise recompiles the hot parts of the 2 MB module with TurboFan in the
 * background after the first parses, which leaves about 50 MiB more resident in every process
 * that has parsed (code and the compiler's freed memory, measured: 132 against 81 MiB RSS after
 * 800 parses). The baseline code parses a hinted statement in about 150 us instead of 110 us,
 * small beside the ~1.5 ms a submission takes. The flag is read when a module is compiled, and
 * this is the process's only WebAssembly module that matters (it is set before the import).
 */
export function loadSqlParser(): Promise<void> {
  ready ??= (async () => {
    v8.setFlagsFromString('--liftoff-only');
    const mod = await import('@libpg-query/parser');
    await mod.loadModule();
    parser = mod;
  })();
  return ready;
}

function loaded(): ParserModule {
  if (!parser) throw new Error('the SQL parser is not loaded: await loadSqlParser() first');
  return parser;
}

/** Token offsets are byte offsets into the UTF-8 text. */
export function scan(sql: string): ScanToken[] {
  return (loaded().scanSync(sql) as { tokens: ScanToken[] }).tokens;
}

export function parseStatements(sql: string): ParsedStatement[] {
  return ((loaded().parseSync(sql) as { stmts?: ParsedStatement[] }).stmts ?? []) as ParsedStatement[];
}
