import type { Rule } from '../config/schema.js';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import type { JobOptions, JobPlan, ParamRef } from '../jobs/plan.js';
import type { Route, RoutingContext, StatementRouter } from './route.js';
import { isHintComment, parseHint, type Hint } from './hint.js';
import { classify } from './classify.js';
import { RuleMatcher } from './rule-matcher.js';
import { parseStatements, scan, type ScanToken } from './sql-parser.js';
import { asStandardStrings } from './nonstandard-strings.js';

const FORWARD: Route = { action: 'forward' };

/** Statements whose effect is on the session itself, which a worker's separate session cannot have. */
const SESSION_KINDS = new Set([
  'BEGIN', 'START', 'COMMIT', 'ROLLBACK', 'SAVEPOINT', 'RELEASE', 'PREPARE', 'COMMIT PREPARED', 'ROLLBACK PREPARED',
  'ROLLBACK TO', 'TRANSACTION', 'SET', 'LISTEN', 'UNLISTEN', 'NOTIFY', 'EXECUTE', 'DEALLOCATE', 'DECLARE CURSOR',
  'FETCH', 'CLOSE PORTAL', 'LOCK TABLE', 'DISCARD', 'VARIABLE SHOW', 'COPY',
]);

/**
 * Routes a statement: hint comments first (a /*+ foreground *\/ hint opts out of rules), then
 * the configured rules, first match wins. A statement with neither costs one substring search
 * (plus the session conditions of the rules, if any).
 */
export class JobRouter implements StatementRouter {
  private readonly rules: RuleMatcher;

  constructor(rules: readonly Rule[]) {
    this.rules = new RuleMatcher(rules);
  }

  routesUnhinted(ctx: () => RoutingContext): boolean {
    return !this.rules.empty && this.rules.forContext(ctx()).length > 0;
  }

  route(sql: string, ctx: RoutingContext): Route {
    const mayHint = sql.includes('/*+');
    const candidates = this.rules.empty ? [] : this.rules.forContext(ctx);
    if (!mayHint && candidates.length === 0) return FORWARD;
    try {
      // The scanner lexes as with standard_conforming_strings = on; under off, lex a copy in
      // which backslash-escaped quotes cannot end a literal (same offsets, see nonstandard-strings).
      const lexable = ctx.standardConformingStrings === false ? asStandardStrings(sql) : sql;
      return this.routeScanned(sql, lexable, mayHint, candidates);
    } catch (err) {
      if (err instanceof PgError) return { action: 'reject', error: err };
      throw err;
    }
  }

  private routeScanned(sql: string, lexable: string, mayHint: boolean, candidates: Rule[]): Route {
    let tokens: ScanToken[];
    try {
      tokens = scan(lexable);
    } catch {
      return FORWARD; // the server reports the lexical error in its own words
    }
    const body = tokens.filter((t) => t.tokenName !== 'C_COMMENT' && t.tokenName !== 'SQL_COMMENT');
    while (body.length && body[body.length - 1].text === ';') body.pop();
    if (body.length === 0) return FORWARD;
    const hint = mayHint ? findHint(tokens, body) : null;
    if (hint?.mode === 'foreground') return FORWARD;
    const firstWord = body[0].text.toUpperCase();
    let possible = candidates;
    if (!hint) {
      possible = candidates.filter((r) => RuleMatcher.mayMatch(r, firstWord, sql));
      if (possible.length === 0) return FORWARD;
    }
    let parsed;
    try {
      parsed = parseStatements(lexable);
    } catch (err) {
      if (!hint) return FORWARD;
      throw new PgError(SqlState.SyntaxError, (err as Error).message);
    }
    if (parsed.length !== 1) {
      if (!hint) return FORWARD;
      throw new PgError(
        SqlState.FeatureNotSupported,
        'a background job runs exactly one statement',
        `The hinted string holds ${parsed.length} statements.`,
        'Send each statement with its own hint.',
      );
    }
    const c = classify(parsed[0]);
    let rule: Rule | null = null;
    if (!hint) {
      rule = RuleMatcher.first(possible, c.kind, sql);
      if (!rule || rule.action === 'foreground') return FORWARD;
      if (rule.action === 'reject') {
        return {
          action: 'reject',
          error: new PgError(SqlState.InsufficientPrivilege, `${c.kind} statements are refused by pgbg-proxy rule "${rule.name}"`, undefined, 'Ask the database administrator, or run it elsewhere.'),
        };
      }
    }
    if (SESSION_KINDS.has(c.kind)) {
      throw new PgError(SqlState.FeatureNotSupported, `${c.kind} cannot run in the background`, 'It acts on the client’s own session, which a background worker does not share.');
    }
    const options: JobOptions = { ...(rule ? ruleOptions(rule) : {}), ...(hint?.mode === 'background' ? hint.options : {}) };
    return { action: 'background', plan: buildPlan(sql, body, tokens, c, rule?.name ?? null, options) };
  }
}

function ruleOptions(rule: Rule): JobOptions {
  const o: JobOptions = {};
  if (rule.timeout !== undefined) o.timeoutMs = rule.timeout;
  if (rule.priority !== undefined) o.priority = rule.priority;
  if (rule.maxAttempts !== undefined) o.maxAttempts = rule.maxAttempts;
  if (rule.window) o.window = { ...rule.window, timeZone: rule.timeZone };
  o.onDisconnect = rule.onDisconnect;
  return o;
}

/** A hint counts only before the statement's first token or after its last one. */
function findHint(tokens: ScanToken[], body: ScanToken[]): Hint | null {
  const first = body[0].start;
  const last = body[body.length - 1].end;
  let found: Hint | null = null;
  for (const t of tokens) {
    if (t.tokenName !== 'C_COMMENT' || !isHintComment(t.text)) continue;
    if (t.end > first && t.start < last) continue;
    const hint = parseHint(t.text);
    if (found && found.mode !== hint.mode) {
      throw new PgError(SqlState.InvalidParameterValue, 'conflicting background and foreground hints');
    }
    found = hint;
  }
  return found;
}

function buildPlan(
  sql: string,
  body: ScanToken[],
  tokens: ScanToken[],
  c: ReturnType<typeof classify>,
  rule: string | null,
  options: JobOptions,
): JobPlan {
  const bytes = Buffer.from(sql, 'utf8');
  const start = body[0].start;
  const end = body[body.length - 1].end;
  const params: ParamRef[] = tokens
    .filter((t) => t.tokenName === 'PARAM' && t.start >= start && t.end <= end)
    .map((t) => ({ index: Number(t.text.slice(1)), start: t.start - start, end: t.end - start }));
  const statement = bytes.subarray(start, end).toString('utf8');
  return {
    sql,
    statements: [statement],
    kind: c.kind,
    transactional: c.transactional,
    returnsRows: c.rows !== 'none',
    rowsVia: c.rows,
    rule,
    options,
    params,
    relations: c.relations,
    ...(c.createdIndex ? { createdIndex: c.createdIndex } : {}),
  };
}
