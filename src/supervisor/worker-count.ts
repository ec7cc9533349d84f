import os from 'node:os';
import type { ProxyConfig } from '../config/schema.js';

/** How many relay processes `workers` asks for: "auto" = the cores this process may use. */
export function workerCount(workers: ProxyConfig['workers']): number {
  return workers === 'auto' ? Math.max(1, os.availableParallelism()) : workers;
}
