/**
 * The front-door demo (`npm run demo`): a throwaway PostgreSQL 15, pgbg-proxy in front of it,
 * and a short session that backgrounds a slow UPDATE, a CREATE INDEX CONCURRENTLY, a failing
 * INSERT and a SELECT, showing job ids, states, errors and results.
 * `npm run demo -- --keep` leaves both running so you can try psql yourself.
 */
import pg from 'pg';
import { startCluster } from './harness/cluster.js';
import { migrate } from '../src/jobs/migrate.js';
import { validateConfig } from '../src/config/load.js';
import { startProxy } from '../src/proxy.js';
import { createLogger } from '../src/log/logger.js';

const keep = process.argv.includes('--keep');
const say = (s = ''): void => void process.stdout.write(s + '\n');

function table(rows: Record<string, unknown>[]): void {
  if (rows.length === 0) return say('  (no rows)');
  const cols = Object.keys(rows[0]);
  const cell = (v: unknown) => (v === null || v === undefined ? '' : v instanceof Date ? v.toISOString().slice(11, 23) : typeof v === 'object' ? JSON.stringify(v) : String(v));
  const widths = cols.map((c) => Math.min(60, Math.max(c.length, ...rows.map((r) => cell(r[c]).length))));
  const line = (vals: string[]) => '  ' + vals.map((v, i) => v.slice(0, widths[i]).padEnd(widths[i])).join(' | ');
  say(line(cols));
  say('  ' + widths.map((w) => '-'.repeat(w)).join('-+-'));
  for (const r of rows) say(line(cols.map((c) => cell(r[c]))));
}

say('Starting a throwaway PostgreSQL 15 cluster ...');
const cluster = await startCluster();
say(`  port ${cluster.port}, pg_background: ${cluster.pgBackground === 'real' ? `the real extension ${cluster.extVersion}` : 'the dblink stand-in (test fixture; install the real extension for production)'}`);
let stopProxy = async () => {};
try {
  const admin = await cluster.connect();
  await migrate(admin);
  await admin.query('GRANT CREATE ON SCHEMA public TO alice');
  await admin.end();

  const config = validateConfig({
    listen: '127.0.0.1:0',
    upstream: { host: cluster.host, port: cluster.port },
    jobs: { registryUrl: cluster.url('postgres', 'app') },
    log: { level: 'warn' },
  });
  const proxy = await startProxy(config, { log: createLogger(config.log, process.stderr) });
  stopProxy = () => proxy.close(0);
  const port = proxy.address.port;
  say(`pgbg-proxy listens on 127.0.0.1:${port}, in front of 127.0.0.1:${cluster.port}\n`);

  const alice = new pg.Client({ ...cluster.clientConfig({ user: 'alice' }), port });
  await alice.connect();
  await alice.query(`CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL DEFAULT 100);
                     INSERT INTO accounts SELECT g FROM generate_series(1, 20000) g;`);

  const statements = [
    '/*+ background */ UPDATE accounts SET balance = balance * 1.01 FROM (SELECT pg_sleep(3)) AS slow_down',
    '/*+ background */ CREATE INDEX CONCURRENTLY accounts_balance_idx ON accounts (balance)',
    '/*+ background */ INSERT INTO accounts (id) VALUES (1)',
    '/*+ background(timeout=1min) */ SELECT count(*) AS n, round(avg(balance), 2) AS avg_balance FROM accounts',
  ];
  const ids: string[] = [];
  say('As alice, through the proxy (each answer is a job id, at once):');
  for (const sql of statements) {
    const t = performance.now();
    const r = await alice.query(sql);
    ids.push(String(r.rows[0].job_id));
    say(`  ${(performance.now() - t).toFixed(0).padStart(4)} ms  job ${r.rows[0].job_id} (${r.rows[0].state})  ${sql}`);
  }
  say('\nThe session stays free meanwhile:');
  const t = performance.now();
  const quick = await alice.query('SELECT count(*) AS running FROM pgbg.jobs WHERE state = $1', ['running']);
  say(`  ${(performance.now() - t).toFixed(0)} ms  SELECT count(*) FROM pgbg.jobs WHERE state = 'running'  ->  ${quick.rows[0].running}`);

  say('\nA statement refused at once (syntax error), and one inside a transaction block (25001):');
  for (const sql of ['/*+ background */ UPDAT accounts SET balance = 0', 'BEGIN', '/*+ background */ DELETE FROM accounts', 'ROLLBACK']) {
    await alice.query(sql).then(
      () => undefined,
      (e) => say(`  ERROR ${e.code}: ${e.message}    <- ${sql}`),
    );
  }

  const watcher = await cluster.connect({ user: 'alice' });
  say('\nWaiting for the jobs (CALL pgbg.await from another session) ...');
  for (const id of ids) await watcher.query(`CALL pgbg.await(${id}, '2 min', NULL)`);
  const jobs = await watcher.query(
    `SELECT id, state, kind, command_tag, rows, sqlstate, error, round(extract(epoch FROM finished_at - started_at)::numeric, 2) AS seconds
       FROM pgbg.jobs WHERE id = ANY($1::bigint[]) ORDER BY id`,
    [ids],
  );
  say('\nSELECT ... FROM pgbg.jobs:');
  table(jobs.rows);
  say(`\nSELECT * FROM pgbg.result(${ids[3]}):`);
  table((await watcher.query('SELECT r AS row FROM pgbg.result($1) r', [ids[3]])).rows);
  const valid = await watcher.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_balance_idx'::regclass");
  say(`\nIndex accounts_balance_idx valid: ${valid.rows[0]?.indisvalid}`);
  await watcher.end();
  await alice.end();

  if (keep) {
    say(`\nStill running. Try:  PGPASSWORD=alice-secret psql -h 127.0.0.1 -p ${port} -U alice app`);
    say("  app=> /*+ background */ VACUUM (ANALYZE) accounts;\n  app=> SELECT * FROM pgbg.jobs;\nCtrl-C stops everything.");
    await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
  }
} finally {
  await stopProxy();
  await cluster.stop();
}
