/**
 * The real command-line program (bin/pgbg-proxy.js over dist/), run as a child process.
 * dist/ is rebuilt from src/ first (under a lock shared with shutdown.test.ts).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { readFileSync } from 'node:fs';
import { ensureBuilt } from './support/build-dist.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = path.join(root, 'bin', 'pgbg-proxy.js');
const example = path.join(root, 'config', 'pgbg-proxy.yaml');


interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGBG_')));
    const child = spawn(process.execPath, [bin, ...args], { cwd: root, env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-cli-test-'));
let n = 0;
function configFile(text: string): string {
  const p = path.join(dir, `config-${n++}.yaml`);
  writeFileSync(p, text);
  return p;
}

beforeAll(async () => {
  await ensureBuilt();
}, 180_000);

describe.concurrent('help', () => {
  it('prints the commands for --help and exits 0', async () => {
    for (const flag of ['--help', '-h', 'help']) {
      const r = await cli([flag]);
      expect(r.code, flag).toBe(0);
      for (const command of ['start', 'check-config', 'migrate']) expect(r.stdout).toMatch(new RegExp(`^\\s+${command}\\s+\\S`, 'm'));
    }
  });

  it('prints the help and exits non-zero without a command', async () => {
    const r = await cli([]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/Usage: pgbg-proxy <command>/);
  });

  it('lists the options of start', async () => {
    const r = await cli(['start', '--help']);
    expect(r.code).toBe(0);
    for (const option of ['--config', '--listen', '--upstream', '--metrics-listen', '--log-level', '--migrate']) expect(r.stdout).toContain(option);
    expect(r.stdout).toMatch(/PGBG_LISTEN/);
    expect(r.stdout).toMatch(/SIGHUP/);
  });

  it('lists the options of check-config', async () => {
    const r = await cli(['check-config', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/pgbg-proxy check-config \[--config FILE\]/);
    expect(r.stdout).toMatch(/exits 1/i);
  });
});

describe.concurrent('usage errors exit 2', () => {
  it('refuses an unknown command', async () => {
    const r = await cli(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown command "frobnicate"/);
    expect(r.stdout).toBe('');
  });

  it('refuses an unknown option and a stray argument', async () => {
    const bad = await cli(['check-config', '--no-such-flag']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/no-such-flag/);
    const stray = await cli(['check-config', 'extra']);
    expect(stray.code).toBe(2);
  });
});

describe.concurrent('check-config', () => {
  it('accepts the example configuration and summarises its rules', async () => {
    const r = await cli(['check-config', '--config', example]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const raw = parseYaml(readFileSync(example, 'utf8')) as { rules: { name: string; action?: string }[]; listen: string };
    expect(r.stdout).toContain('configuration is valid');
    expect(r.stdout).toContain(`${raw.rules.length} rule(s)`);
    for (const rule of raw.rules) expect(r.stdout).toContain(`- ${rule.name}: ${rule.action ?? 'background'}`);
    expect(r.stdout).toContain(`listen ${raw.listen}`);
  });

  it.each([
    ['an unknown top-level key', 'listen: 127.0.0.1:7000\nlisten_port: 7000\n', /listen_port/],
    ['an unknown nested key', 'shutdown:\n  grace: 5s\n  graceful: true\n', /shutdown[^\n]*graceful/],
    ['a bad port', 'upstream:\n  port: 70000\n', /upstream\.port/],
    ['a bad listen address', 'listen: 127.0.0.1:123456\n', /listen: expected HOST:PORT/],
    ['a bad regular expression in a rule', 'rules:\n  - name: bad\n    match:\n      pattern: "(unclosed"\n', /rules\.0\.match\.pattern: invalid regular expression/],
    ['a bad duration', 'shutdown:\n  grace: soonish\n', /shutdown\.grace: expected a duration/],
    ['a bad action in the second rule', 'rules:\n  - name: a\n  - name: b\n    action: later\n', /rules\.1\.action/],
    ['invalid YAML', 'rules: [\n', /not valid YAML/],
  ])('refuses %s with exit 1 and names it', async (_what, text, expected) => {
    const file = configFile(text);
    const r = await cli(['check-config', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(expected);
    expect(r.stderr).toContain(file);
    expect(r.stdout).toBe('');
  });

  it('refuses a missing file with exit 1', async () => {
    const r = await cli(['check-config', '--config', path.join(dir, 'nope.yaml')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read config file .*nope\.yaml/);
  });

  it('shows environment overrides, and flags over them', async () => {
    const file = configFile('listen: 127.0.0.1:7000\nupstream:\n  host: db.example\n  port: 5433\n');
    const fromFile = await cli(['check-config', '--config', file]);
    expect(fromFile.stdout).toContain('listen 127.0.0.1:7000, upstream db.example:5433');
    const fromEnv = await cli(['check-config', '--config', file], { PGBG_LISTEN: '127.0.0.1:7777', PGBG_UPSTREAM: 'other.example:6000' });
    expect(fromEnv.code).toBe(0);
    expect(fromEnv.stdout).toContain('listen 127.0.0.1:7777, upstream other.example:6000');
    const fromFlag = await cli(['check-config', '--config', file, '--listen', '0.0.0.0:8888'], { PGBG_LISTEN: '127.0.0.1:7777' });
    expect(fromFlag.stdout).toContain('listen 0.0.0.0:8888, upstream db.example:5433');
    const badEnv = await cli(['check-config', '--config', file], { PGBG_LISTEN: 'not-an-address' });
    expect(badEnv.code).toBe(1);
    expect(badEnv.stderr).toMatch(/listen: expected HOST:PORT, got "not-an-address"/);
  });

  it('works without a file (defaults)', async () => {
    const r = await cli(['check-config']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('(defaults): configuration is valid');
    expect(r.stdout).toContain('listen 127.0.0.1:6432, upstream 127.0.0.1:5432');
    expect(r.stdout).toContain('0 rule(s)');
  });
});

describe('start', () => {
  it('exits 1 on an invalid configuration without listening', async () => {
    const file = configFile('limits:\n  maxClients: 0\n');
    const r = await cli(['start', '--config', file, '--listen', '127.0.0.1:0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/limits\.maxClients/);
  });
});
