import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig, overridesFromEnv, validateConfig } from '../../src/config/load.js';
import { parseDuration } from '../../src/config/duration.js';
import { configSchema, parseHostPort, ruleSchema } from '../../src/config/schema.js';
import { parse as parseYaml } from 'yaml';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-config-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCounter = 0;
function yamlFile(text: string): string {
  const p = path.join(dir, `c${fileCounter++}.yaml`);
  writeFileSync(p, text);
  return p;
}

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('duration parsing', () => {
  it.each([
    ['0', 0],
    ['250', 250],
    ['500ms', 500],
    ['30s', 30_000],
    ['1.5s', 1500],
    ['10sec', 10_000],
    ['10min', 600_000],
    ['2m', 120_000],
    ['2h', 7_200_000],
    ['1d', 86_400_000],
    [' 45 S ', 45_000],
  ])('%j is %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', 'abc', '-5s', '10 parsecs', '1e3', 's', '1h30m', '5 5s'])('%j is not a duration', (text) => {
    expect(parseDuration(text)).toBeNull();
  });

  it('applies to every duration key, as strings or bare milliseconds', () => {
    const c = validateConfig({
      upstream: { connectTimeout: '2s' },
      limits: { startupTimeout: '1min' },
      shutdown: { grace: 1234 },
      jobs: { reconcileInterval: '1.5s', supervisePoll: '50ms' },
      rules: [{ name: 'r', timeout: '2h' }],
    });
    expect(c.upstream.connectTimeout).toBe(2000);
    expect(c.limits.startupTimeout).toBe(60_000);
    expect(c.shutdown.grace).toBe(1234);
    expect(c.jobs.reconcileInterval).toBe(1500);
    expect(c.jobs.supervisePoll).toBe(50);
    expect(c.rules[0].timeout).toBe(7_200_000);
  });

  it('names the key of a bad duration', () => {
    expect(configError(() => validateConfig({ shutdown: { grace: '10 parsecs' } }))).toMatch(/shutdown\.grace: expected a duration[^\n]*"10 parsecs"/);
    expect(configError(() => validateConfig({ jobs: { supervisePoll: -5 } }))).toMatch(/jobs\.supervisePoll/);
    expect(configError(() => validateConfig({ rules: [{ name: 'x', timeout: 'soon' }] }))).toMatch(/rules\.0\.timeout/);
  });
});

describe('schema defaults', () => {
  it('fills every section from an empty document', () => {
    const c = validateConfig({});
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 6432 });
    expect(c.upstream).toEqual({ host: '127.0.0.1', port: 5432, connectTimeout: 5000 });
    expect(c.metricsListen).toBeNull();
    expect(c.limits).toEqual({ maxClients: 1000, maxMessageBytes: 64 * 1024 * 1024, startupTimeout: 15_000 });
    expect(c.shutdown).toEqual({ grace: 30_000 });
    expect(c.log).toEqual({ level: 'info', pretty: false });
    expect(c.admin).toEqual({ database: 'pgbg', users: [], authDatabase: 'postgres' });
    expect(c.jobs).toEqual({
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
    });
    expect(c.rules).toEqual([]);
  });

  it('fills the rest of a section that is partly given', () => {
    const c = validateConfig({ upstream: { port: 5433 }, limits: { maxClients: 5 }, jobs: { enabled: false } });
    expect(c.upstream).toEqual({ host: '127.0.0.1', port: 5433, connectTimeout: 5000 });
    expect(c.limits.maxClients).toBe(5);
    expect(c.limits.startupTimeout).toBe(15_000);
    expect(c.jobs.enabled).toBe(false);
    expect(c.jobs.supervisePoll).toBe(200);
  });

  it('gives rules their defaults and normalises kinds; patterns are case-insensitive', () => {
    const c = validateConfig({
      rules: [
        { name: 'maint', match: { kinds: [' vacuum ', 'create   index'] } },
        { name: 'pat', match: { pattern: '^\\s*delete\\s+from\\s+big_' }, action: 'reject' },
      ],
    });
    expect(c.rules[0].action).toBe('background');
    expect(c.rules[0].match.kinds).toEqual(['VACUUM', 'CREATE INDEX']);
    expect(c.rules[1].match.pattern!.test('DELETE FROM big_table')).toBe(true);
    expect(c.rules[1].match.pattern!.test('delete from small')).toBe(false);
    expect(validateConfig({ rules: [{ name: 'bare' }] }).rules[0].match).toEqual({});
  });

  it('parses listen addresses', () => {
    expect(parseHostPort('0.0.0.0:7000')).toEqual({ host: '0.0.0.0', port: 7000 });
    expect(parseHostPort('[::1]:6543')).toEqual({ host: '::1', port: 6543 });
    expect(parseHostPort('6543')).toEqual({ host: '127.0.0.1', port: 6543 });
    expect(parseHostPort(':6543')).toEqual({ host: '127.0.0.1', port: 6543 });
    expect(parseHostPort('host:65536')).toBeNull();
    expect(parseHostPort('host')).toBeNull();
    expect(validateConfig({ metricsListen: '127.0.0.1:9187' }).metricsListen).toEqual({ host: '127.0.0.1', port: 9187 });
  });
});

describe('validation errors name the key', () => {
  it.each([
    [{ bogus: 1 }, /bogus/],
    [{ limits: { maxClient: 10 } }, /limits[^\n]*maxClient/],
    [{ listen: '127.0.0.1:99999' }, /listen: expected HOST:PORT/],
    [{ upstream: { port: 0 } }, /upstream\.port/],
    [{ upstream: { port: 70000 } }, /upstream\.port/],
    [{ limits: { maxMessageBytes: 10 } }, /limits\.maxMessageBytes/],
    [{ log: { level: 'loud' } }, /log\.level/],
    [{ jobs: { inTransaction: 'maybe' } }, /jobs\.inTransaction/],
    [{ rules: [{ name: 'ok' }, { name: 'bad re', match: { pattern: '(' } }] }, /rules\.1\.name/],
    [{ rules: [{ name: 'r', match: { pattern: '([a-z' } }] }, /rules\.0\.match\.pattern: invalid regular expression/],
    [{ rules: [{ name: 'r', match: { kinds: ['VACUUM'], tables: ['x'] } }] }, /rules\.0\.match[^\n]*tables/],
    [{ rules: [{ name: 'r', action: 'explode' }] }, /rules\.0\.action/],
    [{ rules: [{ name: 'r', priority: 5000 }] }, /rules\.0\.priority/],
  ])('%j', (raw, expected) => {
    expect(configError(() => validateConfig(raw))).toMatch(expected);
  });

  it('reports every invalid key at once', () => {
    const message = configError(() => validateConfig({ upstream: { port: 0 }, shutdown: { grace: 'never' } }));
    expect(message).toMatch(/upstream\.port/);
    expect(message).toMatch(/shutdown\.grace/);
  });
});

describe('loading: file, environment, flags', () => {
  const file = yamlFile(
    [
      'listen: 127.0.0.1:7000',
      'upstream:',
      '  host: db.internal',
      '  port: 5433',
      '  connectTimeout: 3s',
      'log:',
      '  level: warn',
      'jobs:',
      '  supervisePoll: 100ms',
      '  maxInFlight: 2',
      '',
    ].join('\n'),
  );

  it('reads the file', () => {
    const c = loadConfig(file);
    expect(c.listen.port).toBe(7000);
    expect(c.upstream).toEqual({ host: 'db.internal', port: 5433, connectTimeout: 3000 });
    expect(c.log.level).toBe('warn');
    expect(c.jobs.supervisePoll).toBe(100);
  });

  it('reads listenSocketDir from the file, PGBG_LISTEN_SOCKET_DIR and --listen-socket-dir; absolute paths only', () => {
    expect(validateConfig({}).listenSocketDir).toBeNull();
    expect(validateConfig({ listenSocketDir: '/run/pgbg' }).listenSocketDir).toBe('/run/pgbg');
    expect(() => validateConfig({ listenSocketDir: 'run/pgbg' })).toThrow(/listenSocketDir: expected an absolute directory path/);
    const env = overridesFromEnv({ PGBG_LISTEN_SOCKET_DIR: '/tmp/env-sock' });
    expect(loadConfig(undefined, env).listenSocketDir).toBe('/tmp/env-sock');
    expect(loadConfig(undefined, env, { listenSocketDir: '/tmp/flag-sock' }).listenSocketDir).toBe('/tmp/flag-sock');
  });

  it('lets flags win over the environment, and the environment over the file', () => {
    const env = overridesFromEnv({ PGBG_LISTEN: '127.0.0.1:7001', PGBG_LOG_LEVEL: 'debug', PGBG_UPSTREAM: 'env-host:6000' });
    const flags = { listen: '127.0.0.1:7002' };
    const all = loadConfig(file, env, flags);
    expect(all.listen.port).toBe(7002);
    expect(all.log.level).toBe('debug');
    expect(all.upstream.host).toBe('env-host');
    expect(all.upstream.port).toBe(6000);
    // an upstream override keeps the file's other upstream settings
    expect(all.upstream.connectTimeout).toBe(3000);
    expect(loadConfig(file, env).listen.port).toBe(7001);
    expect(loadConfig(file, {}, flags).listen.port).toBe(7002);
    expect(loadConfig(file, {}, {}).listen.port).toBe(7000);
    expect(loadConfig(undefined, env).listen.port).toBe(7001);
    expect(loadConfig(undefined).listen.port).toBe(6432);
  });

  it('merges jobs overrides with the file’s jobs section', () => {
    const env = overridesFromEnv({ PGBG_MAX_IN_FLIGHT: '7', PGBG_MIGRATE: 'yes', PGBG_REGISTRY_URL: 'postgres://x@h/db' });
    const c = loadConfig(file, env);
    expect(c.jobs.maxInFlight).toBe(7);
    expect(c.jobs.migrateOnStart).toBe(true);
    expect(c.jobs.registryUrl).toBe('postgres://x@h/db');
    expect(c.jobs.supervisePoll).toBe(100);
    expect(loadConfig(file, env, { maxInFlight: 3 }).jobs.maxInFlight).toBe(3);
    expect(loadConfig(file).jobs.maxInFlight).toBe(2);
  });

  it('takes auto and unlimited for the in-flight limit, from env and flags too', () => {
    expect(loadConfig(file, overridesFromEnv({ PGBG_MAX_IN_FLIGHT: 'Unlimited' })).jobs.maxInFlight).toBe('unlimited');
    expect(loadConfig(file, {}, { maxInFlight: 'auto' }).jobs.maxInFlight).toBe('auto');
    expect(configError(() => validateConfig({ jobs: { maxInFlight: 0 } }))).toMatch(/jobs\.maxInFlight/);
  });

  it('validates scheduling options of rules: window, time zone, attempts, disconnect policy', () => {
    const ok = validateConfig({
      rules: [{ name: 'night', window: '22:30-02:00:30', timeZone: 'Europe/Berlin', maxAttempts: 5, onDisconnect: 'cancel', maxInFlight: 1, holdWhileBusy: { activeBackends: 10 } }],
    });
    expect(ok.rules[0]).toMatchObject({ window: { from: '22:30', to: '02:00:30' }, timeZone: 'Europe/Berlin', maxAttempts: 5, onDisconnect: 'cancel', maxInFlight: 1 });
    expect(validateConfig({ rules: [{ name: 'x' }] }).rules[0]).toMatchObject({ timeZone: 'UTC', onDisconnect: 'keep' });
    expect(configError(() => validateConfig({ rules: [{ name: 'x', window: '25:00-03:00' }] }))).toMatch(/rules\.0\.window: expected a window such as "01:00-05:00"/);
    expect(configError(() => validateConfig({ rules: [{ name: 'x', window: 'nightly' }] }))).toMatch(/rules\.0\.window/);
    expect(configError(() => validateConfig({ rules: [{ name: 'x', timeZone: 'Mars/Olympus' }] }))).toMatch(/rules\.0\.timeZone: unknown time zone "Mars\/Olympus"/);
    expect(configError(() => validateConfig({ rules: [{ name: 'x', onDisconnect: 'abandon' }] }))).toMatch(/rules\.0\.onDisconnect/);
    expect(configError(() => validateConfig({ jobs: { retry: { maxAttempts: 0 } } }))).toMatch(/jobs\.retry\.maxAttempts/);
    expect(configError(() => validateConfig({ jobs: { maxInFlightPerUser: { alice: 'two' } } }))).toMatch(/jobs\.maxInFlightPerUser\.alice/);
    expect(validateConfig({ jobs: { retry: { baseDelay: '2s' } } }).jobs.retry).toEqual({ maxAttempts: 3, baseDelay: 2000, maxDelay: 30000 });
  });

  it('reads environment variables, ignoring empty ones', () => {
    expect(overridesFromEnv({ PGBG_LISTEN: '', PGBG_MIGRATE: '0', UNRELATED: 'x' })).toEqual({ migrateOnStart: false });
    expect(overridesFromEnv({ PGBG_METRICS_LISTEN: ':9000' })).toEqual({ metricsListen: ':9000' });
    expect(overridesFromEnv({})).toEqual({});
  });

  it('validates overrides like file values', () => {
    expect(configError(() => loadConfig(file, overridesFromEnv({ PGBG_LISTEN: 'nowhere' })))).toMatch(/listen: expected HOST:PORT, got "nowhere"/);
    expect(configError(() => loadConfig(file, { upstream: 'no-port' }))).toMatch(/upstream: expected HOST:PORT/);
    expect(configError(() => loadConfig(file, overridesFromEnv({ PGBG_LOG_LEVEL: 'chatty' })))).toMatch(/log\.level/);
    expect(configError(() => loadConfig(file, overridesFromEnv({ PGBG_MAX_IN_FLIGHT: 'lots' })))).toMatch(/jobs\.maxInFlight/);
  });

  it('names the file when it is missing, not YAML, or not a mapping', () => {
    expect(configError(() => loadConfig(path.join(dir, 'missing.yaml')))).toMatch(/cannot read config file .*missing\.yaml/);
    expect(configError(() => loadConfig(yamlFile('listen: [unclosed\n')))).toMatch(/is not valid YAML/);
    expect(configError(() => loadConfig(yamlFile('- a\n- b\n')))).toMatch(/must hold a mapping/);
    const bad = yamlFile('rules:\n  - name: r\n    match:\n      pattern: "(unclosed"\n');
    expect(configError(() => loadConfig(bad))).toMatch(new RegExp(`invalid ${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\n  rules\\.0\\.match\\.pattern`));
  });

  it('treats an empty file as all defaults', () => {
    expect(loadConfig(yamlFile('')).listen).toEqual({ host: '127.0.0.1', port: 6432 });
    expect(loadConfig(yamlFile('# only a comment\n')).rules).toEqual([]);
  });
});

describe('config/pgbg-proxy.yaml (the documented example)', () => {
  const examplePath = fileURLToPath(new URL('../../config/pgbg-proxy.yaml', import.meta.url));

  /** Strips default/optional/nullable/transform wrappers off a zod schema. */
  function unwrap(schema: any): any {
    for (;;) {
      const def = schema?._zod?.def;
      if (!def) return schema;
      if (['default', 'prefault', 'optional', 'nullable'].includes(def.type)) schema = def.innerType;
      else if (def.type === 'pipe') schema = def.in;
      else return schema;
    }
  }
  /** Dotted paths of every object key in a schema ("rules" elements as rules[]). */
  function keyPaths(schema: any, prefix = ''): string[] {
    const s = unwrap(schema);
    const def = s?._zod?.def;
    if (def?.type === 'object') {
      return Object.entries(s.shape as Record<string, unknown>).flatMap(([k, v]) => [prefix + k, ...keyPaths(v, `${prefix}${k}.`)]);
    }
    if (def?.type === 'array') return keyPaths(def.element, prefix.replace(/\.$/, '[].'));
    return [];
  }
  function presentPaths(value: unknown, prefix = ''): Set<string> {
    const out = new Set<string>();
    if (Array.isArray(value)) {
      for (const v of value) for (const p of presentPaths(v, prefix.replace(/\.$/, '[].'))) out.add(p);
    } else if (value && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) {
        out.add(prefix + k);
        for (const p of presentPaths(v, `${prefix}${k}.`)) out.add(p);
      }
    }
    return out;
  }

  it('is valid and sets every key of the schema, rules included', () => {
    const raw = parseYaml(readFileSync(examplePath, 'utf8'));
    const config = loadConfig(examplePath);
    const expected = keyPaths(configSchema);
    expect(expected).toContain('rules[].match.pattern');
    expect(keyPaths(ruleSchema).length).toBeGreaterThan(5);
    const present = presentPaths(raw);
    expect(expected.filter((k) => !present.has(k))).toEqual([]);
    // and nothing the schema does not know
    expect([...present].filter((k) => !expected.includes(k))).toEqual([]);
    const actions = new Set(config.rules.map((r) => r.action));
    expect(actions).toEqual(new Set(['background', 'foreground', 'reject']));
    expect(config.rules.some((r) => r.match.kinds?.includes('VACUUM') && r.match.kinds.includes('CREATE INDEX'))).toBe(true);
    expect(config.rules.some((r) => r.match.pattern && !r.match.kinds)).toBe(true);
  });

  it('documents every key with a comment', () => {
    const text = readFileSync(examplePath, 'utf8');
    const lines = text.split('\n');
    const undocumented: string[] = [];
    for (const key of keyPaths(configSchema)) {
      const leaf = key.split('.').pop()!;
      if (key.startsWith('rules[]')) {
        // rule keys are explained in the comment block above the rules
        if (!new RegExp(`^#\\s+${leaf}\\b`, 'm').test(text)) undocumented.push(key);
        continue;
      }
      const i = lines.findIndex((l) => new RegExp(`^\\s*${leaf}:`).test(l));
      const before = lines.slice(Math.max(0, i - 4), i).join('\n');
      if (i < 0 || !/#/.test(before + lines[i])) undocumented.push(key);
    }
    expect(undocumented).toEqual([]);
  });
});

describe('tls configuration', () => {
  it('defaults to plain text on both sides', () => {
    expect(validateConfig({}).tls).toEqual({ client: { mode: 'disable' }, server: { mode: 'disable' } });
  });

  it('names the missing files for the modes that need them', () => {
    const msg = configError(() => validateConfig({ tls: { client: { mode: 'prefer' }, server: { mode: 'verify-full' } } }));
    expect(msg).toContain('tls.client.cert: required when tls.client.mode is prefer');
    expect(msg).toContain('tls.client.key: required when tls.client.mode is prefer');
    expect(msg).toContain('tls.server.ca: required when tls.server.mode is verify-full');
    expect(configError(() => validateConfig({ tls: { server: { mode: 'require', cert: '/c' } } }))).toContain('tls.server.key: tls.server.cert and tls.server.key go together');
    expect(configError(() => validateConfig({ tls: { client: { mode: 'verify-full' } } }))).toContain('tls.client.mode');
  });

  it('file < environment < flags, key by key', () => {
    const file = yamlFile('tls:\n  client:\n    mode: prefer\n    cert: /file.crt\n    key: /file.key\n  server:\n    mode: require\n');
    const env = overridesFromEnv({ PGBG_TLS_CLIENT_MODE: 'require', PGBG_TLS_SERVER_MODE: 'verify-ca', PGBG_TLS_SERVER_CA: '/env-ca.crt', PGBG_TLS_CLIENT_KEY: '/env.key' });
    const c = loadConfig(file, env, { tlsClientCert: '/flag.crt', tlsServerMode: 'verify-full' });
    expect(c.tls.client).toEqual({ mode: 'require', cert: '/flag.crt', key: '/env.key' });
    expect(c.tls.server).toEqual({ mode: 'verify-full', ca: '/env-ca.crt' });
  });
});

describe('check-config: TLS files', () => {
  it('names a file that cannot be read and a key that does not match its certificate', async () => {
    const { checkTlsFiles } = await import('../../src/tls/check-files.js');
    const { TestPki } = await import('../support/certs.js');
    const pki = new TestPki();
    try {
      const ca = pki.ca('ca');
      const a = pki.leaf('a', ca, '01');
      const b = pki.leaf('b', ca, '02');
      expect(checkTlsFiles(validateConfig({ tls: { client: { mode: 'require', cert: a.cert, key: a.key }, server: { mode: 'verify-full', ca: ca.cert } } }).tls)).toEqual([]);
      const problems = checkTlsFiles(
        validateConfig({ tls: { client: { mode: 'require', cert: a.cert, key: b.key }, server: { mode: 'verify-ca', ca: path.join(pki.dir, 'missing.crt') } } }).tls,
      );
      expect(problems).toHaveLength(2);
      expect(problems[0]).toMatch(/^tls\.client: cannot use .*a\.crt with .*b\.key: .*key values mismatch/);
      expect(problems[1]).toMatch(/^tls\.server\.ca: cannot read .*missing\.crt: ENOENT/);
    } finally {
      pki.remove();
    }
  });
});

describe('workers', () => {
  it('defaults to 1 (one process, as before) and takes a number or auto from file, environment and flags', async () => {
    const { workerCount } = await import('../../src/supervisor/worker-count.js');
    expect(validateConfig({}).workers).toBe(1);
    expect(workerCount(validateConfig({}).workers)).toBe(1);
    const file = yamlFile('workers: 3\n');
    expect(loadConfig(file).workers).toBe(3);
    expect(loadConfig(file, overridesFromEnv({ PGBG_WORKERS: '2' })).workers).toBe(2);
    expect(loadConfig(file, overridesFromEnv({ PGBG_WORKERS: '2' }), { workers: 4 }).workers).toBe(4);
    const auto = loadConfig(file, overridesFromEnv({ PGBG_WORKERS: 'AUTO' }));
    expect(auto.workers).toBe('auto');
    expect(workerCount(auto.workers)).toBe(os.availableParallelism());
  });

  it('refuses 0, fractions and words other than auto, naming the key', () => {
    for (const bad of [0, 1.5, 'many', -2]) {
      expect(() => validateConfig({ workers: bad })).toThrow(/workers/);
    }
    expect(() => loadConfig(undefined, overridesFromEnv({ PGBG_WORKERS: 'lots' }))).toThrow(ConfigError);
  });
});
