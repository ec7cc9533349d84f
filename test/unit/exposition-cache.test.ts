import { describe, expect, it } from 'vitest';
import { Counter, Gauge, Registry } from 'prom-client';
import { cachedExposition } from '../../src/metrics/exposition-cache.js';

function registryWithCounter(): { registry: Registry; counter: Counter } {
  const registry = new Registry();
  const counter = new Counter({ name: 'test_events_total', help: 'events', registers: [registry] });
  return { registry, counter };
}

describe('cachedExposition', () => {
  it('serves one rendering to every scrape within the ttl and renders again after it', async () => {
    const { registry, counter } = registryWithCounter();
    let ttl = 60_000;
    const exposition = cachedExposition(registry, () => ttl);
    counter.inc();
    const first = await exposition.render();
    expect(first).toContain('test_events_total 1');
    counter.inc(5);
    expect(await exposition.render()).toBe(first);
    ttl = 0;
    expect(await exposition.render()).toContain('test_events_total 6');
    expect(exposition.contentType).toBe(registry.contentType);
  });

  it('renders every scrape when the ttl is 0', async () => {
    const { registry, counter } = registryWithCounter();
    const exposition = cachedExposition(registry, () => 0);
    for (let i = 1; i <= 3; i++) {
      counter.inc();
      expect(await exposition.render()).toContain(`test_events_total ${i}`);
    }
  });

  it('does not keep a failed rendering: the next scrape tries again', async () => {
    const registry = new Registry();
    let failNext = true;
    new Gauge({
      name: 'test_flaky',
      help: 'fails once',
      registers: [registry],
      collect() {
        if (failNext) {
          failNext = false;
          throw new Error('server snapshot failed');
        }
        this.set(7);
      },
    });
    const exposition = cachedExposition(registry, () => 60_000);
    await expect(exposition.render()).rejects.toThrow('server snapshot failed');
    expect(await exposition.render()).toContain('test_flaky 7');
  });
});
