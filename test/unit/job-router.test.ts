import { beforeAll, describe, expect, it } from 'vitest';
import { JobRouter } from '../../src/rules/job-router.js';
import { loadSqlParser } from '../../src/rules/sql-parser.js';
import { validateConfig } from '../../src/config/load.js';
import type { Route } from '../../src/rules/route.js';

const ctx = { user: 'alice', database: 'app', applicationName: 'psql' };
const plain = new JobRouter([]);

function plan(route: Route) {
  if (route.action !== 'background') throw new Error(`expected background, got ${route.action}`);
  return route.plan;
}

beforeAll(async () => {
  await loadSqlParser();
});

describe('hint comments', () => {
  it('forwards statements without a hint untouched', () => {
    expect(plain.route('UPDATE t SET v = 1', ctx).action).toBe('forward');
  });

  it('accepts a leading hint in any case, and a trailing one after the semicolon', () => {
    expect(plan(plain.route('/*+ background */ UPDATE t SET v = 1', ctx)).kind).toBe('UPDATE');
    expect(plan(plain.route('/*+ BACKGROUND */VACUUM t', ctx)).kind).toBe('VACUUM');
    expect(plan(plain.route("UPDATE t SET v = 1; /*+ background */", ctx)).statements).toEqual(['UPDATE t SET v = 1']);
    expect(plan(plain.route("SELECT 1 /*traceparent='00-ab'*/ /*+ background */", ctx)).kind).toBe('SELECT');
  });

  it('ignores hint text inside string literals, dollar quotes, nested comments and mid-statement', () => {
    expect(plain.route("SELECT '/*+ background */'", ctx).action).toBe('forward');
    expect(plain.route('SELECT $q$ /*+ background */ $q$', ctx).action).toBe('forward');
    expect(plain.route('/* outer /*+ background */ still outer */ SELECT 1', ctx).action).toBe('forward');
    expect(plain.route('SELECT /*+ background */ 1', ctx).action).toBe('forward');
    expect(plain.route('-- /*+ background */\nSELECT 1', ctx).action).toBe('forward');
  });

  it('reads options and rejects unknown or malformed ones with 22023', () => {
    const p = plan(plain.route("/*+ background(timeout=10min, key=nightly-42, priority=5) */ UPDATE t SET v = 1", ctx));
    expect(p.options).toEqual({ timeoutMs: 600_000, key: 'nightly-42', priority: 5 });
    const quoted = plan(plain.route("/*+ background(key='it''s') */ UPDATE t SET v = 1", ctx));
    expect(quoted.options.key).toBe("it's");
    expect(plan(plain.route('/*+ background(max_attempts=5) */ UPDATE t SET v = 1', ctx)).options.maxAttempts).toBe(5);
    for (const bad of ['/*+ background(colour=red) */ SELECT 1', '/*+ background(timeout=soon) */ SELECT 1', '/*+ backgrund */ SELECT 1',
                       '/*+ background(max_attempts=0) */ SELECT 1', '/*+ background(max_attempts=2.5) */ SELECT 1']) {
      const r = plain.route(bad, ctx);
      expect(r.action).toBe('reject');
      if (r.action === 'reject') expect(r.error.code).toBe('22023');
    }
  });

  it('reports a syntax error in a hinted statement at once (42601) and refuses multi-statement strings', () => {
    const r = plain.route('/*+ background */ UPDAT t SET v = 1', ctx);
    expect(r.action === 'reject' && r.error.code).toBe('42601');
    const m = plain.route('/*+ background */ UPDATE t SET v = 1; UPDATE t SET v = 2', ctx);
    expect(m.action === 'reject' && m.error.code).toBe('0A000');
    const s = plain.route('/*+ background */ BEGIN', ctx);
    expect(s.action === 'reject' && s.error.code).toBe('0A000');
  });
});

describe('classification', () => {
  it('knows transactional from non-transactional statements and how rows come back', () => {
    const cases: [string, string, boolean, string][] = [
      ['UPDATE t SET v = 1 RETURNING id', 'UPDATE', true, 'cte'],
      ['SELECT * FROM t', 'SELECT', true, 'subquery'],
      ['VACUUM (ANALYZE) t', 'VACUUM', false, 'none'],
      ['ANALYZE t', 'ANALYZE', true, 'none'],
      ['CREATE INDEX CONCURRENTLY i ON t (v)', 'CREATE INDEX', false, 'none'],
      ['CREATE INDEX i ON t (v)', 'CREATE INDEX', true, 'none'],
      ['REINDEX (CONCURRENTLY) TABLE t', 'REINDEX', false, 'none'],
      ['REFRESH MATERIALIZED VIEW mv', 'REFRESH MATERIALIZED VIEW', true, 'none'],
      ['DROP INDEX CONCURRENTLY i', 'DROP INDEX', false, 'none'],
      ['CALL p()', 'CALL', false, 'none'],
      ['WITH x AS (SELECT 1) DELETE FROM t USING x', 'DELETE', true, 'none'],
    ];
    for (const [sql, kind, transactional, rows] of cases) {
      const p = plan(plain.route(`/*+ background */ ${sql}`, ctx));
      expect({ sql, kind: p.kind, transactional: p.transactional, rows: p.rowsVia }).toEqual({ sql, kind, transactional, rows });
    }
  });

  it('records $n parameter positions as byte offsets in the statement text', () => {
    const p = plan(plain.route("/*+ background */ UPDATE t SET v = 'é' || $1 WHERE id = $2", ctx));
    const stmt = Buffer.from(p.statements[0]);
    expect(p.params.map((r) => [r.index, stmt.subarray(r.start, r.end).toString()])).toEqual([
      [1, '$1'],
      [2, '$2'],
    ]);
  });
});

describe('rules', () => {
  const config = validateConfig({
    rules: [
      { name: 'no-drop', match: { kinds: ['DROP TABLE'] }, action: 'reject' },
      { name: 'maintenance', match: { kinds: ['VACUUM', 'CREATE INDEX'], users: ['alice'] }, timeout: '2h', priority: 7 },
      { name: 'reports', match: { pattern: '^\\s*select .* from big_report', databases: ['app'] } },
    ],
  });
  const router = new JobRouter(config.rules);

  it('matches on kind, user and database, first match wins, with the rule options', () => {
    const p = plan(router.route('VACUUM t', ctx));
    expect(p.rule).toBe('maintenance');
    expect(p.options).toEqual({ timeoutMs: 7_200_000, priority: 7, onDisconnect: 'keep' });
    expect(router.route('VACUUM t', { ...ctx, user: 'bob' }).action).toBe('forward');
    expect(plan(router.route('select * from big_report', ctx)).rule).toBe('reports');
    expect(router.route('select * from big_report', { ...ctx, database: 'other' }).action).toBe('forward');
    expect(router.route('UPDATE t SET v = 1', ctx).action).toBe('forward');
  });

  it('rejects by rule with 42501, and a foreground hint opts out of rules', () => {
    const r = router.route('DROP TABLE t', ctx);
    expect(r.action === 'reject' && r.error.code).toBe('42501');
    expect(router.route('/*+ foreground */ VACUUM t', ctx).action).toBe('forward');
    expect(plan(router.route('/*+ background(priority=1) */ VACUUM t', ctx)).options.priority).toBe(1);
  });

  it('says whether a statement without a hint can be routed at all in a session (rules whose conditions hold)', () => {
    expect(plain.routesUnhinted(() => ctx)).toBe(false);
    // no-drop applies to everyone
    expect(router.routesUnhinted(() => ({ user: 'bob', database: 'other', applicationName: 'x' }))).toBe(true);
    const scoped = new JobRouter(
      validateConfig({ rules: [{ name: 'reports', match: { pattern: 'big_report', databases: ['app'], users: ['alice'] } }] }).rules,
    );
    expect(scoped.routesUnhinted(() => ctx)).toBe(true);
    expect(scoped.routesUnhinted(() => ({ ...ctx, user: 'bob' }))).toBe(false);
    expect(scoped.routesUnhinted(() => ({ ...ctx, database: 'other' }))).toBe(false);
  });
});
