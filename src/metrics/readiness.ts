import pg from 'pg';
import type { ProxyConfig } from '../config/schema.js';
import { connectUpstream } from '../upstream/connect.js';
import { connectPgClient, type UpstreamTls } from '../tls/upstream-tls.js';
import { registryVersion, REGISTRY_VERSION } from '../jobs/migrate.js';

/** /readyz: the server accepts TCP connections, and the registry (if configured) is current. */
export function readinessCheck(config: () => ProxyConfig, tls?: () => UpstreamTls) {
  return async (): Promise<string[]> => {
    const c = config();
    const problems: string[] = [];
    try {
      const s = await connectUpstream({ host: c.upstream.host, port: c.upstream.port }, Math.min(c.upstream.connectTimeout, 2000));
      s.destroy();
    } catch (err) {
      problems.push(`upstream ${c.upstream.host}:${c.upstream.port} unreachable: ${(err as Error).message}`);
    }
    if (c.jobs.enabled && c.jobs.registryUrl) {
      const url = c.jobs.registryUrl;
      let client: pg.Client | null = null;
      try {
        client = await connectPgClient(url, tls?.(), (ssl) => new pg.Client({ connectionString: url, application_name: 'pgbg-proxy readyz', connectionTimeoutMillis: 2000, ssl }));
        const v = await registryVersion(client);
        if (v === null) problems.push('job registry not installed: run pgbg-proxy migrate');
        else if (v < REGISTRY_VERSION) problems.push(`job registry at version ${v}, this proxy needs ${REGISTRY_VERSION}: run pgbg-proxy migrate`);
      } catch (err) {
        problems.push(`registry database unreachable: ${(err as Error).message}`);
      } finally {
        await client?.end().catch(() => {});
      }
    }
    return problems;
  };
}
