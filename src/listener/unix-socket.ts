import net from 'node:net';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';

/** Longest socket path the kernel takes (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

export interface UnixSocketListener {
  readonly path: string;
  /** Stops accepting and removes the socket file (if it is still ours). */
  close(): Promise<void>;
}

/** The name libpq looks for: `psql -h DIR -p PORT` connects to DIR/.s.PGSQL.PORT. */
export function socketPath(dir: string, port: number): string {
  return path.join(dir, `.s.PGSQL.${port}`);
}

/**
 * Makes DIR/.s.PGSQL.PORT free to listen on, as the postmaster does: a socket file left by a
 * process that is gone is removed, and a live one (another proxy or a PostgreSQL on the same
 * port) is never taken over: the start fails instead. Under a supervisor (workers > 1) the
 * supervisor calls it once, before any worker listens.
 */
export async function claimSocketFile(dir: string, port: number, log: Logger): Promise<string> {
  const file = socketPath(dir, port);
  if (Buffer.byteLength(file) > MAX_SOCKET_PATH) {
    throw new Error(`listenSocketDir: socket path ${file} is longer than ${MAX_SOCKET_PATH} bytes`);
  }
  const dirStat = await fs.stat(dir).catch(() => null);
  if (!dirStat?.isDirectory()) throw new Error(`listenSocketDir: ${dir} is not an existing directory`);
  await removeStale(file, log);
  return file;
}

/** Removes a socket file nothing listens on any more (a supervisor's, once its workers stopped). */
export async function releaseSocketFile(file: string): Promise<void> {
  const st = await fs.lstat(file).catch(() => null);
  if (st?.isSocket() && !(await accepts(file))) await fs.unlink(file).catch(() => undefined);
}

/**
 * Listens on DIR/.s.PGSQL.PORT with the handler the TCP listener uses. The file gets mode 0777,
 * PostgreSQL's default unix_socket_permissions: who may connect is pg_hba's business on the
 * server, and the directory's own permissions still apply.
 *
 * `shared` (a worker under a supervisor): the supervisor holds the socket and hands each
 * worker its connections, as it does for TCP; it claimed the file before the workers started
 * and removes it after the last one stopped, so a worker neither checks nor removes it.
 */
export async function listenUnixSocket(dir: string, port: number, onConnection: (socket: net.Socket) => void, log: Logger, shared = false): Promise<UnixSocketListener> {
  const file = shared ? socketPath(dir, port) : await claimSocketFile(dir, port, log);
  const server = net.createServer({ noDelay: true }, onConnection);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ path: file, exclusive: !shared }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err, socket: file }, 'unix socket listener error'));
  await fs.chmod(file, 0o777);
  const ours = await fs.stat(file);
  log.info({ socket: file }, 'listening on unix socket');
  return {
    path: file,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // server.close() waits for open connections; the listener drains those itself.
        setTimeout(resolve, 1000).unref();
      });
      if (shared) return;
      // Node removes the file on close; remove it if it is still there and still ours.
      const now = await fs.stat(file).catch(() => null);
      if (now && now.ino === ours.ino && now.dev === ours.dev) await fs.unlink(file).catch(() => undefined);
    },
  };
}

async function removeStale(file: string, log: Logger): Promise<void> {
  const st = await fs.lstat(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  if (!st) return;
  if (!st.isSocket()) throw new Error(`listenSocketDir: ${file} exists and is not a socket; refusing to replace it`);
  if (await accepts(file)) throw new Error(`listenSocketDir: another process is listening on ${file} (is another pgbg-proxy or a PostgreSQL server using this port?)`);
  await fs.unlink(file);
  log.warn({ socket: file }, 'removed a stale unix socket file left by a process that is gone');
}

/** Whether something accepts connections on the socket file. */
function accepts(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect({ path: file });
    const timer = setTimeout(() => {
      probe.destroy();
      resolve(true); // it exists and does not refuse: treat it as live
    }, 1000);
    probe.once('connect', () => {
      clearTimeout(timer);
      probe.destroy();
      resolve(true);
    });
    probe.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT');
    });
  });
}
