import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { ProxyConfig } from '../config/schema.js';

/** Whose limits apply to a job. */
export interface LimitScope {
  database: string;
  user: string;
  rule: string | null;
}

/** The limits object pgbg.admit reads (see sql/registry/001-registry.sql). */
export type AdmissionLimits = Record<string, number | string>;

export interface RetryPolicy {
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

/** What the configuration says about when jobs may run; read anew on each call, so a reload applies to queued jobs too. */
export interface SchedulingPolicy {
  limits(scope: LimitScope): AdmissionLimits;
  retry(): RetryPolicy;
  timeouts(): TimeoutPolicy;
  /** How long a launcher stays without work before it exits (jobs.launcherIdle). */
  launcherIdleMs(): number;
  /** Custom settings (placeholders such as myapp.tenant) a job carries from its session (jobs.carrySettings). */
  carrySettings(): string[];
}

export interface TimeoutPolicy {
  /** Applied when neither hint nor rule sets a timeout. */
  defaultMs: number;
  /** Ceiling for a hint's timeout (rules are checked against it when the configuration loads). */
  maxMs: number;
}

/**
 * @param admissionId This proxy's row in pgbg.admission_config, when it stores its limits there
 *   (jobs.registryUrl set): jobs carry it, and the database's launchers admit them under that
 *   row's limits of the moment. Null: jobs keep the limits they were submitted with.
 */
export function schedulingPolicy(config: () => ProxyConfig, admissionId: string | null = null): SchedulingPolicy {
  return {
    limits(scope) {
      const c = config();
      const out = limitsFor(admissionConfig(c), scope);
      if (admissionId !== null && c.jobs.registryUrl) out.config_id = admissionId;
      return out;
    },
    timeouts() {
      const { defaultTimeout, maxTimeout } = config().jobs;
      return { defaultMs: defaultTimeout, maxMs: maxTimeout };
    },
    carrySettings() {
      return config().jobs.carrySettings;
    },
    launcherIdleMs() {
      return config().jobs.launcherIdle;
    },
    retry() {
      const r = config().jobs.retry;
      return { maxAttempts: r.maxAttempts, baseDelayMs: r.baseDelay, maxDelayMs: r.maxDelay };
    },
  };
}

/** The admission configuration: what pgbg.set_admission_config stores (and pgbg._limits_for reads). */
export interface AdmissionConfig {
  queue: number;
  queue_per_user: number;
  /** Absent: jobs.maxInFlight unlimited. */
  server?: number | 'auto';
  database: Record<string, number>;
  user: Record<string, number>;
  rules: Record<string, { rule: number | null; busy_active_backends: number | null; busy_min_free_workers: number | null }>;
}

/**
 * The admission configuration stored in the registry (pgbg.set_admission_config, read by
 * pgbg._limits_for), so that the database's launchers admit queued jobs under the configuration
 * of the moment. A rule named twice counts as its first definition, as in routing.
 */
export function admissionConfig(config: ProxyConfig): AdmissionConfig {
  const { jobs, rules } = config;
  const byName: AdmissionConfig['rules'] = {};
  for (const r of rules) {
    if (Object.hasOwn(byName, r.name)) continue;
    byName[r.name] = { rule: r.maxInFlight ?? null, busy_active_backends: r.holdWhileBusy?.activeBackends ?? null, busy_min_free_workers: r.holdWhileBusy?.minFreeWorkers ?? null };
  }
  const out: AdmissionConfig = { queue: jobs.maxQueued, queue_per_user: jobs.maxQueuedPerUser, database: jobs.maxInFlightPerDatabase, user: jobs.maxInFlightPerUser, rules: byName };
  if (jobs.maxInFlight !== 'unlimited') out.server = jobs.maxInFlight;
  return out;
}

/**
 * The limits object pgbg.admit reads for one job's scope, derived from the admission
 * configuration exactly as pgbg._limits_for derives it in the registry (sql/registry/006).
 */
export function limitsFor(c: AdmissionConfig, scope: LimitScope): AdmissionLimits {
  const out: AdmissionLimits = { queue: c.queue, queue_per_user: c.queue_per_user };
  if (c.server !== undefined) out.server = c.server;
  const perDatabase = c.database[scope.database] ?? c.database['*'];
  if (perDatabase !== undefined) out.database = perDatabase;
  const perUser = c.user[scope.user] ?? c.user['*'];
  if (perUser !== undefined) out.user = perUser;
  // No limit set for this role: it may hold all but one of the server-wide slots (see
  // pgbg._user_limit), so one role cannot take every slot.
  else if (out.server !== undefined) out.user = 'share';
  const rule = scope.rule === null || !Object.hasOwn(c.rules, scope.rule) ? undefined : c.rules[scope.rule];
  if (rule?.rule != null) out.rule = rule.rule;
  if (rule?.busy_active_backends != null) out.busy_active_backends = rule.busy_active_backends;
  if (rule?.busy_min_free_workers != null) out.busy_min_free_workers = rule.busy_min_free_workers;
  return out;
}

/**
 * The id under which a proxy stores its admission limits: a new one per proxy start. A
 * supervisor hands its own to its worker processes in PGBG_ADMISSION_ID (see inheritedAdmissionId).
 */
export function newAdmissionId(): string {
  return `${hostname().slice(0, 20)}-${process.pid}-${randomUUID().slice(0, 8)}`.replace(/[^A-Za-z0-9-]/g, '-');
}

/** The supervisor's admission id, in a worker process; null when there is none. */
export function inheritedAdmissionId(env: NodeJS.ProcessEnv = process.env): string | null {
  const id = env.PGBG_ADMISSION_ID;
  return id && /^[A-Za-z0-9-]{1,64}$/.test(id) ? id : null;
}
