import { describe, expect, it } from 'vitest';
import { SkippedReadyTracker } from '../../src/session/skipped-ready.js';

const t = (c: string) => c.charCodeAt(0);
/** Feeds server message types; returns the ReadyForQuery found never to come. */
function feed(tracker: SkippedReadyTracker, types: string): number {
  let never = 0;
  for (const c of types) never += tracker.note(t(c));
  return never;
}

describe('SkippedReadyTracker', () => {
  it('an error already in before the Query is sent: the Query gets no ReadyForQuery, nor does a later one of the batch', () => {
    const k = new SkippedReadyTracker();
    expect(feed(k, 'E')).toBe(0);
    expect(k.isUnsure(3)).toBe(true);
    expect(k.add(0, 3)).toBe(false);
    expect(k.isUnsure(0)).toBe(true); // the batch may be skipping
    expect(k.add(0, 0)).toBe(false);
    k.synced();
    expect(k.batchMaySkip).toBe(false);
    expect(feed(k, 'Z')).toBe(0);
    expect(k.tracking).toBe(false);
  });

  it('an error after the Query is sent, before its extended messages completed: it and the batch\'s later ones are dropped', () => {
    const k = new SkippedReadyTracker();
    expect(k.add(0, 3)).toBe(true); // P B E ahead, nothing answered yet
    expect(k.add(1, 0)).toBe(true); // a second Query of the batch
    k.synced();
    expect(feed(k, '1')).toBe(0);
    expect(feed(k, 'E')).toBe(2);
    expect(feed(k, 'Z')).toBe(0); // the Sync's
    expect(k.tracking).toBe(false);
  });

  it('extended messages that complete: the Query runs; its own error does not drop it', () => {
    const k = new SkippedReadyTracker();
    expect(feed(k, '1')).toBe(0); // Parse answered before the Query was sent
    expect(k.add(0, 3)).toBe(true);
    expect(feed(k, '2DC')).toBe(0); // Bind, Execute done: the Query runs
    expect(feed(k, 'EZ')).toBe(0); // the Query's own error and ReadyForQuery
    k.synced();
    expect(feed(k, 'Z')).toBe(0);
    expect(k.tracking).toBe(false);
  });

  it('a Query behind earlier ReadyForQuery starts counting only once those have come', () => {
    const k = new SkippedReadyTracker();
    // an earlier batch with its Sync still unanswered (1 owed), then P B E and a Query
    expect(k.add(1, 3)).toBe(true);
    // the earlier batch's answers, including an error of its own, then its ReadyForQuery
    expect(feed(k, '12EZ')).toBe(0);
    // now this batch: Parse fails
    expect(feed(k, 'E')).toBe(1);
  });

  it('Describe answers count once (ParameterDescription is not a completion)', () => {
    const k = new SkippedReadyTracker();
    expect(k.add(0, 2)).toBe(true); // Parse, Describe statement
    expect(feed(k, '1tT')).toBe(0); // both complete: the Query runs
    expect(feed(k, 'E')).toBe(0); // so this error is the Query's
  });
});
