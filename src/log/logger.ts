import { pino, type Logger } from 'pino';

export type { Logger };

export interface LogSettings {
  level: string;
  pretty: boolean;
}

/**
 * JSON lines on stdout. Password messages are never parsed, and SQL text is logged only at
 * debug level, so info-level logs carry no secrets; the redaction list is a second fence for
 * fields that could still hold one (connection strings, startup options).
 */
export function createLogger(settings: LogSettings, destination?: NodeJS.WritableStream): Logger {
  const options = {
    level: settings.level,
    base: { service: 'pgbg-proxy' },
    redact: { paths: ['password', '*.password', 'registryUrl', '*.registryUrl', 'url', '*.url'], censor: '[redacted]' },
  };
  if (settings.pretty && !destination) {
    return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true } } });
  }
  return destination ? pino(options, destination) : pino(options);
}
