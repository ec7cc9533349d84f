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
}

export interface TimeoutPolicy {
  /** Applied when neither hint nor rule sets a timeout. */
  defaultMs: number;
  /** Ceiling for a hint's timeout (rules are checked against it when the configuration loads). */
  maxMs: number;
}

export function schedulingPolicy(config: () => ProxyConfig): SchedulingPolicy {
  return {
    limits(scope) {
      const { jobs, rules } = config();
      const out: AdmissionLimits = { queue: jobs.maxQueued, queue_per_user: jobs.maxQueuedPerUser };
      if (jobs.maxInFlight !== 'unlimited') out.server = jobs.maxInFlight;
      const perDatabase = jobs.maxInFlightPerDatabase[scope.database] ?? jobs.maxInFlightPerDatabase['*'];
      if (perDatabase !== undefined) out.database = perDatabase;
      const perUser = jobs.maxInFlightPerUser[scope.user] ?? jobs.maxInFlightPerUser['*'];
      if (perUser !== undefined) out.user = perUser;
      // No limit set for this role: it may hold all but one of the server-wide slots (see
      // pgbg._user_limit), so one role cannot take every slot.
      else if (out.server !== undefined) out.user = 'share';
      const rule = scope.rule === null ? undefined : rules.find((r) => r.name === scope.rule);
      if (rule?.maxInFlight !== undefined) out.rule = rule.maxInFlight;
      if (rule?.holdWhileBusy?.activeBackends !== undefined) out.busy_active_backends = rule.holdWhileBusy.activeBackends;
      if (rule?.holdWhileBusy?.minFreeWorkers !== undefined) out.busy_min_free_workers = rule.holdWhileBusy.minFreeWorkers;
      return out;
    },
    timeouts() {
      const { defaultTimeout, maxTimeout } = config().jobs;
      return { defaultMs: defaultTimeout, maxMs: maxTimeout };
    },
    retry() {
      const r = config().jobs.retry;
      return { maxAttempts: r.maxAttempts, baseDelayMs: r.baseDelay, maxDelayMs: r.maxDelay };
    },
  };
}
