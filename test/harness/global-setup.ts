/**
 * vitest globalSetup: one throwaway PostgreSQL cluster for the whole run (see cluster.ts),
 * handed to the test files through `provide('pgbgCluster', ...)`; read it with getCluster()
 * from test/harness/index.ts. Stopped (and its directory removed) at teardown.
 *
 * Environment:
 *   PGBG_TEST_PG_BACKGROUND=1.8|2.0|standin|auto
 *                           which pg_background the cluster gets: that version of the real extension
 *                           (an error if the server lacks it), the dblink stand-in, or (auto, the
 *                           default) the real extension's default version where installed, else the
 *                           stand-in
 *   PGBG_TEST_STANDIN=1     alias of PGBG_TEST_PG_BACKGROUND=standin
 *   PGBG_TEST_NO_CLUSTER=1  start nothing (pure unit-test runs); getCluster() then throws
 *   PGBG_TEST_PGBIN=dir     PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
 *   PGBG_TEST_KEEP=1        keep the cluster directory after stopping (debugging)
 */
import type { TestProject } from 'vitest/node';
import { clusterInfo, startCluster } from './cluster.js';
import './provided.js';

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  if (process.env.PGBG_TEST_NO_CLUSTER === '1') {
    project.provide('pgbgCluster', null);
    return async () => undefined;
  }
  const started = Date.now();
  const cluster = await startCluster();
  project.provide('pgbgCluster', clusterInfo(cluster));
  process.stderr.write(
    `[pgbg test cluster] PostgreSQL on ${cluster.host}:${cluster.port} (socket ${cluster.socketDir}), ` +
      `pg_background ${cluster.pgBackground === 'real' ? 'extension' : 'STAND-IN (test fixture)'} ${cluster.extVersion} ` +
      `(requested: ${cluster.requested}), ready in ${Date.now() - started} ms\n`,
  );
  return async () => {
    await cluster.stop();
  };
}
