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
}

export function schedulingPolicy(config: () => ProxyConfig): SchedulingPolicy {
  return {
    limits(scope) {
      const { jobs, rules } = config();
      const out: AdmissionLimits = { queue: jobs.maxQueued };
      if (jobs.maxInFlight !== 'unlimited') out.server = jobs.maxInFlight;
      const perDatabase = jobs.maxInFlightPerDatabase[scope.database] ?? jobs.maxInFlightPerDatabase['*'];
      if (perDatabase !== undefined) out.database = perDatabase;
      const perUser = jobs.maxInFlightPerUser[scope.user] ?? jobs.maxInFlightPerUser['*'];
      if (perUser !== undefined) out.user = perUser;
      const rule = scope.rule === null ? undefined : rules.find((r) => r.name === scope.rule);
      if (rule?.maxInFlight !== undefined) out.rule = rule.maxInFlight;
      if (rule?.holdWhileBusy?.activeBackends !== undefined) out.busy_active_backends = rule.holdWhileBusy.activeBackends;
      if (rule?.holdWhileBusy?.minFreeWorkers !== undefined) out.busy_min_free_workers = rule.holdWhileBusy.minFreeWorkers;
      return out;
    },
    retry() {
      const r = config().jobs.retry;
      return { maxAttempts: r.maxAttempts, baseDelayMs: r.baseDelay, maxDelayMs: r.maxDelay };
    },
  };
}
