import type pg from 'pg';
import { migrate } from '../../src/jobs/migrate.js';
import type { Cluster } from '../harness/cluster.js';

/** A fresh database with the pgbg registry migrated, owned by the test file that asks for it. */
export async function registryDatabase(cluster: Cluster): Promise<string> {
  const db = await cluster.createDatabase();
  const client = await cluster.connect({ database: db });
  try {
    await migrate(client);
    await client.query('GRANT CREATE ON SCHEMA public TO PUBLIC');
  } finally {
    await client.end();
  }
  return db;
}

/** Runs a hinted statement and returns the job id from the answer row. */
export async function submit(client: pg.Client, sql: string, values?: unknown[]): Promise<string> {
  const r = await client.query(sql, values);
  if (r.rows.length !== 1 || r.rows[0].job_id === undefined) throw new Error(`no job id in answer: ${JSON.stringify(r.rows)}`);
  return String(r.rows[0].job_id);
}

/** Waits (from a connection that did not launch the job) until the job is terminal. */
export async function waitJob(client: pg.Client, id: string, timeout = '30 s'): Promise<Record<string, any>> {
  // Simple protocol: the procedure commits between polls, which needs a non-atomic CALL.
  await client.query(`CALL pgbg.await(${BigInt(id)}, '${timeout.replace(/'/g, '')}'::interval, NULL)`);
  const r = await client.query('SELECT * FROM pgbg.jobs WHERE id = $1', [id]);
  return r.rows[0];
}
