/**
 * Cleanup stack for the benchmark: every started resource registers how to stop it; the stack
 * unwinds (newest first) on normal exit, on error and on SIGINT/SIGTERM/SIGHUP.
 */
type CleanupFn = () => Promise<void> | void;

interface Entry {
  name: string;
  fn: CleanupFn;
}

const stack: Entry[] = [];
let running: Promise<void> | null = null;

/** Registers a cleanup step; returns a function that unregisters it (after a manual stop). */
export function onCleanup(name: string, fn: CleanupFn): () => void {
  const entry: Entry = { name, fn };
  stack.push(entry);
  return () => {
    const i = stack.indexOf(entry);
    if (i >= 0) stack.splice(i, 1);
  };
}

async function withTimeout(p: Promise<void> | void, ms: number, name: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.resolve(p),
    new Promise<void>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`cleanup "${name}" timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Runs every registered cleanup step once, newest first; errors are printed, not thrown. */
export function cleanupAll(): Promise<void> {
  if (running) return running;
  running = (async () => {
    while (stack.length > 0) {
      const entry = stack.pop()!;
      try {
        await withTimeout(entry.fn(), 20_000, entry.name);
      } catch (err) {
        console.error(`bench: cleanup of ${entry.name} failed: ${(err as Error).message}`);
      }
    }
  })();
  return running;
}

let interrupted = false;

/** True once a signal asked the benchmark to stop. */
export function wasInterrupted(): boolean {
  return interrupted;
}

/** On SIGINT/SIGTERM/SIGHUP: clean up, then exit 128+n. A second signal exits at once. */
export function installSignalHandlers(): void {
  const codes: Record<string, number> = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 };
  for (const [signal, n] of Object.entries(codes)) {
    process.on(signal as NodeJS.Signals, () => {
      if (interrupted) {
        console.error(`bench: second ${signal}, exiting without waiting for cleanup`);
        process.exit(128 + n);
      }
      interrupted = true;
      console.error(`\nbench: ${signal} received, cleaning up (pgbouncer, proxy, cluster)...`);
      void cleanupAll().then(() => process.exit(128 + n));
    });
  }
}
