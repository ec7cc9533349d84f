import { spawn, type ChildProcess } from 'node:child_process';
import { childrenOf } from './child-pids.js';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../harness/cluster.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface ChildProxy {
  port: number;
  child: ChildProcess;
  output(): string;
  /** The processes relaying sessions: the proxy itself, or its workers when it runs several (PGBG_WORKERS). */
  relayPids(): number[];
  kill(signal: NodeJS.Signals): Promise<number | null>;
}

/** Starts `pgbg-proxy start` as its own process (from source) and waits until it accepts connections. */
export async function startChildProxy(args: string[], env: Record<string, string> = {}): Promise<ChildProxy> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'test/support/cli-entry.ts'), 'start', '--listen', `127.0.0.1:${port}`, ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`proxy exited ${child.exitCode}:\n${out}`);
    if (await canConnect(port)) break;
    if (Date.now() > deadline) throw new Error(`proxy did not listen within 20 s:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    port,
    child,
    output: () => out,
    relayPids() {
      const children = childrenOf(child.pid!);
      return children.length > 0 ? children : [child.pid!];
    },
    kill(signal) {
      return new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
        child.once('exit', (code) => resolve(code));
        child.kill(signal);
      });
    },
  };
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
