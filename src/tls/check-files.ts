import pino from 'pino';
import type { TlsConfig } from '../config/schema.js';
import { ClientTls } from './client-tls.js';
import { loadUpstreamTls } from './upstream-tls.js';

/** Loads the certificate, key and CA files tls.* names, as a start would; returns what is wrong with them. */
export function checkTlsFiles(tls: TlsConfig): string[] {
  const problems: string[] = [];
  try {
    new ClientTls(tls.client, pino({ level: 'silent' }));
  } catch (err) {
    problems.push((err as Error).message);
  }
  try {
    loadUpstreamTls(tls.server);
  } catch (err) {
    problems.push((err as Error).message);
  }
  return problems;
}
