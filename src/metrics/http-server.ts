import http from 'node:http';
import type { Logger } from 'pino';
import type { Exposition } from './exposition-cache.js';

export interface ReadinessCheck {
  /** Resolves with problems found; empty when ready. */
  (): Promise<string[]>;
}

/** GET /metrics (Prometheus text format), /healthz (process alive), /readyz (can serve). */
export async function startMetricsServer(
  address: { host: string; port: number },
  exposition: Exposition,
  ready: ReadinessCheck,
  log: Logger,
): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      exposition
        .render()
        .then((text) => res.writeHead(200, { 'content-type': exposition.contentType }).end(text))
        .catch((err) => {
          log.warn({ err: (err as Error).message }, 'metrics collection failed');
          res.writeHead(500).end('metrics collection failed\n');
        });
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (path === '/readyz') {
      ready()
        .then((problems) =>
          problems.length === 0
            ? res.writeHead(200, { 'content-type': 'text/plain' }).end('ready\n')
            : res.writeHead(503, { 'content-type': 'text/plain' }).end(problems.join('\n') + '\n'),
        )
        .catch((err) => res.writeHead(503).end(`${(err as Error).message}\n`));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz, /readyz\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  log.info({ metrics: `${address.host}:${port}` }, 'metrics endpoint listening');
  return {
    port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
