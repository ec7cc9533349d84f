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

/** "HH:MM[:SS]-HH:MM[:SS]" local time; an end before the start spans midnight. */
const timeWindow = z.string().transform((value, ctx) => {
  const m = /^\s*(\d{1,2}:\d{2}(?::\d{2})?)\s*-\s*(\d{1,2}:\d{2}(?::\d{2})?)\s*$/.exec(value);
  const valid = (t: string) => {
    const [h, mi, se = 0] = t.split(':').map(Number);
    return h < 24 && mi < 60 && se < 60;
  };
  if (!m || !valid(m[1]) || !valid(m[2])) {
    ctx.addIssue({ code: 'custom', message: `expected a window such as "01:00-05:00" (local times, 24-hour clock), got "${value}"` });
    return z.NEVER;
  }
  return { from: m[1], to: m[2] };
});

/** An IANA time zone name, checked against the zones Node knows (PostgreSQL's list is the same tz database). */
const timeZone = z.string().superRefine((tz, ctx) => {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
  } catch {
    ctx.addIssue({ code: 'custom', message: `unknown time zone "${tz}": use an IANA name such as Europe/Berlin or UTC` });
  }
});

/** statement_timeout is an int4 of milliseconds: no job timeout can be longer (about 24.8 days). */
export const MAX_STATEMENT_TIMEOUT_MS = 2147483647;

/** A job timeout: 1 ms .. MAX_STATEMENT_TIMEOUT_MS. */
const jobTimeout = duration.pipe(z.number().int().min(1).max(MAX_STATEMENT_TIMEOUT_MS));

/** Jobs in flight at once: a number, "auto" (derived from max_worker_processes) or "unlimited". */
const inFlightLimit = z.union([z.number().int().min(1), z.literal('auto'), z.literal('unlimited')]);

const retrySchema = z
  .object({
    /** Attempts of a transactional job that fails with 40001, 40P01 or 55P03; 1 = no retry. */
    maxAttempts: z.number().int().min(1).max(100).default(3),
    /** Delay before the second attempt; doubles per attempt, with jitter (50-100% of it). */
    baseDelay: duration.default(500),
    maxDelay: duration.default(30000),
  })
  .strict();

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
    timeout: jobTimeout.optional(),
    priority: z.number().int().min(-1000).max(1000).optional(),
    /** Jobs of this rule in flight at once (counted in the job's database's registry). */
    maxInFlight: z.number().int().min(1).optional(),
    /** Matched jobs start only while this window is open; they wait queued otherwise. */
    window: timeWindow.optional(),
    /** Time zone of the window; default UTC. */
    timeZone: timeZone.default('UTC'),
    /** Attempts on transient errors (40001, 40P01, 55P03); overrides jobs.retry.maxAttempts. */
    maxAttempts: z.number().int().min(1).max(100).optional(),
    /** When the client goes away: keep its queued jobs (the proxy launches them) or cancel them. */
    onDisconnect: z.enum(['keep', 'cancel']).default('keep'),
    /** Load-aware admission: hold launches while the server is this busy. */
    holdWhileBusy: z
      .object({
        /** Hold while more client backends than this are running a statement. */
        activeBackends: z.number().int().min(0).optional(),
        /** Hold while fewer max_worker_processes slots than this are free. */
        minFreeWorkers: z.number().int().min(0).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

/** A file path, read when the configuration is applied (start, SIGHUP, RELOAD). */
const filePath = z.string().min(1);

/**
 * TLS towards clients. disable: SSLRequest answered 'N' (plain text only). allow and prefer
 * (the same on the accepting side, as in PgBouncer): TLS for clients that ask, plain text
 * for the rest. require: plain-text clients are refused the way the server refuses them
 * without a hostssl entry. cert and key are required unless the mode is disable.
 */
const clientTlsSchema = z
  .object({
    mode: z.enum(['disable', 'allow', 'prefer', 'require']).default('disable'),
    cert: filePath.optional(),
    key: filePath.optional(),
  })
  .strict()
  .superRefine((v, ctx) => {
    if (v.mode === 'disable') return;
    for (const k of ['cert', 'key'] as const) {
      if (!v[k]) ctx.addIssue({ code: 'custom', path: [k], message: `required when tls.client.mode is ${v.mode}` });
    }
  });

/**
 * TLS towards the server, libpq's sslmode values: disable, prefer (TLS when the server offers
 * it, unverified), require (TLS, unverified), verify-ca (chain checked against ca),
 * verify-full (chain and host name). cert/key: the proxy's client certificate, optional.
 */
const serverTlsSchema = z
  .object({
    mode: z.enum(['disable', 'prefer', 'require', 'verify-ca', 'verify-full']).default('disable'),
    ca: filePath.optional(),
    cert: filePath.optional(),
    key: filePath.optional(),
  })
  .strict()
  .superRefine((v, ctx) => {
    if ((v.mode === 'verify-ca' || v.mode === 'verify-full') && !v.ca) {
      ctx.addIssue({ code: 'custom', path: ['ca'], message: `required when tls.server.mode is ${v.mode} (the CA that signed the server's certificate)` });
    }
    if (Boolean(v.cert) !== Boolean(v.key)) {
      ctx.addIssue({ code: 'custom', path: [v.cert ? 'key' : 'cert'], message: 'tls.server.cert and tls.server.key go together' });
    }
  });

export const tlsSchema = z
  .object({
    client: clientTlsSchema.default({ mode: 'disable' }),
    server: serverTlsSchema.default({ mode: 'disable' }),
  })
  .strict();

export const configSchema = z
  .object({
    listen: hostPort.default({ host: '127.0.0.1', port: 6432 }),
    /** Also listen on DIR/.s.PGSQL.<listen port>, the Unix-domain socket libpq looks for (`psql -h DIR`). */
    listenSocketDir: z
      .string()
      .refine((d) => d.startsWith('/'), 'expected an absolute directory path')
      .nullable()
      .default(null),
    /**
     * Relay processes behind the listening address (src/supervisor/): 1 runs everything in one
     * process; N > 1 forks N workers under a supervisor; "auto" = os.availableParallelism().
     * Read at start only (a reload cannot change it).
     */
    workers: z.union([z.literal('auto'), z.number().int().min(1).max(256)]).default(1),
    upstream: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(1).max(65535).default(5432),
        connectTimeout: duration.default(5000),
      })
      .strict()
      .default({ host: '127.0.0.1', port: 5432, connectTimeout: 5000 }),
    tls: tlsSchema.default({ client: { mode: 'disable' }, server: { mode: 'disable' } }),
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
        /** Unused since registry version 6 (the database's launcher supervises jobs); accepted so older files still load. */
        supervisePoll: duration.default(200),
        /** How long a launcher (one pg_background worker per database and login) waits without work before it exits. */
        launcherIdle: duration.refine((ms) => ms <= 86_400_000, 'at most 24h').default(10_000),
        /**
         * Custom settings a job carries from its session besides everything pg_settings lists
         * (placeholders such as myapp.tenant, which no SQL can enumerate), by exact name.
         */
        carrySettings: z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z0-9_.$]+$/, 'a custom setting name such as myapp.tenant')).max(100).default([]),
        /** Refuse (25001) a matched statement inside a client's transaction block, or run it in the foreground. */
        inTransaction: z.enum(['reject', 'foreground']).default('reject'),
        /**
         * Jobs in flight on the server at once; over it jobs queue. "auto": max_worker_processes
         * less room for parallel query and logical replication. "unlimited": launch at once and
         * let a launch without a free worker slot fail (53000/53400).
         */
        maxInFlight: inFlightLimit.default('auto'),
        /** Per-database limits; the key "*" applies to databases not listed. */
        maxInFlightPerDatabase: z.record(z.string(), z.number().int().min(1)).default({}),
        /**
         * Per-user limits; the key "*" applies to users not listed. Without "*", a user not
         * listed may hold all but one of the maxInFlight slots (at least 1), so that one role
         * never holds every slot.
         */
        maxInFlightPerUser: z.record(z.string(), z.number().int().min(1)).default({}),
        /** Queued jobs per registry at most; a submission beyond it fails with 53400. */
        maxQueued: z.number().int().min(0).default(1000),
        /** Queued jobs of one role per registry at most; a submission beyond it fails with 53400. */
        maxQueuedPerUser: z.number().int().min(0).default(100),
        /** Timeout of a job whose hint and rule set none. */
        defaultTimeout: jobTimeout.default(3_600_000),
        /** Longest timeout a hint or rule may set; above it a hint is refused with 22023 and a rule is a config error. */
        maxTimeout: jobTimeout.default(86_400_000),
        retry: retrySchema.default({ maxAttempts: 3, baseDelay: 500, maxDelay: 30000 }),
      })
      .strict()
      .default({
        enabled: true,
        registryUrl: null,
        migrateOnStart: false,
        reconcileInterval: 5000,
        supervisePoll: 200,
        launcherIdle: 10_000,
        carrySettings: [],
        inTransaction: 'reject',
        maxInFlight: 'auto',
        maxInFlightPerDatabase: {},
        maxInFlightPerUser: {},
        maxQueued: 1000,
        maxQueuedPerUser: 100,
        defaultTimeout: 3_600_000,
        maxTimeout: 86_400_000,
        retry: { maxAttempts: 3, baseDelay: 500, maxDelay: 30000 },
      }),
    rules: z.array(ruleSchema).default([]),
  })
  .strict()
  .superRefine((config, ctx) => {
    const { defaultTimeout, maxTimeout } = config.jobs;
    if (defaultTimeout > maxTimeout) {
      ctx.addIssue({ code: 'custom', path: ['jobs', 'defaultTimeout'], message: `jobs.defaultTimeout (${defaultTimeout} ms) exceeds jobs.maxTimeout (${maxTimeout} ms)` });
    }
    config.rules.forEach((rule, i) => {
      if (rule.timeout !== undefined && rule.timeout > maxTimeout) {
        ctx.addIssue({ code: 'custom', path: ['rules', i, 'timeout'], message: `rule "${rule.name}": timeout ${rule.timeout} ms exceeds jobs.maxTimeout (${maxTimeout} ms)` });
      }
    });
  });

export type ProxyConfig = z.output<typeof configSchema>;
export type ProxyConfigInput = z.input<typeof configSchema>;
export type Rule = z.output<typeof ruleSchema>;
export type TlsConfig = z.output<typeof tlsSchema>;
