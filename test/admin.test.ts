import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { getCluster } from './harness/index.js';
import { startTestProxy, type TestProxy } from './support/proxy.js';
import { frame, rawExchange, startupPacket } from './support/wire.js';

/**
 * The admin console (src/admin): `psql -p PROXY -U ADMIN pgbg`. Logins are authenticated by the
 * server; only superusers, members of pgbg_admin and roles in admin.users get in.
 */

const cluster = getCluster();
let via: TestProxy;

/** A role of this file only, so that granting it pgbg_admin cannot change what other test files see. */
const OPERATOR = 'admin_console_operator';
const OPERATOR_PASSWORD = 'operator-secret';

beforeAll(async () => {
  via = await startTestProxy(cluster, {
    jobs: { registryUrl: cluster.url('postgres', 'app'), migrateOnStart: true },
    rules: [{ name: 'vacuum-bg', match: { kinds: ['VACUUM'], users: ['alice'] }, action: 'background', timeout: '10min', priority: 5 }],
  });
  await cluster.query(`DO $$BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${OPERATOR}') THEN
      CREATE ROLE ${OPERATOR} LOGIN PASSWORD '${OPERATOR_PASSWORD}';
    END IF;
  END$$`);
});
afterAll(async () => {
  await via?.close();
});

/** A node-postgres client on the console (database pgbg of the proxy). */
async function consoleClient(user = 'postgres', password?: string): Promise<pg.Client> {
  const client = new pg.Client({ ...via.clientConfig({ user, database: 'pgbg', password }), application_name: 'admin-test' });
  await client.connect();
  return client;
}

async function consoleQuery(sql: string): Promise<pg.QueryResult> {
  const client = await consoleClient();
  try {
    return await client.query(sql);
  } finally {
    await client.end();
  }
}

function configMap(rows: { key: string; value: string | null }[]): Map<string, string | null> {
  return new Map(rows.map((r) => [r.key, r.value]));
}

describe('who gets in', () => {
  it('lets a superuser in through psql, with real result sets', async () => {
    const r = await via.psql(['-At', '-F', '|', '-c', 'show help;'], { user: 'postgres', database: 'pgbg' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toContain('SHOW JOBS|active jobs and the last finished ones, with wait event and progress of running workers');
    expect(lines.map((l) => l.split('|')[0])).toEqual(
      expect.arrayContaining(['SHOW HELP', 'SHOW JOBS', 'SHOW LAUNCHERS', 'SHOW RULES', 'SHOW CLIENTS', 'SHOW STATS', 'SHOW CONFIG', 'CANCEL JOB id', 'RELOAD', 'PAUSE', 'RESUME']),
    );
    // the aligned format too: psql reads the RowDescription
    const table = await via.psql(['-c', 'SHOW RULES'], { user: 'postgres', database: 'pgbg' });
    expect(table.stdout).toMatch(/^\s*name\s*\|\s*action\s*\|\s*kinds/);
    expect(table.stdout).toMatch(/\(1 row\)/);
  });

  it('lets a superuser in through node-postgres; psql learns the server’s parameters', async () => {
    const client = await consoleClient();
    const r = await client.query('SHOW HELP');
    expect(r.command).toBe('SHOW');
    expect(r.fields.map((f) => f.name)).toEqual(['command', 'description']);
    expect(r.rows.length).toBeGreaterThanOrEqual(10);
    expect((client as any).processID).toBeGreaterThan(0);
    await client.end();
    // psql learned the server's version and the console's encoding from ParameterStatus
    const vars = await via.psql(['-c', '\\echo :SERVER_VERSION_NAME :ENCODING'], { user: 'postgres', database: 'pgbg', env: { PGCLIENTENCODING: 'LATIN1' } });
    expect(vars.stdout.trim()).toMatch(/^15\.\d+.* UTF8$/);
  });

  it('refuses a role that is not an admin with 28000', async () => {
    const err = await consoleClient('alice').catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('28000');
    expect(err.message).toBe('permission denied for the pgbg-proxy admin console');
    const r = await via.psql(['-c', 'SHOW HELP'], { user: 'alice', database: 'pgbg' });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/permission denied for the pgbg-proxy admin console/);
  });

  it('lets a member of pgbg_admin in (SCRAM relayed to the server)', async () => {
    const before = await consoleClient(OPERATOR, OPERATOR_PASSWORD).catch((e) => e);
    expect(before.code).toBe('28000');
    await cluster.query(`GRANT pgbg_admin TO ${OPERATOR}`);
    try {
      const client = await consoleClient(OPERATOR, OPERATOR_PASSWORD);
      const r = await client.query('SHOW CLIENTS');
      expect(r.rows.some((row) => row.kind === 'admin' && row.user === OPERATOR)).toBe(true);
      await client.end();
    } finally {
      await cluster.query(`REVOKE pgbg_admin FROM ${OPERATOR}`);
    }
  });

  it('lets roles listed in admin.users in, and answers a query pipelined behind the startup packet', async () => {
    const listed = await startTestProxy(cluster, { admin: { users: ['trustuser'] } });
    try {
      const startup = startupPacket(3 << 16, { user: 'trustuser', database: 'pgbg' });
      const query = frame('Q', Buffer.from('SHOW HELP\0'));
      const answer = await rawExchange(listed.port, Buffer.concat([startup, query, frame('X', Buffer.alloc(0))]));
      const types: string[] = [];
      for (let pos = 0; pos < answer.length; pos += 1 + answer.readInt32BE(pos + 1)) types.push(String.fromCharCode(answer[pos]!));
      expect(types[0]).toBe('R'); // AuthenticationOk (trust), relayed from the server
      expect(types).toContain('S');
      expect(types).toContain('K');
      expect(types.slice(types.indexOf('Z'))).toEqual(['Z', 'T', ...Array(types.filter((t) => t === 'D').length).fill('D'), 'C', 'Z']);
      expect(answer.toString('latin1')).toContain('server_version');
      // not listed on the default proxy
      expect((await via.psql(['-c', 'SHOW HELP'], { user: 'trustuser', database: 'pgbg' })).stderr).toMatch(/permission denied for the pgbg-proxy admin console/);
    } finally {
      await listed.close();
    }
  });

  it('survives a client that gives up during authentication (psql without a password)', async () => {
    const r = await via.psql(['-c', 'SHOW HELP'], { user: 'postgres', database: 'pgbg', password: '' });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/no password supplied/);
    expect((await consoleQuery('SHOW HELP')).rows.length).toBeGreaterThan(0);
  });

  it('passes the server’s own error for a wrong password', async () => {
    const err = await consoleClient('postgres', 'wrong').catch((e) => e);
    expect(err.code).toBe('28P01');
    expect(err.message).toMatch(/password authentication failed for user "postgres"/);
    const bad = await consoleClient('alice', 'wrong').catch((e) => e);
    expect(bad.code).toBe('28P01');
  });
});

describe('commands', () => {
  let admin: pg.Client;
  beforeAll(async () => {
    admin = await consoleClient();
  });
  afterAll(async () => {
    await admin?.end();
  });

  it('SHOW RULES lists the configured rules', async () => {
    const r = await admin.query('show rules;');
    expect(r.fields.map((f) => f.name)).toEqual(['name', 'action', 'kinds', 'pattern', 'databases', 'users', 'application_names', 'timeout', 'priority']);
    expect(r.rows).toEqual([
      { name: 'vacuum-bg', action: 'background', kinds: 'VACUUM', pattern: null, databases: null, users: 'alice', application_names: null, timeout: '10min', priority: 5 },
    ]);
  });

  it('SHOW CLIENTS lists client sessions and console sessions', async () => {
    const alice = await via.connect({ user: 'alice' });
    try {
      await alice.query('BEGIN');
      const r = await admin.query('SHOW CLIENTS');
      expect(r.fields.map((f) => f.name)).toEqual(['id', 'kind', 'user', 'database', 'application_name', 'started_at', 'tx_status', 'idle', 'adopted', 'pending_jobs', 'worker']);
      const client = r.rows.find((row) => row.kind === 'client' && row.user === 'alice');
      expect(client).toMatchObject({ database: 'app', tx_status: 'T', idle: true, adopted: false, pending_jobs: 0 });
      expect(via.proxy.relayPids()).toContain(client.worker);
      expect(new Date(client.started_at).getTime()).toBeGreaterThan(Date.now() - 60_000);
      expect(r.rows.find((row) => row.kind === 'admin')).toMatchObject({ user: 'postgres', database: 'pgbg', application_name: 'admin-test' });
    } finally {
      await alice.end();
    }
  });

  it('SHOW CONFIG shows the effective configuration and never a password', async () => {
    const r = await admin.query('SHOW CONFIG');
    expect(r.fields.map((f) => f.name)).toEqual(['key', 'value']);
    const config = configMap(r.rows);
    expect(config.get('upstream.port')).toBe(String(cluster.port));
    expect(config.get('admin.database')).toBe('pgbg');
    expect(config.get('admin.authDatabase')).toBe('postgres');
    expect(config.get('jobs.migrateOnStart')).toBe('true');
    expect(config.get('rules')).toBe('1 (see SHOW RULES)');
    expect(config.get('paused')).toBe('false');
    expect(config.get('jobs.registryUrl')).toBe(`postgres://postgres:********@${cluster.host}:${cluster.port}/app`);
    expect(JSON.stringify(r.rows)).not.toContain(':postgres@');
  });

  it('SHOW STATS shows the proxy’s counters', async () => {
    await via.query('SELECT 1', [], { user: 'alice' });
    const r = await admin.query('SHOW STATS');
    expect(r.fields.map((f) => f.name)).toEqual(['stat', 'labels', 'value']);
    const stats = r.rows.map((row) => `${row.stat}{${row.labels ?? ''}}`);
    expect(stats).toEqual(expect.arrayContaining(['paused{}', 'pgbg_statements_total{action=forwarded}', 'pgbg_bytes_total{direction=client_to_server}']));
    const forwarded = r.rows.find((row) => row.stat === 'pgbg_statements_total' && row.labels === 'action=forwarded');
    expect(forwarded.value).toBeGreaterThan(0);
    expect(r.rows.some((row) => String(row.stat).endsWith('_bucket'))).toBe(false);
  });

  it('PAUSE and RESUME flip the flag the job submission path reads', async () => {
    const paused = await admin.query('PAUSE');
    expect(paused.command).toBe('PAUSE');
    expect(paused.rows).toEqual([{ result: 'OK: launching of new jobs is paused' }]);
    expect(await via.proxy.isPaused()).toBe(true);
    try {
      expect(configMap((await admin.query('SHOW CONFIG')).rows).get('paused')).toBe('true');
      const stats = await admin.query('SHOW STATS');
      expect(stats.rows.find((row) => row.stat === 'paused').value).toBe(1);
      expect(stats.rows.find((row) => row.stat === 'pgbg_launching_paused').value).toBe(1);
      expect((await admin.query('PAUSE')).rows[0].result).toMatch(/already paused/);
    } finally {
      const resumed = await admin.query('RESUME');
      expect(resumed.rows).toEqual([{ result: 'OK: launching of new jobs resumed' }]);
    }
    expect(await via.proxy.isPaused()).toBe(false);
    expect(configMap((await admin.query('SHOW CONFIG')).rows).get('paused')).toBe('false');
  });

  it('RELOAD answers OK', async () => {
    const r = await admin.query('RELOAD');
    expect(r.command).toBe('RELOAD');
    expect(r.rows[0].result).toMatch(/^OK: /);
    expect((await admin.query('SHOW RULES')).rows).toHaveLength(1);
  });

  it('answers an unknown command with 42601 and a hint, and the session goes on', async () => {
    const err = await admin.query('SELECT 1').catch((e) => e);
    expect(err.code).toBe('42601');
    expect(err.message).toMatch(/unrecognized pgbg-proxy admin console command: "SELECT 1"/);
    expect(err.hint).toMatch(/SHOW JOBS.*CANCEL JOB id.*PAUSE/);
    expect((await admin.query('show   help')).rows.length).toBeGreaterThan(0);
  });

  it('keeps an interactive psql session going after an error', async () => {
    const r = await via.psql(['-At'], { user: 'postgres', database: 'pgbg', input: 'SHOW RULES;\nSELECT 1;\nPAUSE;\nRESUME;\n' });
    expect(r.stdout.trim().split('\n')).toEqual([
      'vacuum-bg|background|VACUUM|||alice||10min|5',
      'OK: launching of new jobs is paused',
      'OK: launching of new jobs resumed',
    ]);
    expect(r.stderr).toMatch(/ERROR:\s+unrecognized pgbg-proxy admin console command: "SELECT 1"/);
    expect(r.stderr).toMatch(/HINT:\s+Commands: SHOW HELP, SHOW JOBS/);
  });

  it('runs several commands of one query string in order; an empty query is answered', async () => {
    const results = (await admin.query('SHOW HELP; SHOW RULES;')) as unknown as pg.QueryResult[];
    expect(results.map((r) => r.fields[0]?.name)).toEqual(['command', 'name']);
    const empty = await admin.query(';');
    expect(empty.rows).toEqual([]);
  });

  it('accepts the extended protocol without parameters (prepared, binary results)', async () => {
    const named = await admin.query({ name: 'console_help', text: 'SHOW HELP' });
    expect(named.fields.map((f) => f.name)).toEqual(['command', 'description']);
    const again = await admin.query({ name: 'console_help', text: 'SHOW HELP' });
    expect(again.rows).toEqual(named.rows);
    const extended = await admin.query({ text: 'SHOW CLIENTS', queryMode: 'extended' } as pg.QueryConfig);
    expect(extended.rows.some((row) => row.kind === 'admin')).toBe(true);
    const binary = await admin.query({ text: 'SHOW STATS', binary: true, queryMode: 'extended' } as pg.QueryConfig);
    expect(binary.rows.find((row) => row.stat === 'paused').value).toBe(0);
    const err = await admin.query({ text: 'DROP TABLE x', queryMode: 'extended' } as pg.QueryConfig).catch((e) => e);
    expect(err.code).toBe('42601');
    expect((await admin.query({ text: 'SHOW RULES', queryMode: 'extended' } as pg.QueryConfig)).rows).toHaveLength(1);
  });

  it('SHOW JOBS and CANCEL JOB need jobs.registryUrl', async () => {
    const bare = await startTestProxy(cluster);
    try {
      const client = new pg.Client(bare.clientConfig({ user: 'postgres', database: 'pgbg' }));
      await client.connect();
      const err = await client.query('SHOW JOBS').catch((e) => e);
      expect(err.code).toBe('55000');
      expect(err.hint).toMatch(/jobs\.registryUrl/);
      expect((await client.query('SHOW HELP')).rows.length).toBeGreaterThan(0);
      await client.end();
    } finally {
      await bare.close();
    }
  });

  it('CANCEL JOB refuses a malformed id and passes the registry’s error for an unknown one', async () => {
    expect((await admin.query('CANCEL JOB abc').catch((e) => e)).code).toBe('22P02');
    const missing = await admin.query('CANCEL JOB 987654321').catch((e) => e);
    expect(missing.code).toBe('42704');
    expect(missing.message).toBe('job 987654321 does not exist');
  });
});

describe('jobs', () => {
  it('SHOW JOBS lists a running job with its elapsed time; CANCEL JOB ends it cancelled', async () => {
    const alice = await via.connect({ user: 'alice' });
    let jobId: string;
    try {
      const submitted = await alice.query('/*+ background */ SELECT pg_sleep(20)');
      jobId = String(submitted.rows[0].job_id);
    } finally {
      await alice.end();
    }
    const admin = await consoleClient();
    try {
      let row: Record<string, unknown> | undefined;
      for (let i = 0; i < 100; i++) {
        const jobs = await admin.query('SHOW JOBS');
        expect(jobs.fields.map((f) => f.name)).toEqual([
          'id', 'state', 'user', 'database', 'rule', 'kind', 'priority', 'queue_position', 'not_before', 'attempts', 'submitted_at', 'started_at', 'elapsed',
          'worker_pid', 'wait_event', 'phase', 'percent_done', 'statement', 'error', 'waiting_for_launcher',
        ]);
        row = jobs.rows.find((r) => r.id === jobId);
        if (row?.state === 'running' && row.elapsed !== null) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(row).toMatchObject({ state: 'running', user: 'alice', database: 'app', kind: 'SELECT' });
      expect(row!.elapsed).toMatch(/^\d\d:\d\d:\d\d/);
      expect(row!.statement).toMatch(/pg_sleep\(20\)/);
      expect(row!.worker_pid).toBeGreaterThan(0);

      const cancel = await admin.query(`CANCEL JOB ${jobId}`);
      expect(cancel.command).toBe('CANCEL');
      expect(cancel.rows).toEqual([{ cancelled: true }]);

      let state = '';
      for (let i = 0; i < 100 && state !== 'cancelled'; i++) {
        const r = await cluster.query('SELECT state FROM pgbg.job WHERE id = $1', [jobId]);
        state = r.rows[0].state;
        if (state !== 'cancelled') await new Promise((r) => setTimeout(r, 100));
      }
      expect(state).toBe('cancelled');
      const after = (await admin.query('SHOW JOBS')).rows.find((r) => r.id === jobId);
      expect(after).toMatchObject({ state: 'cancelled' });
      expect(after!.error).toMatch(/^57014: /);
      expect(after!.elapsed).not.toBeNull();
    } finally {
      await admin.end();
    }
  });
});
