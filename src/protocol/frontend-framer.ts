import { ProtocolViolation } from './errors.js';

/** Frontend message type bytes valid after startup (protocol 3.0). */
const FRONTEND_TYPES = new Uint8Array(256);
for (const c of 'BCdcfDEHFPpQSX') FRONTEND_TYPES[c.charCodeAt(0)] = 1;

/**
 * Large messages the reader does not need whole (a 60 MB Bind, a CopyData) may be passed on in
 * the pieces they arrive in. Assembling one would hold a buffer of its full size, and that
 * memory would stay resident until V8 happens to collect the buffer: with nothing else
 * allocating, for good.
 */
export interface PieceSink {
  /** Asked at the header of a message of `total` bytes that spans reads: stream it? */
  wants(type: number, total: number): boolean;
  /** A piece of a streamed message, in order; `first` carries its header, `last` its end. */
  piece(type: number, bytes: Buffer, first: boolean, last: boolean): void;
}

/**
 * A whole message: bytes [start, end) of `bytes` (the read it came in, or the buffer it was
 * assembled in). They stay valid after the call: Node does not reuse a read's memory.
 */
export type MessageRangeHandler = (type: number, bytes: Buffer, start: number, end: number) => void;

/** Messages below this are always assembled (cheap, and the session may read them). */
export const STREAM_MIN_BYTES = 256 * 1024;

/**
 * Cuts a client byte stream into whole frontend messages (type byte + int32 length + body)
 * without parsing bodies. Every length is checked against a hard bound before any buffering,
 * so a hostile length field costs nothing; a message that spans reads is assembled into one
 * preallocated buffer, never by repeated concatenation, or, if large and the PieceSink wants
 * it, handed on in pieces without being assembled at all.
 */
export class FrontendFramer {
  private carry: Buffer | null = null;
  private partial: Buffer | null = null;
  private partialFilled = 0;
  private streamType = 0;
  private streamRemaining = 0;

  constructor(private readonly maxMessageBytes: number) {}

  /** Calls onMessage(type, wholeMessage) for each complete message; throws ProtocolViolation. */
  push(chunk: Buffer, onMessage: (type: number, message: Buffer) => void, pieces?: PieceSink): void {
    this.pushRanges(chunk, (type, bytes, start, end) => onMessage(type, start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end)), pieces);
  }

  /**
   * As push, but each complete message is handed on as a range of a buffer, so that a caller
   * that only forwards it makes no Buffer object for it (the relay's hot path).
   */
  pushRanges(chunk: Buffer, onMessage: MessageRangeHandler, pieces?: PieceSink): void {
    let buf = chunk;
    let pos = 0;
    if (this.streamRemaining > 0) {
      const take = Math.min(this.streamRemaining, buf.length);
      this.streamRemaining -= take;
      pos = take;
      if (take > 0) pieces!.piece(this.streamType, buf.subarray(0, take), false, this.streamRemaining === 0);
      if (this.streamRemaining > 0) return;
    } else if (this.partial) {
      const need = this.partial.length - this.partialFilled;
      const take = Math.min(need, buf.length);
      buf.copy(this.partial, this.partialFilled, 0, take);
      this.partialFilled += take;
      pos = take;
      if (this.partialFilled < this.partial.length) return;
      const whole = this.partial;
      this.partial = null;
      onMessage(whole[0], whole, 0, whole.length);
    } else if (this.carry) {
      buf = Buffer.concat([this.carry, buf]);
      this.carry = null;
    }
    while (pos < buf.length) {
      if (buf.length - pos < 5) {
        this.carry = Buffer.from(buf.subarray(pos));
        return;
      }
      const type = buf[pos];
      if (FRONTEND_TYPES[type] === 0) {
        throw new ProtocolViolation(`invalid frontend message type ${type}`, 'bad_type');
      }
      const length = buf.readInt32BE(pos + 1);
      if (length < 4) throw new ProtocolViolation(`invalid message length ${length}`, 'bad_length');
      if (length + 1 > this.maxMessageBytes) {
        throw new ProtocolViolation(`message of ${length + 1} bytes exceeds the limit of ${this.maxMessageBytes}`, 'too_large');
      }
      const end = pos + 1 + length;
      if (end <= buf.length) {
        onMessage(type, buf, pos, end);
        pos = end;
        continue;
      }
      if (pieces && length + 1 >= STREAM_MIN_BYTES && pieces.wants(type, length + 1)) {
        this.streamType = type;
        this.streamRemaining = end - buf.length;
        pieces.piece(type, buf.subarray(pos), true, false);
        return;
      }
      this.partial = Buffer.allocUnsafe(length + 1);
      buf.copy(this.partial, 0, pos);
      this.partialFilled = buf.length - pos;
      return;
    }
  }

  /** A streamed message is under way: the next bytes are its rest, not a new message. */
  get midStream(): boolean {
    return this.streamRemaining > 0;
  }

  /** Bytes held for an incomplete message; bounded by maxMessageBytes. */
  get bufferedBytes(): number {
    return (this.carry?.length ?? 0) + (this.partial ? this.partialFilled : 0);
  }
}
