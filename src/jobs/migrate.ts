import type pg from 'pg';
import { MIGRATIONS, REGISTRY_SCHEMA, REGISTRY_VERSION } from './registry/index.js';

export { REGISTRY_VERSION } from './registry/index.js';

/** Anything that runs SQL on ONE connection (a pg.Client, a checked-out PoolClient; not a Pool). */
export interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: any[] }>;
}

export class MigrationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MigrationError';
  }
}

/** Advisory lock ('pgbg', 1) held by a migration from start to end, so concurrent runs queue up. */
const LOCK_KEY_1 = 0x70676267;
const LOCK_KEY_2 = 1;

const LOCK_SQL = `SELECT pg_catalog.pg_advisory_lock(${LOCK_KEY_1}, ${LOCK_KEY_2})`;
const UNLOCK_SQL = `SELECT pg_catalog.pg_advisory_unlock(${LOCK_KEY_1}, ${LOCK_KEY_2})`;

async function currentVersion(client: Queryable): Promise<number> {
  const r = await client.query(`SELECT COALESCE(max(version), 0)::int AS v FROM ${REGISTRY_SCHEMA}.schema_version`);
  return Number(r.rows[0].v);
}

async function inTransaction<T>(client: Queryable, fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    const out = await fn();
    await client.query('COMMIT');
    return out;
  } catch (err) {
    try {
      await client.query('ROLLBACK');
    } catch {
      // the connection is gone or unusable; the original error is what matters
    }
    throw err;
  }
}

/**
 * Creates or upgrades the job registry (schema `pgbg`) in the database the client is connected
 * to. Idempotent: a second run changes nothing and returns from === to. Each missing version is
 * applied in its own transaction; a session advisory lock held for the whole run makes
 * concurrent runs queue up (the second one then reports from === to).
 * Must run as a superuser (the registry has SECURITY DEFINER functions that read
 * pg_stat_activity and signal workers, and it creates the role pgbg_admin).
 */
export interface MigrateOptions {
  /**
   * Stop at this registry version instead of the newest (upgrade tests build an older registry,
   * fill it, then migrate the rest of the way). Never below the installed version.
   */
  toVersion?: number;
}

export async function migrate(
  client: pg.Client | Queryable,
  options: MigrateOptions = {},
): Promise<{ from: number; to: number }> {
  const c = client as Queryable;
  const who = await c.query(
    `SELECT current_user AS "user", current_database() AS db,
            (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) AS super`,
  );
  const { user, db, super: isSuper } = who.rows[0] as { user: string; db: string; super: boolean };
  if (!isSuper) {
    throw new MigrationError(
      `pgbg-proxy migrate must run as a superuser: role "${user}" lacks SUPERUSER in database "${db}". ` +
        `The job registry (schema ${REGISTRY_SCHEMA}) needs it to create the role pgbg_admin and SECURITY DEFINER ` +
        `functions that read pg_stat_activity and cancel workers. Connect as a superuser (e.g. postgres) to run the migration.`,
    );
  }

  await c.query(LOCK_SQL);
  try {
    return await migrateLocked(c, db, options.toVersion ?? REGISTRY_VERSION);
  } finally {
    await c.query(UNLOCK_SQL).catch(() => undefined);
  }
}

async function migrateLocked(c: Queryable, db: string, target: number): Promise<{ from: number; to: number }> {
  // Step 0: schema and version table.
  const from = await inTransaction(c, async () => {
    const owner = await c.query(
      `SELECT r.rolname, r.rolsuper FROM pg_catalog.pg_namespace n
         JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner WHERE n.nspname = $1`,
      [REGISTRY_SCHEMA],
    );
    if (owner.rows.length > 0 && !owner.rows[0].rolsuper) {
      // A schema owner may drop and replace objects in it; SECURITY DEFINER functions owned by a
      // superuser must never live in a schema an ordinary role controls.
      throw new MigrationError(
        `schema "${REGISTRY_SCHEMA}" already exists in database "${db}" and is owned by "${owner.rows[0].rolname}", ` +
          `who is not a superuser. Refusing to install the job registry there: inspect it, then drop it or ` +
          `ALTER SCHEMA ${REGISTRY_SCHEMA} OWNER TO a superuser.`,
      );
    }
    await c.query(`CREATE SCHEMA IF NOT EXISTS ${REGISTRY_SCHEMA}`);
    await c.query(
      `CREATE TABLE IF NOT EXISTS ${REGISTRY_SCHEMA}.schema_version (
         version    integer PRIMARY KEY,
         applied_at timestamptz NOT NULL DEFAULT now(),
         applied_by name NOT NULL DEFAULT current_user,
         description text
       )`,
    );
    await c.query(`GRANT USAGE ON SCHEMA ${REGISTRY_SCHEMA} TO PUBLIC`);
    await c.query(`GRANT SELECT ON ${REGISTRY_SCHEMA}.schema_version TO PUBLIC`);
    return currentVersion(c);
  });

  if (from > REGISTRY_VERSION) {
    throw new MigrationError(
      `the job registry in database "${db}" is at version ${from}, newer than this pgbg-proxy supports (${REGISTRY_VERSION}); upgrade pgbg-proxy`,
    );
  }

  // Versions apply in order, each only above the highest applied one: a later version may
  // redefine what an earlier one defined, so applying an older one afterwards would undo it.
  let to = from;
  for (const m of MIGRATIONS) {
    if (m.version <= to) continue;
    if (m.version > target) break;
    to = await inTransaction(c, async () => {
      try {
        await c.query(m.sql);
      } catch (err) {
        const e = err as Error & { code?: string; position?: string };
        throw new MigrationError(
          `registry migration to version ${m.version} failed: ${e.message}` + (e.code ? ` (SQLSTATE ${e.code})` : ''),
        );
      }
      await c.query(`INSERT INTO ${REGISTRY_SCHEMA}.schema_version (version, description) VALUES ($1, $2)`, [
        m.version,
        m.description,
      ]);
      return Math.max(to, m.version);
    });
  }
  return { from, to };
}

/** The registry version installed in the connected database, or null if there is none. */
export async function registryVersion(client: pg.Client | Queryable): Promise<number | null> {
  const c = client as Queryable;
  const r = await c.query(`SELECT pg_catalog.to_regclass($1) IS NOT NULL AS present`, [
    `${REGISTRY_SCHEMA}.schema_version`,
  ]);
  if (!r.rows[0].present) return null;
  const v = await currentVersion(c);
  return v;
}
