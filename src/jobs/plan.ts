/** Options a hint or a rule sets on one job. */
export interface JobOptions {
  timeoutMs?: number;
  key?: string;
  priority?: number;
  notBefore?: string;
  /** Attempts on transient errors (transactional jobs only). */
  maxAttempts?: number;
  /** Local-time window the job may start in (from a rule). */
  window?: { from: string; to: string; timeZone: string };
  /** What happens to the job while queued if its client goes away (from a rule). */
  onDisconnect?: 'keep' | 'cancel';
}

/** Where a `$n` parameter reference stands in the statement text (byte offsets). */
export interface ParamRef {
  index: number;
  start: number;
  end: number;
}

/** Everything decided about a statement before it touches the server. */
export interface JobPlan {
  /** The statement as the client sent it (hint comments included). */
  sql: string;
  /** Individual statements of a multi-statement string, as text. */
  statements: string[];
  /** Command tag kind, e.g. "UPDATE", "CREATE INDEX", "VACUUM". */
  kind: string;
  /** False for statements that cannot run inside a transaction block (VACUUM, ... CONCURRENTLY). */
  transactional: boolean;
  /** True when the statement returns rows (SELECT, ... RETURNING) to be kept for pgbg.result. */
  returnsRows: boolean;
  /** How the worker captures those rows: wrap as a subquery (SELECT) or a CTE (DML ... RETURNING). */
  rowsVia: 'none' | 'subquery' | 'cte';
  rule: string | null;
  options: JobOptions;
  params: ParamRef[];
  /** Relations the statement names that must exist (checked for utility statements). */
  relations: string[];
  /** The (quoted) name of the index a CREATE INDEX CONCURRENTLY builds, when it names one. */
  createdIndex?: string;
}
