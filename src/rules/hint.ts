import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import { parseDuration } from '../config/duration.js';
import { MAX_STATEMENT_TIMEOUT_MS } from '../config/schema.js';
import type { JobOptions } from '../jobs/plan.js';

export type Hint = { mode: 'background'; options: JobOptions } | { mode: 'foreground' };

/**
 * Grammar of one hint comment (case-insensitive, whitespace free between tokens):
 *
 *   hint    = "/*+" ( "background" [ "(" option { "," option } ")" ] | "foreground" ) "*\/"
 *   option  = name "=" value
 *   name    = "timeout" | "key" | "priority" | "not_before" | "max_attempts"
 *   value   = word | "'" { any character but "'" | "''" } "'"
 *   word    = 1*( letter | digit | "_" | "-" | "." | ":" | "+" )
 *
 * Anything else in a comment that starts with "/*+" is a malformed hint and an error, not
 * silently ignored: a user who wrote a hint expects it to act.
 */
const HINT_RE = /^\/\*\+\s*(background|foreground)\s*(?:\((.*)\))?\s*\*\/$/is;
const OPTION_RE = /^\s*([a-z_]+)\s*=\s*('(?:[^']|'')*'|[A-Za-z0-9_.:+-]+)\s*(?:,|$)/i;

export function isHintComment(comment: string): boolean {
  return comment.startsWith('/*+');
}

const SLASH = 0x2f;
const STAR = 0x2a;
const PLUS = 0x2b;
const SHORT_STATEMENT_BYTES = 512;

/**
 * Whether the bytes [start, end) of a message may hold a hint comment: false when "/*+" does not
 * occur in them. Read on the raw bytes in every client encoding PostgreSQL accepts: all of them
 * are ASCII-compatible, and in the multibyte ones no byte of a multibyte character is below
 * 0x40, so '/', '*' and '+' (0x2f, 0x2a, 0x2b) in the bytes are those characters.
 */
export function mayHoldHint(bytes: Buffer, start: number, end: number): boolean {
  if (end - start > SHORT_STATEMENT_BYTES) {
    const at = bytes.indexOf('/*+', start, 'latin1');
    return at >= 0 && at + 3 <= end;
  }
  // Most statements are short: a loop costs less than the native indexOf call's fixed cost
  // (perf of the relay's hot path); a long text gets the native search's speed.
  for (let i = start; i + 2 < end; i++) {
    if (bytes[i] === SLASH && bytes[i + 1] === STAR && bytes[i + 2] === PLUS) return true;
  }
  return false;
}

export function parseHint(comment: string): Hint {
  const m = HINT_RE.exec(comment);
  if (!m) throw badHint(`malformed hint comment ${truncate(comment)}`);
  const mode = m[1].toLowerCase();
  if (mode === 'foreground') {
    if (m[2] !== undefined && m[2].trim() !== '') throw badHint('the foreground hint takes no options');
    return { mode: 'foreground' };
  }
  return { mode: 'background', options: parseOptions(m[2] ?? '') };
}

function parseOptions(text: string): JobOptions {
  const options: JobOptions = {};
  let rest = text.trim();
  const seen = new Set<string>();
  while (rest.length > 0) {
    const m = OPTION_RE.exec(rest);
    if (!m) throw badHint(`cannot read hint options at "${truncate(rest)}"`);
    const name = m[1].toLowerCase();
    const raw = m[2].startsWith("'") ? m[2].slice(1, -1).replace(/''/g, "'") : m[2];
    if (seen.has(name)) throw badHint(`hint option "${name}" given twice`);
    seen.add(name);
    switch (name) {
      case 'timeout': {
        const ms = parseDuration(raw);
        if (ms === null || ms <= 0) throw badHint(`invalid timeout "${raw}": use a duration such as 30s, 10min, 2h`);
        // Checked here, not at launch: statement_timeout is an int4 of milliseconds.
        if (ms > MAX_STATEMENT_TIMEOUT_MS) throw badHint(`timeout "${raw}" is out of range: a job timeout is at most ${MAX_STATEMENT_TIMEOUT_MS} ms (about 24.8 days)`);
        options.timeoutMs = ms;
        break;
      }
      case 'key':
        if (raw.length === 0 || raw.length > 200) throw badHint('hint option key must have 1 to 200 characters');
        options.key = raw;
        break;
      case 'priority': {
        const n = Number(raw);
        if (!Number.isInteger(n) || n < -1000 || n > 1000) throw badHint(`invalid priority "${raw}": an integer from -1000 to 1000`);
        options.priority = n;
        break;
      }
      case 'not_before': {
        const t = Date.parse(raw);
        if (Number.isNaN(t)) throw badHint(`invalid not_before "${raw}": use an ISO 8601 timestamp with time zone`);
        // toISOString writes years outside 0000-9999 as "+010000", which the server does not read.
        const year = new Date(t).getUTCFullYear();
        if (year < 1 || year > 9999) throw badHint(`not_before "${raw}" is out of range: years 1 to 9999`);
        options.notBefore = new Date(t).toISOString();
        break;
      }
      case 'max_attempts': {
        const n = Number(raw);
        if (!Number.isInteger(n) || n < 1 || n > 100) throw badHint(`invalid max_attempts "${raw}": an integer from 1 to 100`);
        options.maxAttempts = n;
        break;
      }
      default:
        throw badHint(`unknown hint option "${name}"`, 'Known options: timeout, key, priority, not_before, max_attempts.');
    }
    rest = rest.slice(m[0].length).trim();
  }
  return options;
}

function badHint(message: string, hint?: string): PgError {
  return new PgError(SqlState.InvalidParameterValue, message, undefined, hint ?? 'Hint grammar: /*+ background(timeout=10min, key=name, priority=5) */');
}

function truncate(s: string): string {
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
