import type { ParsedStatement } from './sql-parser.js';

export interface Classification {
  /** Command tag kind as PostgreSQL names it: UPDATE, CREATE INDEX, VACUUM, ... */
  kind: string;
  /** False for statements that refuse to run inside a transaction block or a function. */
  transactional: boolean;
  /** How a backgrounded statement's rows can be captured, if it returns any. */
  rows: 'none' | 'subquery' | 'cte';
  /**
   * Tables a utility statement names. Parse checks names only for planned statements, so the
   * proxy checks these itself before it hands out a job id.
   */
  relations: string[];
  /**
   * CREATE INDEX CONCURRENTLY name ...: the index's name (quoted), so that the registry can read
   * the build's outcome from the catalog when nobody could read it from the worker.
   */
  createdIndex?: string;
}

const SIMPLE_KINDS: Record<string, string> = {
  InsertStmt: 'INSERT',
  UpdateStmt: 'UPDATE',
  DeleteStmt: 'DELETE',
  MergeStmt: 'MERGE',
  SelectStmt: 'SELECT',
  RefreshMatViewStmt: 'REFRESH MATERIALIZED VIEW',
  ClusterStmt: 'CLUSTER',
  CopyStmt: 'COPY',
  CreateStmt: 'CREATE TABLE',
  AlterTableStmt: 'ALTER TABLE',
  TruncateStmt: 'TRUNCATE',
  CallStmt: 'CALL',
  DoStmt: 'DO',
  ExplainStmt: 'EXPLAIN',
  CreatedbStmt: 'CREATE DATABASE',
  DropdbStmt: 'DROP DATABASE',
  AlterSystemStmt: 'ALTER SYSTEM',
  TransactionStmt: 'TRANSACTION',
  LockStmt: 'LOCK TABLE',
  VariableSetStmt: 'SET',
  ListenStmt: 'LISTEN',
  NotifyStmt: 'NOTIFY',
  PrepareStmt: 'PREPARE',
  ExecuteStmt: 'EXECUTE',
  DeallocateStmt: 'DEALLOCATE',
  DeclareCursorStmt: 'DECLARE CURSOR',
  FetchStmt: 'FETCH',
  CreateTableAsStmt: 'CREATE TABLE AS',
  ReindexStmt: 'REINDEX',
  DropStmt: 'DROP',
};

/** Statements a worker cannot wrap in the job's transaction (DESIGN.md decision 4). */
function isNonTransactional(type: string, node: Record<string, unknown>): boolean {
  switch (type) {
    case 'VacuumStmt':
      return node.is_vacuumcmd === true; // ANALYZE alone may run in a transaction block
    case 'CreatedbStmt':
    case 'DropdbStmt':
    case 'AlterSystemStmt':
    case 'CallStmt': // a procedure may COMMIT
    case 'DoStmt': // a DO block may COMMIT
      return true;
    case 'IndexStmt':
    case 'DropStmt':
      return node.concurrent === true;
    case 'ReindexStmt':
      return (
        hasOption(node.params, 'concurrently') ||
        node.kind === 'REINDEX_OBJECT_DATABASE' ||
        node.kind === 'REINDEX_OBJECT_SYSTEM'
      );
    case 'ClusterStmt':
      return node.relation === undefined; // CLUSTER of every table commits per table
    case 'AlterTableStmt':
      return JSON.stringify(node.cmds ?? []).includes('"concurrent":true');
    default:
      return false;
  }
}

function hasOption(list: unknown, name: string): boolean {
  if (!Array.isArray(list)) return false;
  return list.some((o) => (o as { DefElem?: { defname?: string } }).DefElem?.defname === name);
}

export function classify(parsed: ParsedStatement): Classification {
  const [type, node] = Object.entries(parsed.stmt)[0] as [string, Record<string, unknown>];
  let kind = SIMPLE_KINDS[type];
  if (type === 'VacuumStmt') kind = node.is_vacuumcmd ? 'VACUUM' : 'ANALYZE';
  else if (type === 'IndexStmt') kind = 'CREATE INDEX';
  else if (type === 'DropStmt') kind = dropKind(node);
  else if (type === 'CreateTableAsStmt') kind = node.objtype === 'OBJECT_MATVIEW' ? 'CREATE MATERIALIZED VIEW' : 'CREATE TABLE AS';
  else if (type === 'TransactionStmt') kind = String(node.kind ?? 'TRANSACTION').replace(/^TRANS_STMT_/, '').replace(/_/g, ' ');
  kind ??= genericKind(type);
  let rows: Classification['rows'] = 'none';
  if (type === 'SelectStmt' && !node.intoClause) rows = 'subquery';
  else if ((type === 'InsertStmt' || type === 'UpdateStmt' || type === 'DeleteStmt') && Array.isArray(node.returningList) && node.returningList.length) rows = 'cte';
  const out: Classification = { kind, transactional: !isNonTransactional(type, node), rows, relations: utilityRelations(type, node) };
  if (type === 'IndexStmt' && node.concurrent === true && typeof node.idxname === 'string' && node.idxname) out.createdIndex = quoteIdent(node.idxname);
  return out;
}

interface RangeVar {
  schemaname?: string;
  relname?: string;
}

function utilityRelations(type: string, node: Record<string, unknown>): string[] {
  const vars: (RangeVar | undefined)[] = [];
  if (type === 'VacuumStmt' && Array.isArray(node.rels)) {
    for (const r of node.rels) vars.push((r as { VacuumRelation?: { relation?: RangeVar } }).VacuumRelation?.relation);
  } else if (['IndexStmt', 'ReindexStmt', 'ClusterStmt', 'RefreshMatViewStmt'].includes(type)) {
    vars.push(node.relation as RangeVar | undefined);
  }
  return vars
    .filter((v): v is RangeVar => Boolean(v?.relname))
    .map((v) => (v.schemaname ? `${quoteIdent(v.schemaname)}.${quoteIdent(v.relname!)}` : quoteIdent(v.relname!)));
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

function dropKind(node: Record<string, unknown>): string {
  const t = String(node.removeType ?? 'OBJECT_').replace(/^OBJECT_/, '').replace(/_/g, ' ');
  return `DROP ${t}`;
}

/** CreateFooStmt → CREATE FOO, AlterFooBarStmt → ALTER FOO BAR. */
function genericKind(type: string): string {
  return type
    .replace(/Stmt$/, '')
    .replace(/([a-z])([A-Z])/g, '$1 $2')
    .toUpperCase();
}
