import type { Registry } from 'prom-client';

/** What GET /metrics serves: the text and its content type. */
export interface Exposition {
  readonly contentType: string;
  render(): Promise<string>;
}

/**
 * The /metrics text, rendered at most once per ttlMs and shared by every scrape in between.
 * Rendering walks every metric (and the process metrics prom-client adds) on the proxy's event
 * loop, the same loop that relays client traffic; a scraper polling faster than the data
 * changes would otherwise pay that each time. Job metrics are snapshotted from the server with
 * the same interval (metricsSnapshotTtl), so the cached text is never older than the data it
 * shows. A ttl of 0 renders every scrape.
 */
export function cachedExposition(registry: Registry, ttlMs: () => number): Exposition {
  return cachedRendering(registry.contentType, () => registry.metrics(), ttlMs);
}

/** The same cache over any rendering (workers > 1: the supervisor's aggregate of every worker). */
export function cachedRendering(contentType: string, renderNow: () => Promise<string>, ttlMs: () => number): Exposition {
  let current: Promise<string> | null = null;
  let renderedAt = 0;
  return {
    contentType,
    render() {
      const now = Date.now();
      if (!current || now - renderedAt >= ttlMs()) {
        renderedAt = now;
        const rendering = renderNow();
        current = rendering;
        // A failed rendering is not kept: the next scrape tries again.
        rendering.catch(() => {
          if (current === rendering) current = null;
        });
      }
      return current;
    },
  };
}
