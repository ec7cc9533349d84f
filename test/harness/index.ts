/**
 * What test files import: the shared cluster started by global-setup.ts, plus helpers.
 *
 *   import { getCluster, sqlstateOf } from '../harness/index.js';
 *   const cluster = getCluster();
 *   const db = await cluster.createDatabase();          // isolated database, pg_background installed
 *   await cluster.query('select 1', [], { user: 'alice', database: db });
 */
import { inject } from 'vitest';
import { clusterFromInfo, type Cluster } from './cluster.js';
import './provided.js';

export * from './cluster.js';

let shared: Cluster | undefined;

/** The cluster shared by the whole test run (its stop() is refused: the global setup owns it). */
export function getCluster(): Cluster {
  if (shared) return shared;
  const info = inject('pgbgCluster');
  if (info === undefined) {
    throw new Error('no test cluster: run the tests through vitest with vitest.config.ts (globalSetup test/harness/global-setup.ts)');
  }
  if (info === null) {
    throw new Error('no test cluster: this run was started with PGBG_TEST_NO_CLUSTER=1');
  }
  shared = clusterFromInfo(info);
  return shared;
}

/** Awaits `p` and returns the SQLSTATE it failed with, or undefined if it succeeded. */
export async function sqlstateOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    throw err;
  }
}

/** Awaits `p`, expecting a PostgreSQL error; returns it (throws if `p` succeeded or failed otherwise). */
export async function pgErrorOf(p: Promise<unknown>): Promise<Error & { code: string; detail?: string; hint?: string }> {
  try {
    await p;
  } catch (err) {
    if (typeof (err as { code?: unknown }).code === 'string') return err as Error & { code: string };
    throw err;
  }
  throw new Error('expected a PostgreSQL error, but the statement succeeded');
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes. */
export async function eventually<T>(fn: () => Promise<T>, timeoutMs = 10_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
