/**
 * With standard_conforming_strings = off, a backslash inside an ordinary '...' literal (and an
 * N'...' one) escapes the next character, so 'it\'s' is one string. The scanner the proxy uses
 * (libpg_query) always lexes as if the setting were on, where that text is the string 'it\'
 * followed by an unterminated one: the proxy would miss the hint and a statement's end.
 *
 * This returns a copy of the text for lexing only, of exactly the same length in UTF-16 units
 * and in UTF-8 bytes (token offsets stay valid for the original), in which every quote escaped
 * by a backslash inside such a literal is replaced by "_": the default-mode scanner then sees
 * each literal as one string token with the same extent. Comments, quoted identifiers, dollar
 * quotes, E'' (the scanner handles those escapes itself), B'', X'' and U&'' are skipped
 * untouched, the way the server's lexer skips them.
 */
export function asStandardStrings(sql: string): string {
  if (!sql.includes('\\')) return sql;
  const out = sql.split('');
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql[i];
    if (c === '-' && sql[i + 1] === '-') {
      while (i < n && sql[i] !== '\n' && sql[i] !== '\r') i++;
      continue;
    }
    if (c === '/' && sql[i + 1] === '*') {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') {
          depth++;
          i += 2;
        } else if (sql[i] === '*' && sql[i + 1] === '/') {
          depth--;
          i += 2;
        } else i++;
      }
      continue;
    }
    if (c === '"') {
      i++;
      while (i < n) {
        if (sql[i] === '"') {
          if (sql[i + 1] === '"') i += 2;
          else break;
        } else i++;
      }
      i++;
      continue;
    }
    if (c === '$') {
      if (i > 0 && isIdentChar(sql[i - 1])) {
        i++; // part of an identifier such as a$b
        continue;
      }
      const tag = /^\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/.exec(sql.slice(i, i + 128));
      if (!tag) {
        i++; // a parameter such as $1
        continue;
      }
      const close = sql.indexOf(tag[0], i + tag[0].length);
      i = close < 0 ? n : close + tag[0].length;
      continue;
    }
    if (c === '\'') {
      const kind = literalKind(sql, i);
      i++;
      while (i < n) {
        const d = sql[i];
        if (d === '\'') {
          if (sql[i + 1] === '\'') {
            i += 2;
            continue;
          }
          break;
        }
        if (d === '\\' && kind !== 'standard') {
          if (kind === 'nonstandard' && sql[i + 1] === '\'') out[i + 1] = '_';
          i += 2;
          continue;
        }
        i++;
      }
      i++;
      continue;
    }
    i++;
  }
  return out.join('');
}

/** How the server's lexer reads backslashes in the literal whose opening quote is at i. */
function literalKind(sql: string, i: number): 'nonstandard' | 'escape' | 'standard' {
  const prev = i > 0 ? sql[i - 1] : '';
  const before = i > 1 ? sql[i - 2] : '';
  const prefix = (ch: string) => prev.toLowerCase() === ch && !isIdentChar(before);
  if (prefix('e')) return 'escape';
  if (prefix('b') || prefix('x')) return 'standard';
  if (prev === '&' && before.toLowerCase() === 'u' && !(i > 2 && isIdentChar(sql[i - 3]))) return 'standard';
  return 'nonstandard'; // plain and N'' literals
}

function isIdentChar(ch: string): boolean {
  return ch !== '' && /[A-Za-z0-9_$\u0080-\uffff]/.test(ch);
}
