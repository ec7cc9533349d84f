import type { RegistryConnection } from '../jobs/registry-connection.js';
import { columns, type Cell, type ResultSet } from './result-set.js';

export const LAUNCHER_COLUMNS = columns(
  'login',
  'alive:bool',
  'pid:int4',
  'started_at',
  'last_step_at',
  'launched:int8',
  'supervising:int4',
  'queued:int8',
  'running:int8',
  'idle_ms:int4',
  'exited_at',
  'exit_reason',
);

/**
 * The launchers of the registry database (pgbg.launchers): one row per login with a launcher
 * or active jobs. A login with queued jobs and no live launcher waits for its next session.
 */
const SHOW_LAUNCHERS_SQL = `
SELECT l.login::text AS login, l.alive, l.pid, l.started_at::text AS started_at, l.last_step_at::text AS last_step_at,
       l.launched::text AS launched, l.supervising, l.queued::text AS queued, l.running::text AS running, l.idle_ms,
       l.exited_at::text AS exited_at, l.exit_reason
  FROM pgbg.launchers l
 ORDER BY l.alive DESC, l.login`;

const KEYS = ['login', 'alive', 'pid', 'started_at', 'last_step_at', 'launched', 'supervising', 'queued', 'running', 'idle_ms', 'exited_at', 'exit_reason'] as const;

/** SHOW LAUNCHERS. */
export async function listLaunchers(registry: RegistryConnection): Promise<ResultSet> {
  const r = await registry.query<Record<(typeof KEYS)[number], Cell>>(SHOW_LAUNCHERS_SQL);
  return { columns: LAUNCHER_COLUMNS, rows: r.rows.map((row) => KEYS.map((k) => row[k] ?? null)), tag: 'SHOW' };
}
