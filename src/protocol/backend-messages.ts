/**
 * Writers for the backend messages the proxy answers with itself. Relayed server messages are
 * never rebuilt: they travel as the bytes the server sent.
 */

import { cstr, frame, int16, int32 } from './message-encoding.js';

export interface ErrorFields {
  severity?: 'ERROR' | 'FATAL' | 'WARNING' | 'NOTICE';
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

export function errorResponse(f: ErrorFields): Buffer {
  return fieldsMessage('E', f);
}
export function noticeResponse(f: ErrorFields): Buffer {
  return fieldsMessage('N', { ...f, severity: f.severity ?? 'NOTICE' });
}

function fieldsMessage(type: 'E' | 'N', f: ErrorFields): Buffer {
  const severity = f.severity ?? 'ERROR';
  const parts: Buffer[] = [
    Buffer.from('S'),
    cstr(severity),
    Buffer.from('V'),
    cstr(severity),
    Buffer.from('C'),
    cstr(f.code),
    Buffer.from('M'),
    cstr(f.message),
  ];
  if (f.detail) parts.push(Buffer.from('D'), cstr(f.detail));
  if (f.hint) parts.push(Buffer.from('H'), cstr(f.hint));
  parts.push(Buffer.from([0]));
  return frame(type, Buffer.concat(parts));
}

/** A protocol 2.0 ErrorResponse: 'E' and one string, as the server answers a pre-3.0 client. */
export function legacyErrorResponse(severity: 'FATAL', message: string): Buffer {
  return Buffer.concat([Buffer.from('E'), cstr(`${severity}:  ${message}\n`)]);
}

export function readyForQuery(status: 'I' | 'T' | 'E'): Buffer {
  return frame('Z', Buffer.from(status));
}

export interface ColumnSpec {
  name: string;
  typeOid: number;
  typeSize: number;
}
export const INT8: Omit<ColumnSpec, 'name'> = { typeOid: 20, typeSize: 8 };
export const TEXT: Omit<ColumnSpec, 'name'> = { typeOid: 25, typeSize: -1 };
export const INT4: Omit<ColumnSpec, 'name'> = { typeOid: 23, typeSize: 4 };
export const FLOAT8: Omit<ColumnSpec, 'name'> = { typeOid: 701, typeSize: 8 };

/** RowDescription; formats[i] = 1 asks for binary for column i (extended protocol only). */
export function rowDescription(columns: ColumnSpec[], formats: number[] = []): Buffer {
  const parts: Buffer[] = [int16(columns.length)];
  columns.forEach((c, i) => {
    const meta = Buffer.alloc(18);
    meta.writeInt32BE(0, 0); // table oid
    meta.writeInt16BE(0, 4); // column number
    meta.writeInt32BE(c.typeOid, 6);
    meta.writeInt16BE(c.typeSize, 10);
    meta.writeInt32BE(-1, 12); // type modifier
    meta.writeInt16BE(formatFor(formats, i), 16);
    parts.push(cstr(c.name), meta);
  });
  return frame('T', Buffer.concat(parts));
}

export function formatFor(formats: number[], i: number): number {
  if (formats.length === 0) return 0;
  if (formats.length === 1) return formats[0];
  return formats[i] ?? 0;
}

/** DataRow from already-encoded values (null = SQL NULL). */
export function dataRow(values: (Buffer | null)[]): Buffer {
  const parts: Buffer[] = [int16(values.length)];
  for (const v of values) {
    if (v === null) parts.push(int32(-1));
    else parts.push(int32(v.length), v);
  }
  return frame('D', Buffer.concat(parts));
}

export function commandComplete(tag: string): Buffer {
  return frame('C', cstr(tag));
}
export const parseComplete = (): Buffer => frame('1', Buffer.alloc(0));
export const bindComplete = (): Buffer => frame('2', Buffer.alloc(0));
export const closeComplete = (): Buffer => frame('3', Buffer.alloc(0));
export const noData = (): Buffer => frame('n', Buffer.alloc(0));
export const emptyQueryResponse = (): Buffer => frame('I', Buffer.alloc(0));

export function parameterDescription(oids: number[]): Buffer {
  const b = Buffer.alloc(2 + 4 * oids.length);
  b.writeUInt16BE(oids.length, 0);
  oids.forEach((o, i) => b.writeUInt32BE(o, 2 + 4 * i));
  return frame('t', b);
}

export function authenticationOk(): Buffer {
  return frame('R', int32(0));
}
export function authenticationCleartext(): Buffer {
  return frame('R', int32(3));
}
export function parameterStatus(name: string, value: string): Buffer {
  return frame('S', Buffer.concat([cstr(name), cstr(value)]));
}
export function backendKeyData(pid: number, key: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeInt32BE(pid, 0);
  b.writeInt32BE(key, 4);
  return frame('K', b);
}


/** Encodes a bigint value in text or binary format. */
export function encodeInt8(value: bigint, format: number): Buffer {
  if (format === 1) {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(value);
    return b;
  }
  return Buffer.from(value.toString());
}
