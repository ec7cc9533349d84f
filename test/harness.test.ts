/**
 * The test harness itself: the shared throwaway cluster, its roles and authentication
 * methods, the helpers on Cluster, and private clusters with their own settings.
 */
import { existsSync } from 'node:fs';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULT_PGBG_ROLES, ROLE_PASSWORDS, getCluster, pgBackgroundChoiceFromEnv, pgBackgroundNames, pgErrorOf, sqlstateOf, startCluster, type Cluster } from './harness/index.js';

const cluster = getCluster();
const realAvailable = existsSync('/usr/share/postgresql/15/extension/pg_background.control');

describe('shared cluster', () => {
  it('is a running PostgreSQL 15 on 127.0.0.1 with the test settings', async () => {
    expect(cluster.host).toBe('127.0.0.1');
    expect(cluster.port).toBeGreaterThan(0);
    expect(existsSync(cluster.socketDir)).toBe(true);
    expect(existsSync(cluster.dataDir)).toBe(true);
    const r = await cluster.query<{ v: string; mwp: string; mc: string; fsync: string; sc: string; fpw: string }>(
      `select current_setting('server_version_num') v, current_setting('max_worker_processes') mwp,
              current_setting('max_connections') mc, current_setting('fsync') fsync,
              current_setting('synchronous_commit') sc, current_setting('full_page_writes') fpw`,
    );
    const row = r.rows[0]!;
    expect(Number(row.v)).toBeGreaterThanOrEqual(150000);
    expect(Number(row.v)).toBeLessThan(160000);
    expect(row).toMatchObject({ mwp: '24', mc: '200', fsync: 'off', sc: 'off', fpw: 'off' });
  });

  it('also listens on its own Unix socket directory', async () => {
    const client = new pg.Client({ host: cluster.socketDir, port: cluster.port, user: 'alice', database: 'app' });
    await client.connect();
    try {
      const r = await client.query<{ u: string; addr: string | null }>('select current_user u, inet_client_addr()::text addr');
      expect(r.rows[0]).toEqual({ u: 'alice', addr: null });
    } finally {
      await client.end();
    }
  });

  it('has the app database owned by postgres, where every role may create objects in public', async () => {
    const owner = await cluster.query<{ owner: string }>(
      `select pg_get_userbyid(datdba) owner from pg_database where datname = 'app'`,
    );
    expect(owner.rows[0]!.owner).toBe('postgres');
    const table = `harness_${process.pid}_${Date.now()}`;
    await cluster.query(`create table ${table}(a int)`, [], { user: 'bob' });
    await cluster.query(`drop table ${table}`, [], { user: 'bob' });
  });

  it('installs the pg_background that PGBG_TEST_PG_BACKGROUND asks for (default: the server\'s, or the stand-in)', async () => {
    // Computed here from the environment, independently of the harness's own parsing.
    const asked = process.env.PGBG_TEST_PG_BACKGROUND || (process.env.PGBG_TEST_STANDIN === '1' ? 'standin' : 'auto');
    expect(cluster.requested).toBe(asked);
    const defaults = await cluster.query<{ v: string }>(`select default_version v from pg_available_extensions where name = 'pg_background'`);
    const serverDefault = defaults.rows[0]?.v ?? null;
    const expectedKind = asked === 'standin' || (asked === 'auto' && !realAvailable) ? 'standin' : 'real';
    expect(cluster.pgBackground).toBe(expectedKind);
    const expectedVersion = asked === '1.8' || asked === '2.0' ? asked : expectedKind === 'real' ? serverDefault : '1.8';
    expect(cluster.extVersion).toBe(expectedVersion);
    const ext = await cluster.query(`select extversion from pg_extension where extname = 'pg_background'`);
    const fn = async (sig: string) => (await cluster.query<{ f: string | null }>(`select to_regprocedure($1)::text f`, [`public.${sig}`])).rows[0]!.f;
    if (cluster.pgBackground === 'real') {
      expect(ext.rows).toEqual([{ extversion: expectedVersion }]);
    } else {
      // The stand-in is a fixture, never registered as the extension.
      expect(ext.rowCount).toBe(0);
      const dblink = await cluster.query(`select 1 from pg_extension where extname = 'dblink'`);
      expect(dblink.rowCount).toBe(1);
    }
    if (expectedVersion === '2.0') {
      // 2.0: the unsuffixed names are the handle API; wait_v2_timeout and the v1 API are gone.
      expect(await fn('pg_background_wait(integer,bigint,integer)')).toBe('pg_background_wait(integer,bigint,integer)');
      expect(await fn('pg_background_wait_v2_timeout(integer,bigint,integer)')).toBeNull();
      const ret = await cluster.query<{ t: string }>(`select prorettype::regtype::text t from pg_proc where oid = 'public.pg_background_launch(text,integer)'::regprocedure`);
      expect(ret.rows[0]!.t).toBe('pg_background_handle');
    } else {
      expect(await fn('pg_background_launch_v2(text,integer)')).toBe('pg_background_launch_v2(text,integer)');
      expect(await fn('pg_background_wait_v2_timeout(integer,bigint,integer)')).toBe('pg_background_wait_v2_timeout(integer,bigint,integer)');
    }
  });

  it('only databases cloned from the template have pg_background: template1 and postgres do not', async () => {
    for (const database of ['template1', 'postgres']) {
      const r = await cluster.query<{ n: string }>(
        `select count(*) n from pg_proc where proname in ('pg_background_launch', 'pg_background_launch_v2')`,
        [],
        { database },
      );
      expect(r.rows[0]!.n).toBe('0');
    }
  });

  it('reads PGBG_TEST_PG_BACKGROUND strictly, with PGBG_TEST_STANDIN=1 as an alias of standin', () => {
    expect(pgBackgroundChoiceFromEnv({})).toBe('auto');
    expect(pgBackgroundChoiceFromEnv({ PGBG_TEST_STANDIN: '1' })).toBe('standin');
    expect(pgBackgroundChoiceFromEnv({ PGBG_TEST_PG_BACKGROUND: '2.0' })).toBe('2.0');
    expect(pgBackgroundChoiceFromEnv({ PGBG_TEST_PG_BACKGROUND: '1.8' })).toBe('1.8');
    expect(pgBackgroundChoiceFromEnv({ PGBG_TEST_PG_BACKGROUND: 'standin', PGBG_TEST_STANDIN: '1' })).toBe('standin');
    expect(() => pgBackgroundChoiceFromEnv({ PGBG_TEST_PG_BACKGROUND: '2.O' })).toThrow(/not one of auto, standin, 1\.8, 2\.0/);
    expect(() => pgBackgroundChoiceFromEnv({ PGBG_TEST_PG_BACKGROUND: '2.0', PGBG_TEST_STANDIN: '1' })).toThrow(/contradicts/);
  });

  it('grants pg_background to the default roles through pgbackground_role', async () => {
    const r = await cluster.query<{ rolname: string }>(
      `select m.rolname from pg_auth_members am join pg_roles g on g.oid = am.roleid join pg_roles m on m.oid = am.member
       where g.rolname = 'pgbackground_role' order by 1`,
    );
    // Test files may add roles of their own; the default ones must all be there.
    expect(r.rows.map((x) => x.rolname)).toEqual(expect.arrayContaining([...DEFAULT_PGBG_ROLES]));
  });

  it('refuses to stop the shared cluster from a test file', async () => {
    await expect(cluster.stop()).rejects.toThrow(/shared/);
  });

  it('returns the server log tail', async () => {
    // Other test files share the cluster and its log: look for a line this test writes itself.
    const marker = `harness-log-marker-${process.pid}-${Date.now()}`;
    await cluster.query(`DO $$BEGIN RAISE LOG '${marker}'; END$$`);
    await new Promise((r) => setTimeout(r, 200));
    expect(cluster.logTail(50)).toContain(marker);
  });
});

describe('roles and authentication', () => {
  const scramRoles = ['postgres', 'alice', 'bob'];

  it('stores SCRAM verifiers for postgres/alice/bob and an md5 hash for md5user', async () => {
    const r = await cluster.query<{ rolname: string; kind: string | null }>(
      `select rolname, left(rolpassword, 13) kind from pg_authid
       where rolname in ('postgres','alice','bob','md5user','trustuser') order by rolname`,
    );
    const kinds = Object.fromEntries(r.rows.map((x) => [x.rolname, x.kind]));
    expect(kinds).toEqual({
      alice: 'SCRAM-SHA-256',
      bob: 'SCRAM-SHA-256',
      postgres: 'SCRAM-SHA-256',
      md5user: expect.stringMatching(/^md5[0-9a-f]{10}$/),
      trustuser: null,
    });
  });

  for (const user of [...scramRoles, 'md5user']) {
    it(`${user} logs in over TCP with the right password and gets 28P01 with a wrong one`, async () => {
      const ok = await cluster.query<{ u: string }>('select current_user u', [], { user });
      expect(ok.rows[0]!.u).toBe(user);
      const err = await pgErrorOf(cluster.query('select 1', [], { user, password: 'wrong-password' }));
      expect(err.code).toBe('28P01');
      expect(err.message).toMatch(/password authentication failed/);
    });
  }

  it('the authentication methods are the ones pg_hba.conf promises', async () => {
    const r = await cluster.query<{ user_name: string[]; auth_method: string; type: string }>(
      `select type, user_name, auth_method from pg_hba_file_rules order by line_number`,
    );
    expect(r.rows.map((x) => [x.type, x.user_name.join(','), x.auth_method])).toEqual([
      ['local', 'all', 'trust'],
      // replication lines (database "replication"), for clusters started with wal senders
      ['local', 'all', 'trust'],
      ['host', 'all', 'scram-sha-256'],
      ['host', 'trustuser', 'trust'],
      ['host', 'md5user', 'md5'],
      ['host', 'all', 'scram-sha-256'],
    ]);
  });

  it('trustuser logs in over TCP without a password', async () => {
    const r = await cluster.query<{ u: string }>('select current_user u', [], { user: 'trustuser' });
    expect(r.rows[0]!.u).toBe('trustuser');
    expect(ROLE_PASSWORDS.trustuser).toBeUndefined();
  });

  it('an unknown role is refused', async () => {
    expect(await sqlstateOf(cluster.query('select 1', [], { user: 'nobody_here', password: 'x' }))).toBe('28P01');
  });
});

describe('helpers', () => {
  it('url() gives a connection string with the known password', async () => {
    const client = new pg.Client({ connectionString: cluster.url('alice') });
    await client.connect();
    try {
      const r = await client.query<{ u: string; d: string }>('select current_user u, current_database() d');
      expect(r.rows[0]).toEqual({ u: 'alice', d: 'app' });
    } finally {
      await client.end();
    }
    expect(cluster.url('trustuser')).toBe(`postgres://trustuser@127.0.0.1:${cluster.port}/app`);
    expect(cluster.url('bob', 'postgres', 'p@ss')).toBe(`postgres://bob:p%40ss@127.0.0.1:${cluster.port}/postgres`);
  });

  it('psql() runs the real psql over TCP, with stdin and exit status', async () => {
    const r = await cluster.psql(['-tA', '-c', 'select current_user, current_database()'], { user: 'bob' });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('bob|app');

    const viaStdin = await cluster.psql(['-tA', '-v', 'ON_ERROR_STOP=1'], { input: 'select 40 + 2;\n' });
    expect(viaStdin.stdout.trim()).toBe('42');

    const bad = await cluster.psql(['-c', 'select 1'], { user: 'alice', password: 'nope' });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/password authentication failed for user "alice"/);
  });

  it('createDatabase() clones app with pg_background, isolated from app', async () => {
    const db = await cluster.createDatabase();
    const r = await cluster.query<{ d: string; f: string | null }>(
      `select current_database() d, to_regprocedure('pg_background_launch_v2(text,integer)')::text f`,
      [],
      { user: 'alice', database: db },
    );
    expect(r.rows[0]).toEqual({ d: db, f: 'pg_background_launch_v2(text,integer)' });
    await cluster.query(`drop database "${db}"`);
  });

  it('grantPgBackground() gives a new role the pg_background API', async () => {
    const role = `carol_${process.pid}_${Date.now().toString(36)}`;
    await cluster.query(`create role ${role} login password 'carol-secret'`);
    try {
      const opts = { user: role, password: 'carol-secret' };
      const n = pgBackgroundNames(cluster);
      const denied = await pgErrorOf(cluster.query(`select ${n.launch}('select 1')`, [], opts));
      expect(denied.code).toBe('42501');
      expect(denied.message).toBe(`permission denied for function ${n.launch}`);
      await cluster.grantPgBackground(role);
      const r = await cluster.query<{ x: number }>(
        `select r.x from (select ${n.launch}('select 7') h) s, ${n.result}((s.h).pid, (s.h).cookie) as r(x int)`,
        [],
        opts,
      );
      expect(r.rows).toEqual([{ x: 7 }]);
    } finally {
      await cluster.query(`drop owned by ${role}; drop role ${role}`);
    }
  });
});

describe('private clusters', () => {
  const started: Cluster[] = [];
  afterAll(async () => {
    for (const c of started) await c.stop().catch(() => undefined);
  });

  it('start with extra settings, and stop() removes everything', async () => {
    const c = await startCluster({ settings: { max_worker_processes: '9', application_name: 'custom app' } });
    started.push(c);
    expect(c.port).not.toBe(cluster.port);
    const r = await c.query<{ mwp: string; app: string }>(
      `select current_setting('max_worker_processes') mwp, current_setting('application_name') app`,
      [],
      { user: 'alice' },
    );
    expect(r.rows[0]).toEqual({ mwp: '9', app: 'custom app' });
    await c.stop();
    started.pop();
    expect(existsSync(c.baseDir)).toBe(false);
    await expect(c.query('select 1')).rejects.toThrow(/ECONNREFUSED/);
  });

  it('a server that cannot start is reported with the reason from its log', async () => {
    const err = await startCluster({ settings: { shared_buffers: 'lots' } }).then(
      () => null,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).toMatch(/pg_ctl start failed/);
    expect(err!.message).toMatch(/invalid value for parameter "shared_buffers": "lots"/);
  });
});
