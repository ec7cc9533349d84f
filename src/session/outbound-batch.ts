/**
 * Collects what one client read forwards to the server, merging neighbours that lie next to each
 * other in the same memory, so a pipelined batch (Parse/Bind/Describe/Execute/Sync) leaves in one
 * write without copying. A run of adjacent bytes is remembered as a range of one buffer and made
 * into a Buffer only when it ends: one object per write instead of one per message (this is on
 * the relay's hot path), and the read itself when the run is all of it.
 */
export class OutboundBatch {
  private parts: Buffer[] = [];
  /** The buffer the run being collected is a range of; null when there is no run. */
  private runChunk: Buffer | null = null;
  /** The run is [runStart, runEnd) of runChunk; runEnd may pass runChunk's end (see mergeView). */
  private runStart = 0;
  private runEnd = 0;

  add(buf: Buffer): void {
    this.addRange(buf, 0, buf.length);
  }

  /** Adds bytes [start, end) of chunk, which must stay unchanged until drained. */
  addRange(chunk: Buffer, start: number, end: number): void {
    const run = this.runChunk;
    if (run !== null) {
      if (chunk === run) {
        if (start === this.runEnd) {
          this.runEnd = end;
          return;
        }
      } else if (this.mergeView(chunk, start, end)) return;
      this.closeRun();
    }
    this.runChunk = chunk;
    this.runStart = start;
    this.runEnd = end;
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
    return this.runChunk === null && this.parts.length === 0;
  }

  /**
   * Another view of the same memory (a message sliced from the read the run is a range of, or
   * the read after a sliced message) that starts where the run ends joins the run. The run moves
   * to the new view when that one holds all of it; otherwise it runs past its view's end, and
   * closeRun makes a Buffer over the memory.
   */
  private mergeView(chunk: Buffer, start: number, end: number): boolean {
    const run = this.runChunk!;
    if (chunk.buffer !== run.buffer || chunk.byteOffset + start !== run.byteOffset + this.runEnd) return false;
    const from = run.byteOffset + this.runStart;
    if (chunk.byteOffset <= from) {
      this.runChunk = chunk;
      this.runStart = from - chunk.byteOffset;
      this.runEnd = end;
    } else {
      this.runEnd += end - start;
    }
    return true;
  }

  private closeRun(): void {
    const run = this.runChunk;
    if (run === null) return;
    this.runChunk = null;
    const start = this.runStart;
    const end = this.runEnd;
    if (start === 0 && end === run.length) this.parts.push(run);
    else if (end <= run.length) this.parts.push(run.subarray(start, end));
    else this.parts.push(Buffer.from(run.buffer, run.byteOffset + start, end - start));
  }
}
