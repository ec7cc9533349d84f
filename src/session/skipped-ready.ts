/**
 * Which ReadyForQuery the server will never send.
 *
 * A simple Query (or FunctionCall) that a client sends after extended-protocol messages with no
 * Sync in between is legal, and the server runs it, unless one of those extended messages
 * failed: the server then discards everything up to the next Sync, this Query included, and
 * only the Sync's ReadyForQuery comes. A session counting one ReadyForQuery per forwarded Query
 * would then wait for one that never comes (and a hinted statement after it would wait for an
 * idle moment for ever).
 *
 * The server answers in order, and each forwarded extended message (Parse, Bind, Describe,
 * Execute, Close) ends with exactly one completion message unless an error stops the batch. So
 * once every ReadyForQuery owed before such a Query has arrived, the proxy counts the
 * completions that follow: all of them before any ErrorResponse, and the Query runs; an
 * ErrorResponse first, and the server skips it and every later Query or FunctionCall before the
 * same Sync. Nothing here is read unless such a Query was sent; the session calls note() only
 * while it has extended messages out or tracking is on.
 */

const PARSE_COMPLETE = 0x31; // '1'
const BIND_COMPLETE = 0x32; // '2'
const CLOSE_COMPLETE = 0x33; // '3'
const ROW_DESCRIPTION = 0x54; // 'T': a Describe's last answer (Execute never sends one)
const NO_DATA = 0x6e; // 'n': a Describe's last answer
const COMMAND_COMPLETE = 0x43; // 'C'
const EMPTY_QUERY = 0x49; // 'I'
const PORTAL_SUSPENDED = 0x73; // 's'
const ERROR_RESPONSE = 0x45; // 'E'
const READY_FOR_QUERY = 0x5a; // 'Z'

interface UnsureReady {
  /** ReadyForQuery messages the server owes before its own (those of earlier messages). */
  before: number;
  /** The Syncs forwarded before it: every unsure Query of one batch shares its fate. */
  batch: number;
  /** Completions of extended messages ahead of it still to come. */
  ahead: number;
}

export class SkippedReadyTracker {
  private readonly unsure: UnsureReady[] = [];
  private syncs = 0;
  /** The batch (Sync count) that has an unsure Query: later Queries of it are unsure too. */
  private unsureBatch = -1;
  /**
   * Since the last ReadyForQuery: extended completions, and whether an ErrorResponse came. Once
   * either is set, every server message is noted up to the next ReadyForQuery, which clears them.
   */
  private completed = 0;
  private failed = false;

  /** Whether server messages must be noted even with no extended message out. */
  get tracking(): boolean {
    return this.unsure.length > 0 || this.completed > 0 || this.failed;
  }

  /** The client's Sync was forwarded: a new batch begins after it. */
  synced(): void {
    this.syncs++;
  }

  /**
   * The current batch (since the last Sync) has a Query the server may have skipped: the server
   * may be discarding messages until the client's Sync, so the proxy must not run statements of
   * its own before it.
   */
  get batchMaySkip(): boolean {
    return this.unsureBatch === this.syncs;
  }

  /** Whether a Query or FunctionCall forwarded now may be skipped by the server. */
  isUnsure(forwardedSinceSync: number): boolean {
    return forwardedSinceSync > 0 || this.batchMaySkip;
  }

  /**
   * A Query or FunctionCall for which isUnsure() was true is being forwarded; `pendingReady` is
   * the count of ReadyForQuery owed before it, `ahead` the extended messages forwarded since the
   * last message that gets a ReadyForQuery. False when the server is already known to skip it:
   * then no ReadyForQuery comes for it and the session must not count one.
   */
  add(pendingReady: number, ahead: number): boolean {
    this.unsureBatch = this.syncs;
    if (this.unsure.length === 0 && pendingReady === 0) {
      // Everything owed before it has arrived: what came since the last ReadyForQuery is the
      // answer to the extended messages ahead of it.
      if (this.failed) return false;
      const left = ahead - this.completed;
      if (left > 0) this.unsure.push({ before: 0, batch: this.syncs, ahead: left });
      return true;
    }
    this.unsure.push({ before: pendingReady, batch: this.syncs, ahead });
    return true;
  }

  /**
   * One server message. Returns how many of the ReadyForQuery the session counted will never
   * come (0 almost always).
   */
  note(type: number): number {
    if (type === READY_FOR_QUERY) {
      this.completed = 0;
      this.failed = false;
      for (const u of this.unsure) u.before--;
      this.settleHead();
      return 0;
    }
    const head = this.unsure[0];
    const active = head !== undefined && head.before === 0;
    if (type === ERROR_RESPONSE) {
      this.failed = true;
      if (active && head.ahead > 0) return this.skipBatch(head.batch);
      return 0;
    }
    if (isCompletion(type)) {
      this.completed++;
      if (active && --head.ahead <= 0) {
        this.unsure.shift();
        this.settleHead();
      }
    }
    return 0;
  }

  /** A head first in line with nothing ahead of it runs for sure. */
  private settleHead(): void {
    while (this.unsure.length > 0 && this.unsure[0].before <= 0 && this.unsure[0].ahead <= 0) this.unsure.shift();
  }

  /** The server is skipping to the batch's Sync: its unsure Queries get no ReadyForQuery. */
  private skipBatch(batch: number): number {
    let dropped = 0;
    while (this.unsure.length > 0 && this.unsure[0].batch === batch) {
      this.unsure.shift();
      dropped++;
    }
    // Later ones counted the dropped ones' ReadyForQuery among those owed before them.
    for (const u of this.unsure) u.before -= dropped;
    return dropped;
  }
}

function isCompletion(type: number): boolean {
  switch (type) {
    case PARSE_COMPLETE:
    case BIND_COMPLETE:
    case CLOSE_COMPLETE:
    case ROW_DESCRIPTION:
    case NO_DATA:
    case COMMAND_COMPLETE:
    case EMPTY_QUERY:
    case PORTAL_SUSPENDED:
      return true;
    default:
      return false;
  }
}
