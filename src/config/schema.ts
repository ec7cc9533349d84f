import { z } from 'zod';
import { parseDuration } from './duration.js';

/** "host:port" or "[v6]:port"; a bare port means 127.0.0.1. */
const hostPort = z.string().transform((value, ctx) => {
  const parsed = parseHostPort(value);
  if (!parsed) {
    ctx.addIssue({ code: 'custom', message: `expected HOST:PORT, got "${value}"` });
    return z.NEVER;
  }
  return parsed;
});

export function parseHostPort(value: string): { host: string; port: number } | null {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value.trim()) ?? /^()()(\d{1,5})$/.exec(value.trim());
  if (!m) return null;
  const port = Number(m[3]);
  if (port < 0 || port > 65535) return null;
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

const duration = z.union([z.number().int().nonnegative(), z.string()]).transform((value, ctx) => {
  if (typeof value === 'number') return value;
  const ms = parseDuration(value);
  if (ms === null) {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as 500ms, 30s, 10min, 2h; got "${value}"` });
    return z.NEVER;
  }
  return ms;
});

const regex = z.string().transform((value, ctx) => {
  try {
    return new RegExp(value, 'is');
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `invalid regular expression: ${(err as Error).message}` });
    return z.NEVER;
  }
});

export const ruleSchema = z
  .object({
    name: z.string().min(1).max(63).regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, _ . - only'),
    match: z
      .object({
        /** Statement kinds as PostgreSQL names them in command tags: VACUUM, CREATE INDEX, UPDATE ... */
        kinds: z.array(z.string().min(1).transform((s) => s.trim().toUpperCase().replace(/\s+/g, ' '))).optional(),
        pattern: regex.optional(),
        databases: z.array(z.string()).optional(),
        users: z.array(z.string()).optional(),
        applicationNames: z.array(z.string()).optional(),
      })
      .strict()
      .default({}),
    action: z.enum(['background', 'foreground', 'reject']).default('background'),
    timeout: duration.optional(),
    priority: z.number().int().min(-1000).max(1000).optional(),
  })
  .strict();

export const configSchema = z
  .object({
    listen: hostPort.default({ host: '127.0.0.1', port: 6432 }),
    upstream: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(1).max(65535).default(5432),
        connectTimeout: duration.default(5000),
      })
      .strict()
      .default({ host: '127.0.0.1', port: 5432, connectTimeout: 5000 }),
    metricsListen: hostPort.nullable().default(null),
    /** Job metrics are read from the server at most once per this interval, however often scraped. */
    metricsSnapshotTtl: duration.default(1000),
    limits: z
      .object({
        maxClients: z.number().int().min(1).default(1000),
        /** Largest frontend message accepted; PostgreSQL itself caps most at 1 GiB. */
        maxMessageBytes: z.number().int().min(1024).max(1073741824).default(64 * 1024 * 1024),
        startupTimeout: duration.default(15000),
      })
      .strict()
      .default({ maxClients: 1000, maxMessageBytes: 64 * 1024 * 1024, startupTimeout: 15000 }),
    shutdown: z.object({ grace: duration.default(30000) }).strict().default({ grace: 30000 }),
    log: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        pretty: z.boolean().default(false),
      })
      .strict()
      .default({ level: 'info', pretty: false }),
    admin: z
      .object({
        database: z.string().min(1).default('pgbg'),
        /** Extra roles allowed in besides superusers and members of pgbg_admin. */
        users: z.array(z.string()).default([]),
        /** Database the console's logins authenticate against on the server (any the roles may connect to). */
        authDatabase: z.string().min(1).default('postgres'),
      })
      .strict()
      .default({ database: 'pgbg', users: [], authDatabase: 'postgres' }),
    jobs: z
      .object({
        enabled: z.boolean().default(true),
        /** Connection string of a pgbg_admin role for reconciliation and metrics; password may come from PGPASSWORD. */
        registryUrl: z.string().nullable().default(null),
        migrateOnStart: z.boolean().default(false),
        reconcileInterval: duration.default(5000),
        supervisePoll: duration.default(200),
        /** Refuse (25001) a matched statement inside a client's transaction block, or run it in the foreground. */
        inTransaction: z.enum(['reject', 'foreground']).default('reject'),
        /** Jobs in flight on the server at once; over it jobs queue. null: no cap in the proxy. */
        maxInFlight: z.number().int().min(1).nullable().default(null),
      })
      .strict()
      .default({
        enabled: true,
        registryUrl: null,
        migrateOnStart: false,
        reconcileInterval: 5000,
        supervisePoll: 200,
        inTransaction: 'reject',
        maxInFlight: null,
      }),
    rules: z.array(ruleSchema).default([]),
  })
  .strict();

export type ProxyConfig = z.output<typeof configSchema>;
export type ProxyConfigInput = z.input<typeof configSchema>;
export type Rule = z.output<typeof ruleSchema>;
