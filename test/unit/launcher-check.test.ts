import { describe, expect, it } from 'vitest';
import { LauncherCheckThrottle } from '../../src/jobs/launcher-check.js';

describe('LauncherCheckThrottle', () => {
  it('lets one session per (database, login) look per interval, and forgets the oldest beyond its bound', () => {
    let now = 1000;
    const t = new LauncherCheckThrottle(2000, 3, () => now);
    expect(t.due('db', 'alice')).toBe(true);
    expect(t.due('db', 'alice')).toBe(false);
    expect(t.due('db', 'bob')).toBe(true);
    expect(t.due('other', 'alice')).toBe(true);
    now += 1999;
    expect(t.due('db', 'alice')).toBe(false);
    now += 1;
    expect(t.due('db', 'alice')).toBe(true);
    // Bound of 3 entries: a fourth key pushes out the oldest ('db', 'bob'), which is due again.
    expect(t.due('db', 'carol')).toBe(true);
    expect(t.due('db', 'bob')).toBe(true);
  });
});
