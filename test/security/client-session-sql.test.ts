/**
 * Statements the proxy itself runs on a client's session mean the same whatever that session's
 * settings (issue 11, item 2): run here directly on sessions with hostile but legal settings.
 *
 *   npx vitest run test/security/client-session-sql.test.ts
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_CHECK_SQL } from '../../src/admin/admin-auth.js';
import { PgError } from '../../src/protocol/errors.js';
import { raiseStatement } from '../../src/session/raise-statement.js';
import { getCluster, pgErrorOf } from '../harness/index.js';
import { registryDatabase } from '../support/jobs.js';

const cluster = getCluster();
let db: string;
const open: pg.Client[] = [];

async function session(user: string, options?: string): Promise<pg.Client> {
  const c = new pg.Client({ ...cluster.clientConfig({ user, database: db }), ...(options ? { options } : {}) });
  await c.connect();
  open.push(c);
  return c;
}

beforeAll(async () => {
  db = await registryDatabase(cluster);
});
afterAll(async () => {
  for (const c of open) await c.end().catch(() => undefined);
});

describe('statements the proxy runs on client sessions', () => {
  it('a refusal raised in the session keeps its exact text with standard_conforming_strings off', async () => {
    const c = await session('alice', '-c standard_conforming_strings=off');
    const message = "refused: C:\\dir\\ and it's 'quoted' \\";
    const e = await pgErrorOf(c.query(raiseStatement(new PgError('0A000', message, 'detail \\n', 'hint \\'))));
    expect(e.code).toBe('0A000');
    expect(e.message).toBe(message);
    expect(e.detail).toBe('detail \\n');
    expect(e.hint).toBe('hint \\');
  });

  it('the admin check answers the truth under a shadowing search_path (operator, pg_has_role)', async () => {
    await cluster.query(`GRANT CREATE ON DATABASE "${db}" TO alice`, [], { database: db });
    const setup = await session('alice');
    await setup.query('CREATE SCHEMA css_evil');
    await setup.query(`CREATE FUNCTION css_evil.eq(name, name) RETURNS boolean LANGUAGE sql AS 'SELECT true'`);
    await setup.query('CREATE OPERATOR css_evil.= (LEFTARG = name, RIGHTARG = name, FUNCTION = css_evil.eq)');
    await setup.query(`CREATE FUNCTION css_evil.pg_has_role(name, name, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'`);
    const c = await session('alice', '-c search_path=css_evil,pg_catalog');
    const r = await c.query(ADMIN_CHECK_SQL);
    expect(r.rows).toEqual([{ role: 'alice', superuser: false, admin_member: false }]);
  });
});
