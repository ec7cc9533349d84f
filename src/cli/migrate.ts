import pg from 'pg';
import { migrate, MigrationError } from '../jobs/migrate.js';

/** `pgbg-proxy migrate --database URL`: creates or upgrades the pgbg registry, idempotently. */
export async function runMigrate(url: string | undefined): Promise<number> {
  if (!url) {
    console.error('pgbg-proxy migrate: --database URL is required (postgres://SUPERUSER@HOST:PORT/DBNAME)');
    return 2;
  }
  const client = new pg.Client({ connectionString: url, application_name: 'pgbg-proxy migrate' });
  try {
    await client.connect();
  } catch (err) {
    console.error(`pgbg-proxy migrate: cannot connect: ${(err as Error).message}`);
    return 1;
  }
  try {
    const { from, to } = await migrate(client);
    const db = (await client.query('SELECT current_database() AS d')).rows[0].d;
    console.log(from === to ? `pgbg registry in "${db}" is current (version ${to})` : `pgbg registry in "${db}" migrated from version ${from} to ${to}`);
    return 0;
  } catch (err) {
    console.error(`pgbg-proxy migrate: ${err instanceof MigrationError ? err.message : (err as Error).message}`);
    return 1;
  } finally {
    await client.end().catch(() => {});
  }
}
