/** The pieces every protocol message is built from, in both directions. */

/** Type byte, int32 length (counting itself), body. */
export function frame(type: string, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** A NUL-terminated UTF-8 string. */
export function cstr(s: string, encoding: BufferEncoding = 'utf8'): Buffer {
  return Buffer.from(s + '\0', encoding);
}

export function int16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeInt16BE(n);
  return b;
}

/** A count on the wire (parameters, formats, columns): unsigned, up to 65,535. */
export function uint16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n);
  return b;
}

export function int32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(n);
  return b;
}
