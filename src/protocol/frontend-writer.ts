/** Frontend messages the proxy writes on a client's upstream session for its own statements. */

import { cstr, frame as message, int16, int32, uint16 } from './message-encoding.js';

export function query(sql: string): Buffer {
  return message('Q', cstr(sql));
}

/** encoding: how the session's client_encoding wants the SQL text's characters as bytes. */
export function parse(name: string, sql: string, paramTypes: number[] = [], encoding: BufferEncoding = 'utf8'): Buffer {
  const types = Buffer.allocUnsafe(4 * paramTypes.length);
  paramTypes.forEach((t, i) => types.writeUInt32BE(t, 4 * i));
  return message('P', Buffer.concat([cstr(name), cstr(sql, encoding), uint16(paramTypes.length), types]));
}

/** Bind with values passed as raw bytes in the given formats (0 text, 1 binary); results as text. */
export function bind(portal: string, statement: string, values: (Buffer | string | null)[], formats: number[] = [], encoding: BufferEncoding = 'utf8'): Buffer {
  const parts: Buffer[] = [cstr(portal), cstr(statement), uint16(formats.length)];
  for (const f of formats) parts.push(int16(f));
  parts.push(uint16(values.length));
  for (const v of values) {
    if (v === null) {
      parts.push(int32(-1));
      continue;
    }
    const b = typeof v === 'string' ? Buffer.from(v, encoding) : v;
    parts.push(int32(b.length), b);
  }
  parts.push(int16(0));
  return message('B', Buffer.concat(parts));
}

export function describe(kind: 'S' | 'P', name: string): Buffer {
  return message('D', Buffer.concat([Buffer.from(kind), cstr(name)]));
}

export function execute(portal = '', maxRows = 0): Buffer {
  return message('E', Buffer.concat([cstr(portal), int32(maxRows)]));
}

export function close(kind: 'S' | 'P', name: string): Buffer {
  return message('C', Buffer.concat([Buffer.from(kind), cstr(name)]));
}

export const sync = (): Buffer => message('S', Buffer.alloc(0));
