/**
 * Walks the server's byte stream message by message without copying bodies.
 *
 * In relay mode every byte is handed on as it arrived (a large message is forwarded in pieces);
 * the walker only notes each message's type, and the status byte of ReadyForQuery. In capture
 * mode whole messages are assembled and handed to a consumer: that is how the proxy reads the
 * answers to statements it runs on a client's upstream session itself. The sink decides the mode
 * at each message boundary.
 *
 * noteMessage must not write to the client: bytes of the chunk being walked may still be waiting
 * to be relayed. Act on what was noted after push() returns.
 */
export interface BackendStreamSink {
  relay(bytes: Buffer): void;
  noteMessage(type: number, status: number): void;
  capture(type: number, message: Buffer): void;
  /** Whether to assemble the message of this type and hand it to capture() rather than relay it. */
  capturing(type: number): boolean;
}

const READY_FOR_QUERY = 0x5a;

export class BackendStream {
  private remaining = 0;
  private readonly header = Buffer.alloc(6);
  private headerFilled = 0;
  private assembling: Buffer | null = null;
  private assembled = 0;

  constructor(private readonly sink: BackendStreamSink) {}

  push(chunk: Buffer): void {
    let pos = 0;
    let relayFrom = 0;
    while (pos < chunk.length) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, chunk.length - pos);
        pos += take;
        this.remaining -= take;
        continue;
      }
      if (this.assembling) {
        const take = Math.min(this.assembling.length - this.assembled, chunk.length - pos);
        chunk.copy(this.assembling, this.assembled, pos, pos + take);
        this.assembled += take;
        pos += take;
        relayFrom = pos;
        if (this.assembled === this.assembling.length) this.finishCapture();
        continue;
      }
      const headerStart = pos;
      const heldBefore = this.headerFilled;
      let type: number;
      let total: number;
      let status = 0;
      // Where the header's bytes are: the chunk (the common case, read in place) or this.header
      // (a header split across reads, collected byte by byte).
      let headerInChunk: boolean;
      if (heldBefore === 0 && chunk.length - pos >= 6) {
        type = chunk[pos];
        total = 1 + chunk.readInt32BE(pos + 1);
        if (type === READY_FOR_QUERY) {
          status = chunk[pos + 5];
          pos += 6;
        } else pos += 5;
        headerInChunk = true;
      } else {
        while (pos < chunk.length && this.headerFilled < this.headerNeeded()) this.header[this.headerFilled++] = chunk[pos++];
        if (this.headerFilled < this.headerNeeded()) {
          this.relayRange(chunk, relayFrom, headerStart);
          return; // the header bytes are held in this.header, not relayed yet
        }
        type = this.header[0];
        total = 1 + this.header.readInt32BE(1);
        if (type === READY_FOR_QUERY) status = this.header[5];
        headerInChunk = false;
      }
      const headerLen = headerInChunk ? pos - headerStart : this.headerFilled;
      this.headerFilled = 0;
      if (this.sink.capturing(type)) {
        this.relayRange(chunk, relayFrom, headerStart);
        relayFrom = pos;
        this.assembling = Buffer.allocUnsafe(total);
        if (headerInChunk) chunk.copy(this.assembling, 0, headerStart, pos);
        else this.header.copy(this.assembling, 0, 0, headerLen);
        this.assembled = headerLen;
        if (this.assembled === total) this.finishCapture();
        continue;
      }
      if (heldBefore > 0) {
        this.relayRange(chunk, relayFrom, headerStart);
        relayFrom = headerStart;
        this.sink.relay(Buffer.from(this.header.subarray(0, heldBefore)));
      }
      this.remaining = total - headerLen;
      this.sink.noteMessage(type, status);
    }
    this.relayRange(chunk, relayFrom, pos);
  }

  /** Relays [from, to) of the chunk, if not empty; all of it as the chunk itself (no new object). */
  private relayRange(chunk: Buffer, from: number, to: number): void {
    if (to > from) this.sink.relay(from === 0 && to === chunk.length ? chunk : chunk.subarray(from, to));
  }

  /** ReadyForQuery is read with its status byte; every other message by its 5-byte header. */
  private headerNeeded(): number {
    return this.headerFilled >= 1 && this.header[0] === READY_FOR_QUERY ? 6 : 5;
  }

  private finishCapture(): void {
    const msg = this.assembling!;
    this.assembling = null;
    this.sink.capture(msg[0], msg);
  }

  get atBoundary(): boolean {
    return this.remaining === 0 && this.headerFilled === 0 && !this.assembling;
  }
}
