import { existsSync, mkdirSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Builds dist/ from src/ unless a build newer than every source file exists; one build at a time. */
export async function ensureBuilt(): Promise<void> {
  const tmp = path.join(root, '.tmp');
  mkdirSync(tmp, { recursive: true });
  const lock = path.join(tmp, 'pgbg-build.lock');
  const stamp = path.join(tmp, 'pgbg-build.stamp');
  const deadline = Date.now() + 180_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      try {
        if (Date.now() - statSync(lock).mtimeMs > 120_000) rmSync(lock, { recursive: true, force: true });
      } catch {
        /* gone meanwhile */
      }
      if (Date.now() > deadline) throw new Error(`build lock ${lock} held for too long`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    const newestSource = (dir: string): number =>
      Math.max(0, ...readdirSync(dir, { withFileTypes: true }).map((e) => (e.isDirectory() ? newestSource(path.join(dir, e.name)) : statSync(path.join(dir, e.name)).mtimeMs)));
    const built = existsSync(stamp) && existsSync(path.join(root, 'dist', 'cli', 'main.js')) ? statSync(stamp).mtimeMs : 0;
    if (built > newestSource(path.join(root, 'src'))) return;
    const started = Date.now();
    const r = spawnSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: root, encoding: 'utf8' });
    // Type errors still emit JavaScript; only a missing entry point stops the tests.
    if (r.status !== 0) process.stderr.write(`[build] tsc exited ${r.status}:\n${r.stdout}${r.stderr}\n`);
    if (!existsSync(path.join(root, 'dist', 'cli', 'main.js'))) throw new Error(`tsc produced no dist/cli/main.js:\n${r.stdout}${r.stderr}`);
    writeFileSync(stamp, String(started));
    utimesSync(stamp, started / 1000, started / 1000);
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

