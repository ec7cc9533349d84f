/**
 * Collects the buffers one client read forwards to the server, merging neighbours that are
 * adjacent slices of the same chunk, so a pipelined batch (Parse/Bind/Describe/Execute/Sync)
 * leaves in one write without copying.
 */
export class OutboundBatch {
  private parts: Buffer[] = [];

  add(buf: Buffer): void {
    const last = this.parts[this.parts.length - 1];
    if (last && last.buffer === buf.buffer && last.byteOffset + last.length === buf.byteOffset) {
      this.parts[this.parts.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + buf.length);
    } else {
      this.parts.push(buf);
    }
  }

  /** Hands the collected buffers to write() and empties the batch. */
  drainTo(write: (buf: Buffer) => void): void {
    if (this.parts.length === 0) return;
    const parts = this.parts;
    this.parts = [];
    for (const p of parts) write(p);
  }

  get empty(): boolean {
    return this.parts.length === 0;
  }
}
