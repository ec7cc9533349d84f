import { ProtocolViolation } from './errors.js';

/** Reads the bodies of the frontend messages the proxy must look into. Any inconsistency is a protocol violation. */
class BodyReader {
  private pos = 5;
  constructor(
    private readonly msg: Buffer,
    private readonly encoding: BufferEncoding = 'utf8',
  ) {}

  cstring(): string {
    const end = this.msg.indexOf(0, this.pos);
    if (end < 0) throw new ProtocolViolation('unterminated string in message', 'bad_string');
    const s = this.msg.toString(this.encoding, this.pos, end);
    this.pos = end + 1;
    return s;
  }
  int16(): number {
    this.need(2);
    const v = this.msg.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  /** Counts (parameters, formats, columns) are unsigned 16-bit: up to 65,535. */
  uint16(): number {
    this.need(2);
    const v = this.msg.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  int32(): number {
    this.need(4);
    const v = this.msg.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  uint32(): number {
    this.need(4);
    const v = this.msg.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  byte(): number {
    this.need(1);
    return this.msg[this.pos++];
  }
  bytes(n: number): Buffer {
    this.need(n);
    const b = this.msg.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  end(): void {
    if (this.pos !== this.msg.length) throw new ProtocolViolation('message length does not match its contents', 'bad_length');
  }
  private need(n: number): void {
    if (this.pos + n > this.msg.length) throw new ProtocolViolation('message shorter than its contents', 'bad_length');
  }
}

/** encoding: how to read the client's bytes as characters (see ClientSession's textEncoding). */
export function readQuery(msg: Buffer, encoding: BufferEncoding = 'utf8'): string {
  const r = new BodyReader(msg, encoding);
  const sql = r.cstring();
  r.end();
  return sql;
}

/** Texts up to this many bytes are searched by a loop (see nulFrom). */
const SHORT_SEARCH_BYTES = 512;

/**
 * The index of the first zero byte of msg at or after `from`, or -1. Statement texts and names
 * are mostly short, and for them a loop costs less than the native indexOf call's fixed cost
 * (perf of the relay's hot path, which looks for two in every Parse and one in every Query);
 * a long text gets the native search's speed.
 */
export function nulFrom(msg: Buffer, from: number): number {
  const loopEnd = Math.min(msg.length, from + SHORT_SEARCH_BYTES);
  for (let i = from; i < loopEnd; i++) if (msg[i] === 0) return i;
  return loopEnd < msg.length ? msg.indexOf(0, loopEnd) : -1;
}

/**
 * Where the SQL text of a well-formed Query ends (it starts at 5), without decoding it; -1 when
 * the message is not well formed (readQuery says how).
 */
export function querySqlEnd(msg: Buffer): number {
  const end = nulFrom(msg, 5);
  return end >= 5 && end === msg.length - 1 ? end : -1;
}

/** The byte ranges of a well-formed Parse message's name and SQL text, without decoding them. */
export interface ParseLayout {
  /** The statement name is [5, nameEnd). */
  nameEnd: number;
  /** The SQL text is [nameEnd + 1, sqlEnd). */
  sqlEnd: number;
}

/** null when the message is not well formed (readParse says how). */
export function parseLayout(msg: Buffer): ParseLayout | null {
  const nameEnd = nulFrom(msg, 5);
  if (nameEnd < 0) return null;
  const sqlEnd = nulFrom(msg, nameEnd + 1);
  if (sqlEnd < 0 || sqlEnd + 3 > msg.length) return null;
  const paramTypes = msg.readUInt16BE(sqlEnd + 1);
  return sqlEnd + 3 + 4 * paramTypes === msg.length ? { nameEnd, sqlEnd } : null;
}

export interface ParseMessage {
  name: string;
  sql: string;
  paramTypes: number[];
}
export function readParse(msg: Buffer, encoding: BufferEncoding = 'utf8'): ParseMessage {
  const r = new BodyReader(msg, encoding);
  const name = r.cstring();
  const sql = r.cstring();
  const n = r.uint16();
  const paramTypes: number[] = [];
  for (let i = 0; i < n; i++) paramTypes.push(r.uint32());
  r.end();
  return { name, sql, paramTypes };
}

export interface BindMessage {
  portal: string;
  statement: string;
  paramFormats: number[];
  /** null stands for SQL NULL. */
  params: (Buffer | null)[];
  resultFormats: number[];
}
export function readBind(msg: Buffer): BindMessage {
  const r = new BodyReader(msg);
  const portal = r.cstring();
  const statement = r.cstring();
  const nf = r.uint16();
  const paramFormats: number[] = [];
  for (let i = 0; i < nf; i++) paramFormats.push(r.int16());
  const np = r.uint16();
  const params: (Buffer | null)[] = [];
  for (let i = 0; i < np; i++) {
    const len = r.int32();
    if (len === -1) params.push(null);
    else if (len < 0) throw new ProtocolViolation('invalid parameter length', 'bad_length');
    else params.push(Buffer.from(r.bytes(len)));
  }
  const nr = r.uint16();
  const resultFormats: number[] = [];
  for (let i = 0; i < nr; i++) resultFormats.push(r.int16());
  r.end();
  return { portal, statement, paramFormats, params, resultFormats };
}

/** Describe and Close share a layout: 'S' or 'P', then a name. */
export interface TargetMessage {
  kind: 'S' | 'P';
  name: string;
}
export function readTarget(msg: Buffer): TargetMessage {
  const r = new BodyReader(msg);
  const k = r.byte();
  if (k !== 0x53 && k !== 0x50) throw new ProtocolViolation('Describe/Close target must be S or P', 'bad_target');
  const name = r.cstring();
  r.end();
  return { kind: k === 0x53 ? 'S' : 'P', name };
}

export interface ExecuteMessage {
  portal: string;
  maxRows: number;
}
export function readExecute(msg: Buffer): ExecuteMessage {
  const r = new BodyReader(msg);
  const portal = r.cstring();
  const maxRows = r.int32();
  r.end();
  return { portal, maxRows };
}
