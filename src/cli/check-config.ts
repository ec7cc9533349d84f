import type { ProxyConfig } from '../config/schema.js';

/** `pgbg-proxy check-config`: loading already validated everything; report what was read. */
export async function runCheckConfig(config: ProxyConfig, path: string | undefined): Promise<number> {
  const rules = config.rules.map((r) => `  - ${r.name}: ${r.action}${r.match.kinds ? ` kinds=${r.match.kinds.join(',')}` : ''}${r.match.pattern ? ` pattern=/${r.match.pattern.source}/` : ''}`);
  console.log(
    [
      `${path ?? '(defaults)'}: configuration is valid`,
      `listen ${config.listen.host}:${config.listen.port}, upstream ${config.upstream.host}:${config.upstream.port}`,
      `${config.rules.length} rule(s)${rules.length ? ':' : ''}`,
      ...rules,
    ].join('\n'),
  );
  return 0;
}
