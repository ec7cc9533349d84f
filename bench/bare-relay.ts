/**
 * The floor for any Node.js relay: a TCP relay that parses nothing and inspects nothing, with
 * the proxy's socket settings (noDelay on both legs, keep-alive upstream), one upstream
 * connection per client, bytes piped both ways as they arrive. `npm run bench` runs it as its
 * own process beside PgBouncer and pgbg-proxy, so the difference between it and the proxy is
 * what the proxy's framing, inspection and bookkeeping cost.
 *
 *   node --import tsx bench/bare-relay.ts <listen port> <upstream host> <upstream port>
 */
import net from 'node:net';

const [listenPort, upstreamHost, upstreamPort] = process.argv.slice(2);
if (!listenPort || !upstreamHost || !upstreamPort) {
  process.stderr.write('usage: bare-relay <listen port> <upstream host> <upstream port>\n');
  process.exit(2);
}

const server = net.createServer({ noDelay: true }, (client) => {
  client.setNoDelay(true);
  const upstream = net.connect({ host: upstreamHost, port: Number(upstreamPort), noDelay: true });
  upstream.setKeepAlive(true, 30_000);
  const closeBoth = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', closeBoth);
  upstream.on('error', closeBoth);
  client.on('close', closeBoth);
  upstream.on('close', closeBoth);
  client.pipe(upstream);
  upstream.pipe(client);
});

server.listen(Number(listenPort), '127.0.0.1', () => {
  process.stderr.write(`bare relay on 127.0.0.1:${listenPort} -> ${upstreamHost}:${upstreamPort}\n`);
});
process.on('SIGTERM', () => {
  server.close();
  process.exit(0);
});
