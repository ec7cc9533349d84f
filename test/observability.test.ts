import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { eventually, getCluster } from './harness/index.js';
import { startTestProxy, type TestProxy } from './support/proxy.js';
import { registryDatabase, submit, waitJob } from './support/jobs.js';

const cluster = getCluster();
let via: TestProxy;
let db: string;
let observer: pg.Client;

beforeAll(async () => {
  db = await registryDatabase(cluster);
  via = await startTestProxy(cluster, { metricsListen: '127.0.0.1:0', metricsSnapshotTtl: 0, jobs: { registryUrl: cluster.url('postgres', db), reconcileInterval: 500 } });
  observer = await cluster.connect({ database: db });
  await observer.query(`CREATE TABLE big (id int, pad text); ALTER TABLE big OWNER TO alice;`);
});
afterAll(async () => {
  await observer?.end();
  await via?.close();
});

async function scrape(): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${via.proxy.metricsPort}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

function sample(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name + '{') || line.startsWith(name + ' ')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('Prometheus endpoint', () => {
  it('shows in-flight jobs as the server sees them: 5 while 5 sleep, then 0, and 0 after a worker is terminated', async () => {
    const client = await via.connect({ user: 'alice', database: db });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await submit(client, '/*+ background */ SELECT pg_sleep(4)'));
    // The answer comes when the row commits; the launcher starts them a moment later.
    await eventually(async () => (await observer.query("SELECT count(*)::int AS n FROM pgbg.job WHERE id = ANY($1::bigint[]) AND state = 'running' AND worker_pid IN (SELECT pid FROM pg_stat_activity)", [ids])).rows[0].n === 5, 10_000, 20);
    const text = await scrape();
    expect(sample(text, 'pgbg_jobs_in_flight')).toBe(5);
    expect(text).toMatch(/pgbg_jobs_in_flight\{database="[^"]+",user="alice",rule=""\} 5/);
    const server = await observer.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid IN (SELECT worker_pid FROM pgbg.job WHERE id = ANY($1::bigint[]))', [ids]);
    expect(server.rows[0].n).toBe(5);

    const console = new pg.Client({ ...cluster.clientConfig({ user: 'postgres' }), port: via.port, database: 'pgbg' });
    await console.connect();
    const shown = await console.query('SHOW JOBS');
    const running = shown.rows.filter((r) => ids.includes(String(r.id)));
    expect(running).toHaveLength(5);
    for (const r of running) {
      expect(r.state).toBe('running');
      expect(r.elapsed).toBeTruthy();
      expect(Object.keys(r)).toEqual(expect.arrayContaining(['wait_event', 'phase', 'percent_done']));
    }
    for (const id of ids) expect((await waitJob(observer, id)).state).toBe('succeeded');
    expect(sample(await scrape(), 'pgbg_jobs_in_flight')).toBe(0);
    expect(sample(await scrape(), 'pgbg_jobs_finished_total')).toBeGreaterThanOrEqual(5);

    // One attempt only: a terminated worker would otherwise send it back to the queue.
    const doomed = await submit(client, '/*+ background(max_attempts=1) */ SELECT pg_sleep(30)');
    const pid = await eventually(async () => (await observer.query("SELECT worker_pid FROM pgbg.jobs WHERE id = $1 AND state = 'running'", [doomed])).rows[0]?.worker_pid, 10_000, 20);
    expect(sample(await scrape(), 'pgbg_jobs_in_flight')).toBe(1);
    await observer.query('SELECT pg_terminate_backend($1)', [pid]);
    // Reconciliation (every 500 ms here) settles it once the worker is gone.
    await eventually(async () => /failed|lost/.test((await observer.query("SELECT state FROM pgbg.jobs WHERE id = $1", [doomed])).rows[0].state), 20_000, 100);
    expect(sample(await scrape(), 'pgbg_jobs_in_flight')).toBe(0);

    // Console: CANCEL JOB ends a job cancelled.
    const victim = await submit(client, '/*+ background */ SELECT pg_sleep(30)');
    const cancelled = await console.query(`CANCEL JOB ${victim}`);
    expect(cancelled.rows[0]).toBeTruthy();
    expect((await waitJob(observer, victim)).state).toBe('cancelled');
    await console.end();
    await client.end();
  });

  it('shows launchers (SHOW LAUNCHERS, pgbg_launchers) and jobs waiting for one (pgbg_jobs_waiting_for_launcher, SHOW JOBS)', async () => {
    const client = await via.connect({ user: 'alice', database: db });
    const at = new Date(Date.now() + 20_000).toISOString();
    const id = await submit(client, `/*+ background(not_before='${at}') */ SELECT 1`);
    const console = new pg.Client({ ...cluster.clientConfig({ user: 'postgres' }), port: via.port, database: 'pgbg' });
    await console.connect();
    const alive = await eventually(async () => (await console.query('SHOW LAUNCHERS')).rows.find((r) => r.login === 'alice' && r.alive === true), 5000, 50);
    expect(Number(alive.queued)).toBeGreaterThanOrEqual(1);
    expect(sample(await scrape(), 'pgbg_launchers')).toBeGreaterThanOrEqual(1);
    // Its launcher terminated: the queued job says it waits for the next session of alice.
    await observer.query('SELECT pg_terminate_backend($1)', [alive.pid]);
    await eventually(async () => (await console.query('SHOW LAUNCHERS')).rows.find((r) => r.login === 'alice')?.alive === false, 5000, 50);
    expect(await scrape()).toMatch(/pgbg_jobs_waiting_for_launcher\{database="[^"]+",user="alice"\} 1/);
    const shown = (await console.query('SHOW JOBS')).rows.find((r) => r.id === id);
    expect(shown).toMatchObject({ state: 'queued', waiting_for_launcher: true });
    expect((await client.query('SELECT pgbg.cancel($1)', [id])).rows[0].cancel).toBe(true);
    expect(sample(await scrape(), 'pgbg_jobs_waiting_for_launcher')).toBe(0);
    await console.end();
    await client.end();
  });

  it('passes promtool check metrics, with bounded label values, and serves /healthz and /readyz', async () => {
    const text = await scrape();
    const promtool = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    if (promtool.error) throw new Error(`promtool is needed for this test (Debian package prometheus): ${promtool.error.message}`);
    expect(promtool.stderr + promtool.stdout).toBe('');
    expect(promtool.status).toBe(0);
    for (const name of ['pgbg_client_connections', 'pgbg_upstream_connections', 'pgbg_bytes_total', 'pgbg_statements_total', 'pgbg_protocol_errors_total', 'pgbg_build_info', 'pgbg_worker_slots', 'pgbg_jobs_queued', 'pgbg_job_duration_seconds', 'pgbg_job_submit_seconds', 'pgbg_proxy_process_cpu_seconds_total']) {
      expect(text).toContain(`# TYPE ${name.replace(/_total$/, '')}`);
    }
    expect(text).not.toMatch(/\{[^}]*(SELECT|pg_sleep|job_id=)/i);
    expect(sample(text, 'pgbg_job_submit_seconds_count')).toBeGreaterThan(0);
    expect((await fetch(`http://127.0.0.1:${via.proxy.metricsPort}/healthz`)).status).toBe(200);
    const ready = await fetch(`http://127.0.0.1:${via.proxy.metricsPort}/readyz`);
    expect(await ready.text()).toBe('ready\n');
    expect(ready.status).toBe(200);
  });

  it('ships a Grafana dashboard and alert rules that use only metrics the proxy exports', async () => {
    const text = await scrape();
    const exported = new Set([...text.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]));
    const dashboard = readFileSync('config/grafana/pgbg-proxy-dashboard.json', 'utf8');
    const rules = readFileSync('config/prometheus/pgbg-alerts.yml', 'utf8');
    const used = new Set([...`${dashboard}\n${rules}`.matchAll(/pgbg_[a-z_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, '')));
    expect(used.size).toBeGreaterThan(5);
    for (const name of used) expect(exported.has(name) || exported.has(name.replace(/_total$/, '')), name).toBe(true);
    const check = spawnSync('promtool', ['check', 'rules', 'config/prometheus/pgbg-alerts.yml'], { encoding: 'utf8' });
    expect(check.status, check.stderr + check.stdout).toBe(0);
  });

  it('reports a rising percent in pgbg.jobs while a CREATE INDEX job runs', async () => {
    await observer.query("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1500000) g");
    const client = await via.connect({ user: 'alice', database: db });
    const id = await submit(client, '/*+ background */ CREATE INDEX big_pad_idx ON big (pad)');
    await eventually(async () => (await client.query('SELECT state FROM pgbg.jobs WHERE id = $1', [id])).rows[0].state !== 'queued', 10_000, 10);
    const seen: number[] = [];
    const deadline = Date.now() + 60_000;
    for (;;) {
      const r = await client.query('SELECT state, phase, percent_done FROM pgbg.jobs WHERE id = $1', [id]);
      if (r.rows[0].state !== 'running' || Date.now() > deadline) break;
      if (r.rows[0].percent_done !== null) seen.push(r.rows[0].percent_done);
      await new Promise((res) => setTimeout(res, 50));
    }
    expect((await waitJob(observer, id)).state).toBe('succeeded');
    console.log(`percent_done samples: ${seen.length}, first ${seen[0]}, max ${Math.max(...seen)}`);
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect(Math.max(...seen)).toBeGreaterThan(Math.min(...seen));
    await client.end();
  });
});
