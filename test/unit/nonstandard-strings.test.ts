import { beforeAll, describe, expect, it } from 'vitest';
import { JobRouter } from '../../src/rules/job-router.js';
import { loadSqlParser } from '../../src/rules/sql-parser.js';
import { asStandardStrings } from '../../src/rules/nonstandard-strings.js';
import { parseHint } from '../../src/rules/hint.js';
import type { Route } from '../../src/rules/route.js';

const on = { user: 'alice', database: 'app', applicationName: 'psql' };
const off = { ...on, standardConformingStrings: false };
const router = new JobRouter([]);

function plan(route: Route) {
  if (route.action !== 'background') throw new Error(`expected background, got ${route.action}`);
  return route.plan;
}

beforeAll(async () => {
  await loadSqlParser();
});

describe('standard_conforming_strings = off (issue 11, item 9)', () => {
  it("a hinted statement with \\' in a plain literal is backgrounded, its text unchanged", () => {
    const sql = "/*+ background */ INSERT INTO t VALUES ('it\\'s', 'x')";
    const p = plan(router.route(sql, off));
    expect(p.kind).toBe('INSERT');
    expect(p.statements).toEqual(["INSERT INTO t VALUES ('it\\'s', 'x')"]);
    // Lexed as the server would with the setting on, the same text is no complete statement.
    expect(router.route(sql, on).action).not.toBe('background');
  });

  it('a hint after a literal that ends in \\\' is still found, and $n after it still counts', () => {
    const p = plan(router.route("UPDATE t SET v = 'a\\'' WHERE id = $1 /*+ background */", off));
    expect(p.kind).toBe('UPDATE');
    expect(p.params.map((r) => r.index)).toEqual([1]);
  });

  it('the lexing copy has the same length and changes only escaped quotes in plain and N literals', () => {
    const cases: [string, string][] = [
      ["'it\\'s'", "'it\\_s'"],
      ["N'it\\'s'", "N'it\\_s'"],
      ["'a\\\\' || 'b'", "'a\\\\' || 'b'"],
      ["E'it\\'s'", "E'it\\'s'"], // the scanner reads E'' escapes itself
      ["B'01' || X'ff'", "B'01' || X'ff'"],
      ["-- it\\'s\nSELECT 1", "-- it\\'s\nSELECT 1"],
      ["/* it\\'s /* nested */ */ SELECT 1", "/* it\\'s /* nested */ */ SELECT 1"],
      ["SELECT $q$it\\'s$q$, $1", "SELECT $q$it\\'s$q$, $1"],
      ['SELECT "a\\" FROM t WHERE v = \'\\\'\'', 'SELECT "a\\" FROM t WHERE v = \'\\_\''],
      ["SELECT 'café\\'ü'", "SELECT 'café\\_ü'"],
    ];
    for (const [input, expected] of cases) {
      const out = asStandardStrings(input);
      expect(out, input).toBe(expected);
      expect(Buffer.byteLength(out), input).toBe(Buffer.byteLength(input));
    }
  });
});

describe('hint options are validated in full at submission (issue 11, item 6)', () => {
  it('refuses a timeout beyond statement_timeout range and a not_before the server cannot read', () => {
    expect(() => parseHint('/*+ background(timeout=30d) */')).toThrow(/out of range/);
    expect(() => parseHint('/*+ background(timeout=2147483648ms) */')).toThrow(/out of range/);
    expect(parseHint('/*+ background(timeout=2147483647ms) */')).toEqual({ mode: 'background', options: { timeoutMs: 2147483647 } });
    expect(() => parseHint("/*+ background(not_before='+275000-01-01T00:00:00Z') */")).toThrow(/out of range/);
    try {
      parseHint('/*+ background(timeout=30d) */');
    } catch (err) {
      expect((err as { code: string }).code).toBe('22023');
    }
  });
});
