/** Runs pgbench and parses its summary. */
import path from 'node:path';
import { runCommand } from './procs.js';

export type PgbenchMode = 'simple' | 'extended' | 'prepared';

export interface PgbenchRun {
  /** tps "without initial connection time"; NaN when pgbench printed none. */
  tps: number;
  failed: number;
  processed: number;
  latencyMs: number;
  exitCode: number | null;
  /** pgbench's stderr when it failed or reported errors (trimmed). */
  error?: string;
}

export interface PgbenchTarget {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  /** libpq sslmode; default disable (the benchmark's server has ssl = on, libpq's default would be prefer). */
  sslmode?: string;
}

/** libpq environment for a target: its sslmode, and no channel binding over TLS (it cannot span a proxy; README "TLS"). */
export function libpqEnv(target: PgbenchTarget): Record<string, string> {
  const sslmode = target.sslmode ?? 'disable';
  return sslmode === 'disable' ? { PGSSLMODE: sslmode } : { PGSSLMODE: sslmode, PGCHANNELBINDING: 'disable' };
}

/** rate: a fixed transaction rate (pgbench -R, transactions per second over all clients); absent: as fast as possible. */
export async function runPgbench(
  binDir: string,
  target: PgbenchTarget,
  opts: { mode: PgbenchMode; clients: number; threads: number; seconds: number; rate?: number },
): Promise<PgbenchRun> {
  const args = [
    '-h', target.host,
    '-p', String(target.port),
    '-U', target.user,
    '-n', // no vacuum before the run (done once after initialization)
    '-S',
    '-c', String(opts.clients),
    '-j', String(opts.threads),
    '-T', String(opts.seconds),
    '-M', opts.mode,
    ...(opts.rate ? ['-R', String(opts.rate)] : []),
    target.database,
  ];
  const res = await runCommand(path.join(binDir, 'pgbench'), args, {
    env: { ...process.env, PGPASSWORD: target.password, PGCONNECT_TIMEOUT: '10', LC_ALL: 'C', ...libpqEnv(target) },
    timeoutMs: (opts.seconds + 120) * 1000,
  });
  const out = res.stdout;
  const num = (re: RegExp) => {
    const m = re.exec(out);
    return m ? Number(m[1]) : NaN;
  };
  const run: PgbenchRun = {
    tps: num(/tps = ([\d.]+) \(without initial connection time\)/),
    failed: num(/number of failed transactions: (\d+)/) || 0,
    processed: num(/number of transactions actually processed: (\d+)/),
    latencyMs: num(/latency average = ([\d.]+) ms/),
    exitCode: res.code,
  };
  if (res.code !== 0 || !Number.isFinite(run.tps)) {
    const err = (res.stderr.trim() || res.stdout.trim()).split('\n').slice(-8).join('\n');
    run.error = err || `pgbench exited with status ${res.code}`;
  }
  return run;
}

/** `pgbench -i -s scale` into database (as the given user over TCP; -i ends with VACUUM ANALYZE). */
export async function initPgbench(binDir: string, target: PgbenchTarget, scale: number): Promise<void> {
  const res = await runCommand(path.join(binDir, 'pgbench'), ['-h', target.host, '-p', String(target.port), '-U', target.user, '-i', '-s', String(scale), '-q', target.database], {
    env: { ...process.env, PGPASSWORD: target.password, LC_ALL: 'C', ...libpqEnv(target) },
    timeoutMs: 600_000,
  });
  if (res.code !== 0) throw new Error(`pgbench -i failed (status ${res.code}):\n${res.stderr.trim()}`);
}
