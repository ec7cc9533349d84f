import { existsSync, readFileSync } from 'node:fs';

/** Pids of a process's children (a supervisor's workers), from /proc; [] once it is gone. */
export function childrenOf(pid: number): number[] {
  const file = `/proc/${pid}/task/${pid}/children`;
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
}
