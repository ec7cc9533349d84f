/** Type of what the global setup hands to the test workers (vitest `provide` / `inject`). */
import type { ClusterInfo } from './cluster.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The shared test cluster; null when the run was started with PGBG_TEST_NO_CLUSTER=1. */
    pgbgCluster: ClusterInfo | null;
  }
}

export {};
