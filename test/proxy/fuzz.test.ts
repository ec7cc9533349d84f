/**
 * Protocol fuzzing: over 10,000 random and mutated frontend messages, before and after
 * authentication, over many connections, while a well-behaved client runs queries the whole
 * time. The proxy runs in this process, so a crash would fail the run; it must also log no
 * internal error, leave no session or backend behind, and still accept clients at the end.
 *
 * Replay a run with PGBG_FUZZ_SEED=<seed printed at the start>.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import { Writable } from 'node:stream';
import pg from 'pg';
import { validateConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log/logger.js';
import { startProxy, type RunningProxy } from '../../src/proxy.js';
import { eventually, getCluster } from '../harness/index.js';
import { prng } from '../support/prng.js';

const SEED = Number(process.env.PGBG_FUZZ_SEED ?? Math.floor(Math.random() * 0x7fffffff));
const TARGET_MESSAGES = Number(process.env.PGBG_FUZZ_MESSAGES ?? 12_000);
const CONCURRENCY = 6;
console.log(`[fuzz] seed ${SEED} (replay with PGBG_FUZZ_SEED=${SEED}), target ${TARGET_MESSAGES} messages`);

const cluster = getCluster();
let proxy: RunningProxy;
let port: number;
let db: string;
const logLines: { level: number; msg: string; reason?: string; err?: unknown }[] = [];


class Gen {
  constructor(readonly rnd: () => number) {}
  int(n: number): number {
    return Math.floor(this.rnd() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.rnd() < p;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

const cstr = (s: string) => Buffer.from(s + '\0', 'utf8');
function i16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
}
function i32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0);
  return b;
}
function msg(type: string | number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([typeof type === 'string' ? type.charCodeAt(0) : type]), i32(body.length + 4), body]);
}

const SQL = [
  'SELECT 1',
  "SELECT 'fuzz'::text AS t, 2 AS n",
  'SELECT $1::int + 1',
  'SELECT g FROM generate_series(1, 3) g',
  'BEGIN',
  'COMMIT',
  'ROLLBACK',
  'SELECT 1/0',
  'SHOW server_version',
  "SET application_name = 'fuzzed'",
  '/*+ background */ SELECT 1',
  '/*+ backgrnd */ SELECT 1',
  '/*+ foreground */ SELECT 2',
  'SELECT 1; SELECT 2',
  '',
  ';',
  "SELECT $$dollar$$ || '/*+ background */'",
];

/** A valid frontend message; `counts` = make a count field disagree with the items. */
function baseMessage(g: Gen, wrongCounts: boolean): Buffer {
  const badCount = () => g.pick([-1, 0, 1, 2, 7, 1000, 32767, -32768]);
  switch (g.int(12)) {
    case 0:
    case 1:
      return msg('Q', cstr(g.pick(SQL)));
    case 2: {
      const types = g.pick([[], [23], [25, 23], [0]]);
      return msg('P', Buffer.concat([cstr(g.pick(['', 's1', 'fuzz_stmt'])), cstr(g.pick(SQL)), i16(wrongCounts ? badCount() : types.length), ...types.map((t) => i32(t))]));
    }
    case 3: {
      const values = g.pick([[], ['42'], [null], ['1', 'two'], [Buffer.from([0, 0, 0, 5])]]);
      const formats = g.pick([[], [0], [1], [0, 1]]);
      const results = g.pick([[], [0], [1]]);
      const which = wrongCounts ? g.int(3) : -1;
      return msg(
        'B',
        Buffer.concat([
          cstr(g.pick(['', 'p1'])),
          cstr(g.pick(['', 's1', 'fuzz_stmt', 'missing'])),
          i16(which === 0 ? badCount() : formats.length),
          ...formats.map((f) => i16(f)),
          i16(which === 1 ? badCount() : values.length),
          ...values.map((v) => (v === null ? i32(-1) : Buffer.concat([i32(Buffer.byteLength(v)), Buffer.from(v)]))),
          i16(which === 2 ? badCount() : results.length),
          ...results.map((f) => i16(f)),
        ]),
      );
    }
    case 4:
      return msg('D', Buffer.concat([Buffer.from(g.pick(['S', 'P'])), cstr(g.pick(['', 's1', 'p1']))]));
    case 5:
      return msg('E', Buffer.concat([cstr(g.pick(['', 'p1'])), i32(g.pick([0, 1, 2, -1]))]));
    case 6:
    case 7:
      return msg('S', Buffer.alloc(0));
    case 8:
      return msg('H', Buffer.alloc(0));
    case 9:
      return msg('C', Buffer.concat([Buffer.from(g.pick(['S', 'P'])), cstr(g.pick(['', 's1', 'p1']))]));
    case 10:
      return g.pick([msg('d', Buffer.from('1\tx\n')), msg('c', Buffer.alloc(0)), msg('f', cstr('fuzz'))]);
    default:
      // FunctionCall to int4pl with two text arguments (argument counts may lie)
      return msg('F', Buffer.concat([i32(177), i16(0), i16(wrongCounts ? badCount() : 2), i32(1), Buffer.from('4'), i32(1), Buffer.from('2'), i16(0)]));
  }
}

const TYPES = [...'BCdcfDEHFPpQSX'].map((c) => c.charCodeAt(0));

/** One mutated (or, one time in five, still valid) frontend message. */
function mutated(g: Gen): Buffer {
  const kind = g.int(10);
  let m = baseMessage(g, kind === 6);
  switch (kind) {
    case 0:
    case 1:
      return m; // valid
    case 2: {
      // flipped bytes anywhere, header included
      m = Buffer.from(m);
      for (let i = 1 + g.int(3); i > 0; i--) m[g.int(m.length)] ^= 1 << g.int(8);
      return m;
    }
    case 3:
      // truncated, length left as it was (it now swallows what follows)
      return m.subarray(0, g.int(m.length));
    case 4: {
      // truncated body, length fixed to match
      const body = m.subarray(5, 5 + g.int(Math.max(1, m.length - 5)));
      return msg(m[0], body);
    }
    case 5: {
      // wrong length field
      m = Buffer.from(m);
      const len = m.readInt32BE(1);
      m.writeInt32BE(g.pick([len + 1 + g.int(8), len - 1 - g.int(8), g.int(64), -1 - g.int(100), 0x7fffffff, 0x40000000, 4 + g.int(1 << 20)]) | 0, 1);
      return m;
    }
    case 6:
      return m; // wrong counts (built into the base message)
    case 7: {
      // random type byte, mostly one the proxy does not know
      m = Buffer.from(m);
      m[0] = g.chance(0.3) ? g.pick(TYPES) : g.int(256);
      return m;
    }
    case 8:
      // trailing garbage inside a consistent length
      return msg(m[0], Buffer.concat([m.subarray(5), g.bytes(1 + g.int(16))]));
    default:
      // random message: known type, consistent length, random body
      return msg(g.pick(TYPES), g.bytes(g.int(40)));
  }
}

function startupPacket(params: Record<string, string>, protocol = 3 << 16): Buffer {
  const body = Buffer.concat([...Object.entries(params).map(([k, v]) => Buffer.from(`${k}\0${v}\0`)), Buffer.from([0])]);
  return Buffer.concat([i32(body.length + 8), i32(protocol), body]);
}

/** A mutated startup-phase packet. */
function mutatedStartup(g: Gen): Buffer {
  const user = g.pick(['trustuser', 'alice', 'nobody', '']);
  const valid = startupPacket({ user, database: g.pick([db, 'app', 'nope']), application_name: 'fuzz-startup' });
  switch (g.int(8)) {
    case 0: {
      const m = Buffer.from(valid);
      for (let i = 1 + g.int(3); i > 0; i--) m[g.int(m.length)] ^= 1 << g.int(8);
      return m;
    }
    case 1:
      return valid.subarray(0, g.int(valid.length));
    case 2: {
      const m = Buffer.from(valid);
      m.writeInt32BE(g.pick([0, 4, 7, 9, 10_001, 0x7fffffff, -8, m.length + 1 + g.int(50)]) | 0, 0);
      return m;
    }
    case 3:
      return startupPacket({ user: 'trustuser', database: db }, g.pick([2 << 16, (3 << 16) | 1, 1234 << 16, 0, 80877102]));
    case 4:
      return Buffer.concat([i32(8), i32(80877103), g.chance(0.5) ? g.bytes(g.int(20)) : Buffer.alloc(0)]);
    case 5:
      return Buffer.concat([i32(16), i32(80877102), g.bytes(8)]);
    case 6:
      return g.bytes(1 + g.int(64));
    default:
      return Buffer.concat([i32(8 + 12), i32(3 << 16), g.bytes(12)]);
  }
}

interface Stats {
  messages: number;
  connections: number;
  preAuth: number;
  closedByProxy: number;
  protocolErrors: number;
  serverErrors: number;
  answered: number;
}

/** Reads backend messages as they come; resolves when the socket closes or stays quiet. */
function drain(s: net.Socket, quietMs: number, maxMs: number): Promise<{ closed: boolean; codes: string[]; types: Set<string> }> {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const codes: string[] = [];
    const types = new Set<string>();
    let quiet: NodeJS.Timeout;
    const finish = (closed: boolean) => {
      clearTimeout(quiet);
      clearTimeout(max);
      s.removeAllListeners('data');
      resolve({ closed, codes, types });
    };
    const max = setTimeout(() => finish(false), maxMs);
    const arm = () => {
      clearTimeout(quiet);
      quiet = setTimeout(() => finish(false), quietMs);
    };
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 5) {
        const len = buf.readInt32BE(1);
        if (len < 4 || buf.length < 1 + len) break;
        const type = String.fromCharCode(buf[0]);
        types.add(type);
        if (type === 'E') {
          const body = buf.subarray(5, 1 + len);
          const c = body.indexOf('C', 0, 'latin1');
          if (c >= 0) codes.push(body.toString('latin1', c + 1, body.indexOf(0, c)));
        }
        buf = buf.subarray(1 + len);
      }
      arm();
    });
    s.once('close', () => finish(true));
    arm();
  });
}

function connect(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    s.once('connect', () => resolve(s));
    s.once('close', () => reject(new Error('closed before connecting')));
  });
}

/** Authenticates as trustuser; null if the proxy or server refused (never expected). */
async function authenticated(): Promise<net.Socket> {
  const s = await connect();
  s.write(startupPacket({ user: 'trustuser', database: db, application_name: 'fuzz-client' }));
  await new Promise<void>((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        const type = String.fromCharCode(buf[0]);
        buf = buf.subarray(1 + buf.readInt32BE(1));
        if (type === 'E') return reject(new Error('authentication refused'));
        if (type === 'Z') {
          s.off('data', onData);
          return resolve();
        }
      }
    };
    s.on('data', onData);
    s.once('close', () => reject(new Error('closed during authentication')));
  });
  return s;
}

async function fuzzConnection(g: Gen, stats: Stats): Promise<void> {
  stats.connections++;
  const mode = g.int(10);
  let s: net.Socket;
  let sent = 0;
  if (mode === 0) {
    // before authentication: a mutated startup packet, maybe followed by more garbage
    stats.preAuth++;
    s = await connect();
    const parts = [mutatedStartup(g)];
    if (g.chance(0.3)) parts.push(mutated(g));
    s.write(Buffer.concat(parts));
    sent = parts.length;
  } else if (mode === 1) {
    // a valid startup packet with mutated messages pipelined behind it, before AuthenticationOk
    stats.preAuth++;
    s = await connect();
    const parts = [startupPacket({ user: g.pick(['trustuser', 'alice']), database: db, application_name: 'fuzz-client' })];
    const n = 1 + g.int(20);
    for (let i = 0; i < n; i++) parts.push(mutated(g));
    s.write(Buffer.concat(parts));
    sent = n + 1;
  } else {
    s = await authenticated();
    const n = 20 + g.int(60);
    // Some connections get a few mutations among valid traffic (they go deep into the
    // session's state), others mostly garbage.
    const rate = g.pick([0.01, 0.03, 0.1, 0.3, 0.8]);
    const batch: Buffer[] = [];
    for (let i = 0; i < n; i++) batch.push(g.chance(rate) ? mutated(g) : baseMessage(g, false));
    // in one to four writes, cut anywhere
    const all = Buffer.concat(batch);
    const cuts = [0, ...Array.from({ length: g.int(4) }, () => g.int(all.length)).sort((a, b) => a - b), all.length];
    for (let i = 1; i < cuts.length && !s.destroyed; i++) {
      s.write(all.subarray(cuts[i - 1], cuts[i]));
      if (g.chance(0.3)) await new Promise((r) => setTimeout(r, g.int(5)));
    }
    sent = n;
  }
  stats.messages += sent;
  const r = await drain(s, 120, 1500);
  if (r.closed) stats.closedByProxy++;
  if (r.codes.includes('08P01')) stats.protocolErrors++;
  if (r.codes.some((c) => c !== '08P01')) stats.serverErrors++;
  if (r.types.has('Z') || r.types.has('T')) stats.answered++;
  s.destroy();
}

beforeAll(async () => {
  db = await cluster.createDatabase();
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n')) if (line) logLines.push(JSON.parse(line));
      cb();
    },
  });
  const config = validateConfig({ listen: '127.0.0.1:0', upstream: { host: cluster.host, port: cluster.port }, log: { level: 'warn', pretty: false } });
  proxy = await startProxy(config, { log: createLogger(config.log, sink) });
  port = proxy.address.port;
}, 120_000);

afterAll(async () => {
  await proxy?.close(0);
});

describe('fuzzing the frontend protocol', () => {
  it(`survives ${TARGET_MESSAGES} mutated messages while a good client keeps working`, async () => {
    const good = new pg.Client({ ...cluster.clientConfig({ user: 'trustuser', database: db }), port });
    const goodErrors: unknown[] = [];
    good.on('error', (e) => goodErrors.push(e));
    await good.connect();
    let goodRuns = 0;
    let stop = false;
    const goodLoop = (async () => {
      while (!stop) {
        const i = goodRuns++;
        try {
          const a = await good.query('SELECT $1::int + 1 AS v, $2::text AS t', [i, `run-${i}`]);
          if (a.rows[0].v !== i + 1 || a.rows[0].t !== `run-${i}`) goodErrors.push(new Error(`wrong answer ${JSON.stringify(a.rows)} for ${i}`));
          const b = await good.query(`SELECT count(*)::int AS n FROM generate_series(1, ${(i % 50) + 1})`);
          if (b.rows[0].n !== (i % 50) + 1) goodErrors.push(new Error(`wrong count ${JSON.stringify(b.rows)} for ${i}`));
          if (i % 10 === 0) {
            await good.query('BEGIN');
            await good.query('SELECT 1/0').catch((e) => {
              if (e.code !== '22012') throw e;
            });
            await good.query('ROLLBACK');
          }
        } catch (err) {
          goodErrors.push(err);
          if (goodErrors.length > 5) return;
        }
      }
    })();

    const stats: Stats = { messages: 0, connections: 0, preAuth: 0, closedByProxy: 0, protocolErrors: 0, serverErrors: 0, answered: 0 };
    const started = Date.now();
    const workers = Array.from({ length: CONCURRENCY }, async (_, w) => {
      const g = new Gen(prng(SEED + w * 7919));
      while (stats.messages < TARGET_MESSAGES && Date.now() - started < 70_000) await fuzzConnection(g, stats);
    });
    await Promise.all(workers);
    stop = true;
    await goodLoop;
    const elapsed = Date.now() - started;
    const reasons: Record<string, number> = {};
    for (const l of logLines) if (l.msg === 'protocol violation' || l.msg === 'startup refused') reasons[`${l.msg}: ${l.reason}`] = (reasons[`${l.msg}: ${l.reason}`] ?? 0) + 1;
    console.log(`[fuzz] seed ${SEED}: ${stats.messages} messages over ${stats.connections} connections (${stats.preAuth} before authentication) in ${elapsed} ms`);
    console.log(`[fuzz] closed by the proxy ${stats.closedByProxy}, 08P01 ${stats.protocolErrors}, other errors ${stats.serverErrors}, answered ${stats.answered}; good client ran ${goodRuns} rounds`);
    console.log(`[fuzz] proxy warnings: ${JSON.stringify(reasons)}`);

    expect(goodErrors).toEqual([]);
    expect(goodRuns).toBeGreaterThan(50);
    expect(stats.messages).toBeGreaterThanOrEqual(10_000);
    // the mix reached every path: refusals, server errors, and answers
    expect(stats.protocolErrors).toBeGreaterThan(50);
    expect(stats.serverErrors).toBeGreaterThan(20);
    expect(stats.answered).toBeGreaterThan(20);
    // no internal error anywhere in the proxy
    expect(logLines.filter((l) => l.level >= 50)).toEqual([]);

    // nothing left behind but the good client, on the proxy or on the server
    await eventually(async () => proxy.listener.sessions.size === 1, 10_000);
    await eventually(async () => {
      const r = await cluster.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1', [db]);
      return r.rows[0].n === 1;
    }, 10_000);
    // and new clients are served
    const fresh = new pg.Client({ ...cluster.clientConfig({ user: 'alice', database: db }), port });
    await fresh.connect();
    expect((await fresh.query('SELECT current_user AS u')).rows).toEqual([{ u: 'alice' }]);
    await fresh.end();
    expect((await good.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
    await good.end();
  }, 120_000);
});
