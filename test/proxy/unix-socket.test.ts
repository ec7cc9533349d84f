/**
 * Unix-domain socket listening (listenSocketDir): the socket is DIR/.s.PGSQL.<port> as libpq
 * expects, mode 0777, a stale file is replaced, a live one or a non-socket is never taken over,
 * and the file is gone after shutdown.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, lstatSync, existsSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort, getCluster } from '../harness/index.js';
import { startTestProxy } from '../support/proxy.js';

const cluster = getCluster();
const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-sock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** psql over the proxy's socket (asynchronously: the proxy runs in this process). */
function psqlOverSocket(port: number, sql: string, user = 'alice'): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(path.join(cluster.binDir, 'psql'), ['-X', '-w', '-A', '-t', '-h', dir, '-p', String(port), '-U', user, '-d', 'app', '-c', sql], {
      env: { ...process.env, PGPASSWORD: 'alice-secret', PGCONNECT_TIMEOUT: '10' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

describe('listenSocketDir', () => {
  it('psql -h DIR -p PORT connects through the socket; mode 0777; removed at shutdown', async () => {
    const via = await startTestProxy(cluster, { listenSocketDir: dir });
    const file = path.join(dir, `.s.PGSQL.${via.port}`);
    try {
      expect(via.proxy.socketPath).toBe(file);
      const st = lstatSync(file);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o777);
      const r = await psqlOverSocket(via.port, "SELECT current_user || ' ' || (pg_backend_pid() > 0)::text");
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('alice true');
      expect(r.status).toBe(0);
    } finally {
      await via.close();
    }
    expect(existsSync(file)).toBe(false);
  });

  it('replaces a stale socket file left by a process that is gone', async () => {
    const port = await freePort();
    const file = path.join(dir, `.s.PGSQL.${port}`);
    // A bound, never-listening socket: what a killed process leaves behind.
    const made = spawnSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(file)})`]);
    expect(made.status).toBe(0);
    expect(lstatSync(file).isSocket()).toBe(true);
    const via = await startTestProxy(cluster, { listenSocketDir: dir, listen: `127.0.0.1:${port}` });
    try {
      const r = await psqlOverSocket(port, 'SELECT 42');
      expect(r.stdout.trim()).toBe('42');
    } finally {
      await via.close();
    }
  });

  it('refuses to start where another process listens on the socket, or the name is not a socket', async () => {
    const port = await freePort();
    const file = path.join(dir, `.s.PGSQL.${port}`);
    const other = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => other.listen(file, () => r()));
    try {
      await expect(startTestProxy(cluster, { listenSocketDir: dir, listen: `127.0.0.1:${port}` })).rejects.toThrow(/another process is listening/);
      // the other process's socket is untouched, and the TCP port was let go
      expect(statSync(file).isSocket()).toBe(true);
      await new Promise<void>((resolve, reject) => {
        const s = net.connect({ path: file }, () => {
          s.destroy();
          resolve();
        });
        s.on('error', reject);
      });
    } finally {
      await new Promise<void>((r) => other.close(() => r()));
    }
    writeFileSync(file, 'not a socket');
    await expect(startTestProxy(cluster, { listenSocketDir: dir, listen: `127.0.0.1:${port}` })).rejects.toThrow(/not a socket/);
    rmSync(file);
    await expect(startTestProxy(cluster, { listenSocketDir: path.join(dir, 'missing'), listen: `127.0.0.1:${port}` })).rejects.toThrow(/is not an existing directory/);
    // with the way clear, the same port works
    const via = await startTestProxy(cluster, { listenSocketDir: dir, listen: `127.0.0.1:${port}` });
    await via.close();
  });
});
