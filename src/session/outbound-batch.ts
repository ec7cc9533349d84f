/**
 * Collects the buffers one client read forwards to the server, merging neighbours that are
 * adjacent slices of the same chunk, so a pipelined batch (Parse/Bind/Describe/Execute/Sync)
 * leaves in one write without copying. A run of adjacent slices is remembered by its first
 * slice and its end, and made into one Buffer only when it ends: one object per write instead
 * of one per message (this is on the relay's hot path).
 */
export class OutboundBatch {
  private parts: Buffer[] = [];
  /** First slice of the run being collected; null when none. */
  private runFirst: Buffer | null = null;
  /** Offset in runFirst.buffer just past the run's last byte. */
  private runEnd = 0;

  add(buf: Buffer): void {
    const run = this.runFirst;
    if (run !== null && run.buffer === buf.buffer && this.runEnd === buf.byteOffset) {
      this.runEnd += buf.length;
      return;
    }
    this.closeRun();
    this.runFirst = buf;
    this.runEnd = buf.byteOffset + buf.length;
  }

  /** Hands the collected buffers to write() and empties the batch. */
  drainTo(write: (buf: Buffer) => void): void {
    this.closeRun();
    const parts = this.parts;
    if (parts.length === 0) return;
    this.parts = [];
    for (const p of parts) write(p);
  }

  get empty(): boolean {
    return this.runFirst === null && this.parts.length === 0;
  }

  private closeRun(): void {
    const run = this.runFirst;
    if (run === null) return;
    this.runFirst = null;
    const length = this.runEnd - run.byteOffset;
    this.parts.push(length === run.length ? run : Buffer.from(run.buffer, run.byteOffset, length));
  }
}
