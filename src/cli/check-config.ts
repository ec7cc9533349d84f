import type { ProxyConfig } from '../config/schema.js';
import { checkTlsFiles } from '../tls/check-files.js';

/** `pgbg-proxy check-config`: loading already validated everything but the TLS files; report what was read. */
export async function runCheckConfig(config: ProxyConfig, path: string | undefined): Promise<number> {
  const tlsProblems = checkTlsFiles(config.tls);
  if (tlsProblems.length) {
    console.error(`pgbg-proxy check-config: ${path ?? 'configuration'}: TLS files cannot be used:\n${tlsProblems.map((p) => `  ${p}`).join('\n')}`);
    return 1;
  }
  const rules = config.rules.map((r) => `  - ${r.name}: ${r.action}${r.match.kinds ? ` kinds=${r.match.kinds.join(',')}` : ''}${r.match.pattern ? ` pattern=/${r.match.pattern.source}/` : ''}`);
  console.log(
    [
      `${path ?? '(defaults)'}: configuration is valid`,
      `listen ${config.listen.host}:${config.listen.port}, upstream ${config.upstream.host}:${config.upstream.port}`,
      `tls: client ${config.tls.client.mode}, server ${config.tls.server.mode}`,
      `${config.rules.length} rule(s)${rules.length ? ':' : ''}`,
      ...rules,
    ].join('\n'),
  );
  return 0;
}
