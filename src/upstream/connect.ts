import net from 'node:net';
import { startUpstreamTls, type UpstreamTls } from '../tls/upstream-tls.js';

export interface UpstreamAddress {
  host: string;
  port: number;
  /** tls.server as loaded; absent: plain text. */
  tls?: UpstreamTls;
}

/**
 * Opens a TCP (or, for a host starting with '/', Unix-socket) connection with a deadline, and
 * negotiates TLS on it as tls.server says (src/tls/upstream-tls.ts), within the same deadline.
 */
export async function connectUpstream(addr: UpstreamAddress, timeoutMs: number): Promise<net.Socket> {
  const deadline = Date.now() + timeoutMs;
  const socket = await connectSocket(addr, timeoutMs);
  if (!addr.tls) return socket;
  return startUpstreamTls(socket, addr.host, addr.tls, Math.max(1, deadline - Date.now()));
}

function connectSocket(addr: UpstreamAddress, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = addr.host.startsWith('/')
      ? net.connect({ path: `${addr.host}/.s.PGSQL.${addr.port}` })
      : net.connect({ host: addr.host, port: addr.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`timed out after ${timeoutMs} ms connecting to ${addr.host}:${addr.port}`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 30_000);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** Sends a CancelRequest for (pid, key) on a fresh connection (in TLS where tls.server says so), as PostgreSQL requires. */
export async function sendCancel(addr: UpstreamAddress, pid: number, key: number, timeoutMs: number): Promise<void> {
  const socket = await connectUpstream(addr, timeoutMs);
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4);
  packet.writeInt32BE(pid, 8);
  packet.writeInt32BE(key, 12);
  await new Promise<void>((resolve) => {
    socket.on('error', () => resolve());
    socket.on('close', () => resolve());
    socket.end(packet);
  });
}
