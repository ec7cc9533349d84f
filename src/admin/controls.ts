import type { Registry } from 'prom-client';
import type { ProxyConfig } from '../config/schema.js';
import type { PauseSwitch } from './pause-switch.js';

/** What SHOW CLIENTS needs of a client session (src/session/client-session.ts ClientSession). */
export interface ClientSessionInfo {
  readonly id: string;
  readonly user: string;
  readonly database: string;
  readonly applicationName: string;
  readonly startedAt: number;
  readonly txStatus: 'I' | 'T' | 'E';
  readonly idle: boolean;
  readonly adopted: boolean;
  /** Jobs the session still launches, retries or supervises. */
  readonly pendingJobCount: number;
  /** Process id of the relay process serving it (with workers > 1, one of the workers). */
  readonly worker?: number;
}

/** One metric as prom-client's registry.getMetricsAsJSON() gives it (the part SHOW STATS reads). */
export interface MetricSnapshot {
  name: string;
  values: { value: number; labels: Partial<Record<string, string | number>>; metricName?: string }[];
}

/**
 * Everything the admin console may read or change in the running proxy. The console holds no
 * reference to the proxy's parts, only to this, so what an operator can do is listed here.
 */
export interface AdminControls {
  /**
   * Re-reads and applies the configuration like SIGHUP; returns what happened, throws if refused.
   * Asynchronous where a supervisor does it for every worker (src/supervisor/).
   */
  reload(): string | Promise<string>;
  /** Stops launching new jobs; false if it already was paused. */
  pause(): boolean | Promise<boolean>;
  /** Launches new jobs again; false if it was not paused. */
  resume(): boolean | Promise<boolean>;
  readonly paused: boolean;
  /** The configuration in effect. */
  config(): ProxyConfig;
  /** Client sessions of the listener, or of every worker (the console's own sessions are not among them). */
  sessions(): Iterable<ClientSessionInfo> | Promise<Iterable<ClientSessionInfo>>;
  metricsJson(): Promise<MetricSnapshot[]>;
}

export interface ProxyControlParts {
  /** The configuration in effect now. */
  current(): ProxyConfig;
  /** Reads the configuration sources again (file, environment, flags); absent when there are none. */
  reread?: () => ProxyConfig;
  /** Applies a configuration: the same function the SIGHUP path calls. */
  apply(next: ProxyConfig): void;
  pauseSwitch: PauseSwitch;
  sessions(): Iterable<ClientSessionInfo>;
  registry: Registry;
}

/** The AdminControls of a running proxy, from its parts (see src/proxy.ts). */
export function createAdminControls(parts: ProxyControlParts): AdminControls {
  return {
    reload() {
      if (!parts.reread) {
        // Started from code without configuration sources: re-applying the running configuration
        // still rebuilds the rules and limits, which is all a reload could change.
        parts.apply(parts.current());
        return `no configuration source to re-read; re-applied the running configuration (${parts.current().rules.length} rules)`;
      }
      const next = parts.reread();
      parts.apply(next);
      return `configuration reloaded (${next.rules.length} rules)`;
    },
    pause: () => parts.pauseSwitch.pause(),
    resume: () => parts.pauseSwitch.resume(),
    get paused() {
      return parts.pauseSwitch.isPaused();
    },
    config: () => parts.current(),
    sessions: () => parts.sessions(),
    metricsJson: () => parts.registry.getMetricsAsJSON(),
  };
}
