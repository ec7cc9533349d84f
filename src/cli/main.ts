import cluster from 'node:cluster';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, inFlightValue, loadRawConfig, overridesFromEnv, validateConfig, workersValue, type ConfigOverrides } from '../config/load.js';

interface Command {
  summary: string;
  usage: string;
  options: NonNullable<ParseArgsConfig['options']>;
  run(values: Record<string, string | boolean | undefined>, positionals: string[]): Promise<number>;
}

const configOptions = {
  config: { type: 'string', short: 'c' },
  listen: { type: 'string' },
  'listen-socket-dir': { type: 'string' },
  upstream: { type: 'string' },
  'metrics-listen': { type: 'string' },
  'log-level': { type: 'string' },
  'max-in-flight': { type: 'string' },
  'tls-client-mode': { type: 'string' },
  'tls-client-cert': { type: 'string' },
  'tls-client-key': { type: 'string' },
  'tls-server-mode': { type: 'string' },
  'tls-server-ca': { type: 'string' },
  'tls-server-cert': { type: 'string' },
  'tls-server-key': { type: 'string' },
  workers: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export const commands: Record<string, Command> = {
  start: {
    summary: 'run the proxy',
    usage: `pgbg-proxy start [--config FILE] [--listen HOST:PORT] [--listen-socket-dir DIR] [--upstream HOST:PORT]
                 [--metrics-listen HOST:PORT] [--log-level LEVEL] [--max-in-flight N]
                 [--workers N|auto] [--migrate]
                 [--tls-client-mode MODE --tls-client-cert FILE --tls-client-key FILE]
                 [--tls-server-mode MODE --tls-server-ca FILE --tls-server-cert FILE --tls-server-key FILE]

  --config FILE            YAML configuration (see config/pgbg-proxy.yaml)
  --listen HOST:PORT       where clients connect (default 127.0.0.1:6432)
  --listen-socket-dir DIR  also listen on the Unix socket DIR/.s.PGSQL.<port> (psql -h DIR -p PORT)
  --upstream HOST:PORT     the PostgreSQL server (default 127.0.0.1:5432)
  --metrics-listen H:P     serve /metrics, /healthz, /readyz over HTTP
  --log-level LEVEL        fatal, error, warn, info, debug, trace, silent
  --max-in-flight N        background jobs running on the server at once; more wait queued
                           (a number, auto = from max_worker_processes, or unlimited)
  --workers N|auto         relay processes sharing the listening address (default 1; auto =
                           the cores available); see "Workers" in the README
  --migrate                create or upgrade the pgbg schema (jobs.registryUrl) before serving
  --tls-client-mode MODE   TLS for clients: disable, allow, prefer, require
  --tls-client-cert FILE   the proxy's certificate (PEM) shown to clients; --tls-client-key FILE its key
  --tls-server-mode MODE   TLS to the server: disable, prefer, require, verify-ca, verify-full
  --tls-server-ca FILE     CA certificates (PEM) that verify the server
  --tls-server-cert FILE   client certificate (PEM) the proxy shows the server; --tls-server-key FILE its key
Environment: PGBG_LISTEN, PGBG_LISTEN_SOCKET_DIR, PGBG_UPSTREAM, PGBG_METRICS_LISTEN, PGBG_LOG_LEVEL, PGBG_REGISTRY_URL, PGBG_MIGRATE,
PGBG_MAX_IN_FLIGHT, PGBG_WORKERS, PGBG_TLS_CLIENT_MODE, PGBG_TLS_CLIENT_CERT, PGBG_TLS_CLIENT_KEY, PGBG_TLS_SERVER_MODE,
PGBG_TLS_SERVER_CA, PGBG_TLS_SERVER_CERT, PGBG_TLS_SERVER_KEY.
Flags win over environment variables, which win over the file.
Signals: SIGHUP reloads the file (and the TLS certificate and key files); SIGTERM/SIGINT drain sessions for shutdown.grace, then exit.
With workers > 1 send them to the supervisor (the process started); it passes them on.`,
    options: { ...configOptions, migrate: { type: 'boolean' } },
    // Commands load their modules on use, so --help and check-config start fast.
    run: async (v) => {
      // A cluster worker runs this same command line; it takes its configuration from the
      // supervisor over IPC instead of reading the sources itself (src/supervisor/worker.ts).
      if (cluster.isWorker) return (await import('../supervisor/worker.js')).runWorker();
      return (await import('./start.js')).runStart(configFrom(v), () => configFrom(v), () => rawConfigFrom(v));
    },
  },
  'check-config': {
    summary: 'validate a configuration file and its rules, then exit',
    usage: `pgbg-proxy check-config [--config FILE]

Exits 0 and prints a summary when the configuration is valid; otherwise prints every
invalid key with what is wrong and exits 1.`,
    options: configOptions,
    run: async (v) => (await import('./check-config.js')).runCheckConfig(configFrom(v), v.config as string | undefined),
  },
  migrate: {
    summary: 'create or upgrade the pgbg job registry in a database',
    usage: `pgbg-proxy migrate --database URL

  --database URL   postgres://SUPERUSER@HOST:PORT/DBNAME (the password may come from PGPASSWORD)
Idempotent: running it again on a current registry changes nothing.`,
    options: { database: { type: 'string', short: 'd' }, help: { type: 'boolean', short: 'h' } },
    run: async (v) => (await import('./migrate.js')).runMigrate(v.database as string | undefined),
  },
};

function configFrom(values: Record<string, string | boolean | undefined>) {
  return validateConfig(rawConfigFrom(values), (values.config as string | undefined) ?? 'configuration');
}

function rawConfigFrom(values: Record<string, string | boolean | undefined>) {
  const flags: ConfigOverrides = {
    listen: values.listen as string | undefined,
    listenSocketDir: values['listen-socket-dir'] as string | undefined,
    upstream: values.upstream as string | undefined,
    metricsListen: values['metrics-listen'] as string | undefined,
    logLevel: values['log-level'] as string | undefined,
    migrateOnStart: values.migrate === true ? true : undefined,
    maxInFlight: values['max-in-flight'] !== undefined ? inFlightValue(values['max-in-flight'] as string) : undefined,
    tlsClientMode: values['tls-client-mode'] as string | undefined,
    tlsClientCert: values['tls-client-cert'] as string | undefined,
    tlsClientKey: values['tls-client-key'] as string | undefined,
    tlsServerMode: values['tls-server-mode'] as string | undefined,
    tlsServerCa: values['tls-server-ca'] as string | undefined,
    tlsServerCert: values['tls-server-cert'] as string | undefined,
    tlsServerKey: values['tls-server-key'] as string | undefined,
    workers: values.workers !== undefined ? workersValue(values.workers as string) : undefined,
  };
  return loadRawConfig(values.config as string | undefined, overridesFromEnv(process.env), flags);
}

function help(): string {
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(14)}${c.summary}`);
  return `pgbg-proxy: a PostgreSQL proxy that runs hinted statements as pg_background jobs

Usage: pgbg-proxy <command> [options]   (pgbg-proxy <command> --help for its options)

Commands:
${lines.join('\n')}`;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(help());
    return name ? 0 : 1;
  }
  const command = commands[name];
  if (!command) {
    console.error(`pgbg-proxy: unknown command "${name}"\n\n${help()}`);
    return 2;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options: command.options, allowPositionals: false, strict: true });
  } catch (err) {
    console.error(`pgbg-proxy ${name}: ${(err as Error).message}\n\n${command.usage}`);
    return 2;
  }
  if (parsed.values.help) {
    console.log(command.usage);
    return 0;
  }
  try {
    return await command.run(parsed.values as Record<string, string | boolean | undefined>, parsed.positionals);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`pgbg-proxy ${name}: ${err.message}`);
      return 1;
    }
    throw err;
  }
}
