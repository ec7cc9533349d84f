import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { configSchema, type ProxyConfig } from './schema.js';

export class ConfigError extends Error {}

/** Command-line and environment overrides, applied on top of the file in that order. */
export interface ConfigOverrides {
  listen?: string;
  listenSocketDir?: string;
  upstream?: string;
  metricsListen?: string;
  logLevel?: string;
  registryUrl?: string;
  migrateOnStart?: boolean;
  maxInFlight?: number | string;
  tlsClientMode?: string;
  tlsClientCert?: string;
  tlsClientKey?: string;
  tlsServerMode?: string;
  tlsServerCa?: string;
  tlsServerCert?: string;
  tlsServerKey?: string;
  workers?: number | string;
}

/** Override keys that set tls.<side>.<key>. */
const TLS_KEYS = {
  tlsClientMode: ['client', 'mode'],
  tlsClientCert: ['client', 'cert'],
  tlsClientKey: ['client', 'key'],
  tlsServerMode: ['server', 'mode'],
  tlsServerCa: ['server', 'ca'],
  tlsServerCert: ['server', 'cert'],
  tlsServerKey: ['server', 'key'],
} as const;

const ENV_KEYS: Record<keyof ConfigOverrides, string> = {
  listen: 'PGBG_LISTEN',
  listenSocketDir: 'PGBG_LISTEN_SOCKET_DIR',
  upstream: 'PGBG_UPSTREAM',
  metricsListen: 'PGBG_METRICS_LISTEN',
  logLevel: 'PGBG_LOG_LEVEL',
  registryUrl: 'PGBG_REGISTRY_URL',
  migrateOnStart: 'PGBG_MIGRATE',
  maxInFlight: 'PGBG_MAX_IN_FLIGHT',
  tlsClientMode: 'PGBG_TLS_CLIENT_MODE',
  tlsClientCert: 'PGBG_TLS_CLIENT_CERT',
  tlsClientKey: 'PGBG_TLS_CLIENT_KEY',
  tlsServerMode: 'PGBG_TLS_SERVER_MODE',
  tlsServerCa: 'PGBG_TLS_SERVER_CA',
  tlsServerCert: 'PGBG_TLS_SERVER_CERT',
  tlsServerKey: 'PGBG_TLS_SERVER_KEY',
  workers: 'PGBG_WORKERS',
};

export function overridesFromEnv(env: NodeJS.ProcessEnv): ConfigOverrides {
  const out: ConfigOverrides = {};
  for (const [key, envName] of Object.entries(ENV_KEYS) as [keyof ConfigOverrides, string][]) {
    const value = env[envName];
    if (value === undefined || value === '') continue;
    if (key === 'migrateOnStart') out.migrateOnStart = /^(1|true|yes|on)$/i.test(value);
    else if (key === 'maxInFlight') out.maxInFlight = inFlightValue(value);
    else if (key === 'workers') out.workers = workersValue(value);
    else out[key as Exclude<keyof ConfigOverrides, 'migrateOnStart' | 'maxInFlight' | 'workers'>] = value;
  }
  return out;
}

/** "auto" and "unlimited" stay words; anything else must be a number (the schema says which). */
export function inFlightValue(value: string): number | string {
  return /^(auto|unlimited)$/i.test(value.trim()) ? value.trim().toLowerCase() : Number(value);
}

/** "auto" stays a word; anything else must be a number (the schema says which). */
export function workersValue(value: string): number | string {
  return /^auto$/i.test(value.trim()) ? 'auto' : Number(value);
}

/** Reads YAML (if a path is given), applies overrides, validates; throws ConfigError naming the key. */
export function loadConfig(path: string | undefined, ...layers: ConfigOverrides[]): ProxyConfig {
  return validateConfig(loadRawConfig(path, ...layers), path ?? 'configuration');
}

/**
 * The configuration before validation: the file's mapping with the overrides applied. Plain
 * data (JSON-safe), so a supervisor can hand exactly what it validated to its workers.
 */
export function loadRawConfig(path: string | undefined, ...layers: ConfigOverrides[]): Record<string, unknown> {
  let raw: Record<string, unknown> = {};
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
    }
    try {
      raw = (parseYaml(text) as Record<string, unknown> | null) ?? {};
    } catch (err) {
      throw new ConfigError(`config file ${path} is not valid YAML: ${(err as Error).message}`);
    }
    if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`config file ${path} must hold a mapping`);
  }
  for (const layer of layers) raw = applyOverrides(raw, layer);
  return raw;
}

export function validateConfig(raw: unknown, source = 'configuration'): ProxyConfig {
  const result = configSchema.safeParse(raw);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => {
    const key = issue.path.length ? issue.path.join('.') : '(top level)';
    return `  ${key}: ${issue.message}`;
  });
  throw new ConfigError(`invalid ${source}:\n${lines.join('\n')}`);
}

function applyOverrides(raw: Record<string, unknown>, o: ConfigOverrides): Record<string, unknown> {
  const out: Record<string, unknown> = { ...raw };
  if (o.listen !== undefined) out.listen = o.listen;
  if (o.listenSocketDir !== undefined) out.listenSocketDir = o.listenSocketDir;
  if (o.metricsListen !== undefined) out.metricsListen = o.metricsListen;
  if (o.upstream !== undefined) {
    const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(o.upstream);
    if (!m) throw new ConfigError(`upstream: expected HOST:PORT, got "${o.upstream}"`);
    out.upstream = { ...(raw.upstream as object | undefined), host: m[1] || m[2], port: Number(m[3]) };
  }
  if (o.logLevel !== undefined) out.log = { ...(raw.log as object | undefined), level: o.logLevel };
  if (o.registryUrl !== undefined) out.jobs = { ...(raw.jobs as object | undefined), registryUrl: o.registryUrl };
  if (o.maxInFlight !== undefined) out.jobs = { ...(out.jobs as object | undefined), maxInFlight: o.maxInFlight };
  if (o.workers !== undefined) out.workers = o.workers;
  if (o.migrateOnStart !== undefined) out.jobs = { ...(out.jobs as object | undefined), migrateOnStart: o.migrateOnStart };
  for (const [key, [side, field]] of Object.entries(TLS_KEYS) as [keyof typeof TLS_KEYS, (typeof TLS_KEYS)[keyof typeof TLS_KEYS]][]) {
    const value = o[key];
    if (value === undefined) continue;
    const tls = (out.tls && typeof out.tls === 'object' ? out.tls : {}) as Record<string, unknown>;
    const sideValue = (tls[side] && typeof tls[side] === 'object' ? tls[side] : {}) as Record<string, unknown>;
    out.tls = { ...tls, [side]: { ...sideValue, [field]: value } };
  }
  return out;
}
