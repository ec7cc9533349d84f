import v8 from 'node:v8';
import vm from 'node:vm';

/** A message at least this large schedules the release. */
export const LARGE_MESSAGE_BYTES = 8 * 1024 * 1024;
/** Released once no large message has come for this long... */
const QUIET_MS = 1000;
/** ...and at most this often (a full collection pauses every session for some milliseconds). */
const MIN_INTERVAL_MS = 2_000;

let collect: (() => void) | null | undefined;
let timer: NodeJS.Timeout | null = null;
let lastRun = 0;

/**
 * Returns the memory of large messages once they are relayed. The buffers a large message
 * passed through (the socket's read chunks, an assembled Query or Parse and its text) are
 * garbage as soon as it is relayed, but V8 frees such memory only when it collects, and a proxy
 * that goes quiet afterwards allocates too little to make it collect: the memory stayed
 * resident for good (issue 11: +114 MB after one 60 MB message). So a large message schedules
 * one full collection, after a quiet second, at most one per MIN_INTERVAL_MS.
 */
export function noteLargeMessage(bytes: number): void {
  if (bytes < LARGE_MESSAGE_BYTES) return;
  if (timer) timer.refresh();
  else timer = setTimeout(release, QUIET_MS).unref();
}

function release(): void {
  timer = null;
  const wait = lastRun + MIN_INTERVAL_MS - Date.now();
  if (wait > 0) {
    timer = setTimeout(release, wait).unref();
    return;
  }
  lastRun = Date.now();
  fullCollection();
}

function fullCollection(): void {
  if (collect === undefined) {
    try {
      // V8's own gc(), reachable without starting node with --expose-gc: the flag is set now
      // and the function taken from a fresh context, so the proxy's global scope stays clean.
      v8.setFlagsFromString('--expose-gc');
      collect = vm.runInNewContext('gc') as () => void;
    } catch {
      collect = null;
    }
  }
  collect?.();
}
