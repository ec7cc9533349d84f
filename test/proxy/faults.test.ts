/**
 * Faults: an unreachable or vanishing server, clients that vanish, clients that break the
 * protocol (after and during startup), and clients or servers that stop reading. After each,
 * the proxy must still serve a client that behaves.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import pg from 'pg';
import { eventually, freePort, getCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { frame, int32, startupPacket } from '../support/wire.js';
import { prng } from '../support/prng.js';

const cluster = getCluster();
let via: TestProxy;
/** A small-limits proxy: maxMessageBytes 64 KiB, startupTimeout 1 s. */
let strict: TestProxy;
/** A client of `via` that stays connected through every test and must keep working. */
let steady: pg.Client;
let steadyRuns = 0;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function randomBytes(seed: number, n: number): Buffer {
  const rnd = prng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

interface Msg {
  type: string;
  body: Buffer;
}

/** Splits backend bytes into messages (a trailing partial message is ignored). */
function messagesOf(buf: Buffer): Msg[] {
  const out: Msg[] = [];
  let pos = 0;
  while (buf.length - pos >= 5) {
    const len = buf.readInt32BE(pos + 1);
    if (buf.length - pos < 1 + len) break;
    out.push({ type: String.fromCharCode(buf[pos]), body: buf.subarray(pos + 5, pos + 1 + len) });
    pos += 1 + len;
  }
  return out;
}

/** ErrorResponse/NoticeResponse fields by their one-letter codes. */
function fields(body: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < body.length && body[pos] !== 0) {
    const code = String.fromCharCode(body[pos]);
    const end = body.indexOf(0, pos + 1);
    out[code] = body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return out;
}

/** A raw protocol connection that records everything the proxy sends. */
class RawClient {
  readonly socket: net.Socket;
  private data: Buffer[] = [];
  private waiters: (() => void)[] = [];
  closed = false;
  closedAt = 0;
  readonly whenClosed: Promise<void>;

  constructor(port: number) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.on('error', () => undefined);
    this.socket.on('data', (d) => {
      this.data.push(d);
      this.wake();
    });
    this.whenClosed = new Promise((resolve) =>
      this.socket.on('close', () => {
        this.closed = true;
        this.closedAt = Date.now();
        this.wake();
        resolve();
      }),
    );
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  get received(): Buffer {
    return Buffer.concat(this.data);
  }
  get messages(): Msg[] {
    return messagesOf(this.received);
  }

  /** Waits until `pred` holds on the messages so far, the connection closes, or the time is up. */
  async waitFor(pred: (msgs: Msg[]) => boolean, timeoutMs: number): Promise<Msg[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const msgs = this.messages;
      if (pred(msgs) || this.closed || Date.now() > deadline) return msgs;
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, Math.max(1, deadline - Date.now()));
      });
    }
  }

  async connected(): Promise<void> {
    if (this.socket.readyState === 'open') return;
    await new Promise((r) => this.socket.once('connect', r));
  }

  /** Connects as a trust user and waits for ReadyForQuery. */
  static async authenticated(port: number, applicationName: string, user = 'trustuser'): Promise<RawClient> {
    const c = new RawClient(port);
    await c.connected();
    c.socket.write(startupPacket(3 << 16, { user, database: 'app', application_name: applicationName }));
    const msgs = await c.waitFor((m) => m.some((x) => x.type === 'Z' || x.type === 'E'), 10_000);
    const err = msgs.find((m) => m.type === 'E');
    if (err) throw new Error(`authentication failed: ${JSON.stringify(fields(err.body))}`);
    if (!msgs.some((m) => m.type === 'Z')) throw new Error('no ReadyForQuery after startup');
    c.data = [];
    return c;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

function query(sql: string): Buffer {
  return frame('Q', Buffer.from(sql + '\0'));
}

/** The backend pid of the (single) session with this application_name, once it shows up. */
async function backendPid(applicationName: string): Promise<number> {
  return (await eventually<number | undefined>(async () => {
    const r = await cluster.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [applicationName]);
    return r.rows[0]?.pid as number | undefined;
  }, 10_000))!;
}

async function backendGone(pid: number, timeoutMs: number): Promise<number> {
  const started = Date.now();
  await eventually(async () => {
    const r = await cluster.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid]);
    return r.rowCount === 0;
  }, timeoutMs, 25);
  return Date.now() - started;
}

async function steadyWorks(): Promise<void> {
  const n = ++steadyRuns;
  const r = await steady.query('SELECT $1::int * 2 AS v, current_user AS u', [n]);
  expect(r.rows).toEqual([{ v: n * 2, u: 'trustuser' }]);
  const fresh = await via.query('SELECT 41 + 1 AS v', [], { user: 'trustuser' });
  expect(fresh.rows).toEqual([{ v: 42 }]);
}

beforeAll(async () => {
  via = await startTestProxy(cluster);
  strict = await startTestProxy(cluster, { limits: { maxMessageBytes: 65536, startupTimeout: 1000 } });
  steady = await via.connect({ user: 'trustuser' });
  steady.on('error', () => undefined);
  await cluster.query('CREATE TABLE IF NOT EXISTS faults_copy_lock (id int, payload text)');
  await cluster.query('GRANT ALL ON faults_copy_lock TO PUBLIC');
});

afterAll(async () => {
  await steady?.end().catch(() => undefined);
  await via?.close();
  await strict?.close();
});

describe('the server cannot be reached', () => {
  it('answers 08006 at once when nothing listens on the upstream port', async () => {
    const closedPort = await freePort();
    const dead = await startTestProxy(cluster, { upstream: { host: '127.0.0.1', port: closedPort, connectTimeout: 5000 } });
    try {
      const started = Date.now();
      const err = await dead.query('SELECT 1', [], { user: 'trustuser' }).catch((e) => e);
      const elapsed = Date.now() - started;
      expect(err.code).toBe('08006');
      expect(err.message).toContain(`127.0.0.1:${closedPort}`);
      expect(elapsed).toBeLessThan(2000);
      // psql shows the same error and exits non-zero
      const r = await dead.psql(['-Atc', 'SELECT 1'], { user: 'trustuser' });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/could not connect to the server/);
      await eventually(async () => (await dead.proxy.sessionCount()) === 0, 2000);
    } finally {
      await dead.close();
    }
  });

  it('ends the client with an error at once when the server closes the connection without a word', async () => {
    const mute = net.createServer((socket) => socket.destroy());
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', () => r()));
    const port = (mute.address() as net.AddressInfo).port;
    const dead = await startTestProxy(cluster, { upstream: { host: '127.0.0.1', port, connectTimeout: 1000 } });
    try {
      const started = Date.now();
      const err = await dead.query('SELECT 1', [], { user: 'trustuser' }).catch((e) => e);
      expect(err).toBeInstanceOf(Error);
      expect(Date.now() - started).toBeLessThan(2000);
      await eventually(async () => (await dead.proxy.sessionCount()) === 0, 2000);
    } finally {
      await dead.close();
      mute.close();
    }
  });
});

describe('the server ends a backend', () => {
  it('relays pg_terminate_backend to the client and keeps serving others', async () => {
    const victim = await via.connect({ user: 'alice' });
    victim.on('error', () => undefined);
    const bystander = await via.connect({ user: 'bob' });
    const running = victim.query("SELECT pg_sleep(30) /* faults-terminate */").then(
      () => null,
      (e) => e,
    );
    const pid = await eventually(async () => {
      const r = await cluster.query("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%faults-terminate%' AND pid <> pg_backend_pid()");
      return r.rows[0]?.pid as number | undefined;
    });
    const sessionsBefore = await via.proxy.sessionCount();
    const started = Date.now();
    expect((await cluster.query('SELECT pg_terminate_backend($1) AS ok', [pid])).rows[0].ok).toBe(true);
    const err = await running;
    expect(err).not.toBeNull();
    expect(err.code).toBe('57P01');
    expect(err.message).toMatch(/terminating connection due to administrator command/);
    expect(Date.now() - started).toBeLessThan(3000);
    await eventually(async () => (await via.proxy.sessionCount()) === sessionsBefore - 1, 3000);
    expect((await bystander.query('SELECT current_user AS u')).rows).toEqual([{ u: 'bob' }]);
    await bystander.end();
    await steadyWorks();
  });
});

describe('a client leaves mid-query', () => {
  it('ends the upstream backend within a couple of seconds', async () => {
    const app = 'faults-client-gone';
    const c = await RawClient.authenticated(via.port, app);
    const pid = await backendPid(app);
    c.socket.write(query('SELECT pg_sleep(5)'));
    await eventually(async () => {
      const r = await cluster.query('SELECT state, query FROM pg_stat_activity WHERE pid = $1', [pid]);
      return r.rows[0]?.state === 'active' && /pg_sleep\(5\)/.test(r.rows[0].query);
    });
    c.destroy();
    const took = await backendGone(pid, 2500);
    console.log(`[faults] backend of a vanished client gone after ${took} ms`);
    expect(took).toBeLessThan(2500);
    await steadyWorks();
  });
});

describe('malformed frontend messages after authentication', () => {
  /** Sends `bytes` on a fresh authenticated session; returns what came back and how it ended. */
  async function misbehave(bytes: Buffer, name: string, waitMs = 3000) {
    const app = `faults-${name}`;
    const c = await RawClient.authenticated(via.port, app);
    const pid = await backendPid(app);
    const started = Date.now();
    c.socket.write(bytes);
    await c.waitFor(() => false, waitMs);
    const error = c.messages.find((m) => m.type === 'E');
    return { c, pid, closed: c.closed, elapsed: (c.closed ? c.closedAt : Date.now()) - started, error: error ? fields(error.body) : null, messages: c.messages };
  }

  async function expectViolation(bytes: Buffer, name: string, message: RegExp) {
    const r = await misbehave(bytes, name);
    expect(r.error, name).not.toBeNull();
    expect(r.error!.C, name).toBe('08P01');
    expect(r.error!.S, name).toBe('FATAL');
    expect(r.error!.M, name).toMatch(message);
    expect(r.closed, name).toBe(true);
    expect(r.elapsed, name).toBeLessThan(1500);
    // the upstream session does not outlive it
    await backendGone(r.pid, 3000);
    await steadyWorks();
    return r;
  }

  it('a length shorter than the content', async () => {
    const q = query('SELECT 1');
    q.writeInt32BE(8, 1); // the message claims 4 bytes of body; "SELECT 1\0" is 9
    await expectViolation(q, 'short-length', /unterminated string|length/);
  });

  it('a length longer than the content, followed by more messages', async () => {
    const q = query('SELECT 1');
    q.writeInt32BE(4 + 9 + 5 * 6, 1); // swallows the next six Sync messages
    const syncs = Buffer.concat(Array.from({ length: 6 }, () => frame('S', Buffer.alloc(0))));
    await expectViolation(Buffer.concat([q, syncs]), 'long-length', /length does not match|length/);
  });

  it('a length longer than the content, then silence: nothing reaches the server, and nothing is left behind', async () => {
    const q = query("SELECT 'never-run-marker'");
    q.writeInt32BE(1000, 1);
    const r = await misbehave(q, 'long-idle', 1200);
    // Like PostgreSQL, the proxy waits for the rest of the message ...
    expect(r.closed).toBe(false);
    expect(r.messages).toEqual([]);
    // ... without passing the fragment on: the backend ran nothing.
    const a = await cluster.query('SELECT state, query FROM pg_stat_activity WHERE pid = $1', [r.pid]);
    expect(a.rows[0].state).toBe('idle');
    expect(a.rows[0].query).not.toMatch(/never-run-marker/);
    await steadyWorks();
    // When the client goes, so does its session.
    r.c.socket.end();
    await backendGone(r.pid, 3000);
    await eventually(async () => (await via.proxy.applicationNames()).every((name) => name !== 'faults-long-idle'), 3000);
  });

  it('a 2 GiB length', async () => {
    const before = process.memoryUsage();
    const head = Buffer.concat([Buffer.from('Q'), int32(0x7fffffff), Buffer.from('SELECT 1')]);
    await expectViolation(head, 'huge-length', /exceeds the limit/);
    const after = process.memoryUsage();
    expect(after.arrayBuffers - before.arrayBuffers).toBeLessThan(64 << 20);
  });

  it('a length below 4', async () => {
    await expectViolation(Buffer.concat([Buffer.from('Q'), int32(2), Buffer.from('xx')]), 'tiny-length', /invalid message length 2/);
  });

  it('an invalid type byte, even after a valid message in the same packet', async () => {
    await expectViolation(frame('z', Buffer.alloc(0)), 'bad-type', /invalid frontend message type 122/);
    const r = await expectViolation(Buffer.concat([query("SELECT 'before-bad-type'"), Buffer.from([0x01, 0, 0, 0, 4])]), 'bad-type-after', /invalid frontend message type 1\b/);
    // the error is the last thing the client gets
    expect(r.messages[r.messages.length - 1].type).toBe('E');
  });

  it('a malformed message pipelined behind the startup packet (read only once the session is ready)', async () => {
    const c = new RawClient(via.port);
    await c.connected();
    const bad = query('SELECT 1');
    bad.writeInt32BE(4 + 9 + 5, 1); // swallows the Sync that follows: "length does not match"
    c.socket.write(Buffer.concat([startupPacket(3 << 16, { user: 'trustuser', database: 'app', application_name: 'faults-pipelined' }), bad, frame('S', Buffer.alloc(0))]));
    const msgs = await c.waitFor((m) => m.some((x) => x.type === 'E'), 3000);
    await c.whenClosed;
    expect(msgs.map((m) => m.type)).toContain('Z');
    const err = msgs.find((m) => m.type === 'E');
    expect(err && fields(err.body)).toMatchObject({ C: '08P01', S: 'FATAL' });
    await eventually(async () => (await cluster.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'faults-pipelined'")).rowCount === 0, 3000);
    await steadyWorks();
  });

  it('random bytes (seeded)', async () => {
    const seeds = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    const outcomes = await Promise.all(
      seeds.map(async (seed) => {
        const r = await misbehave(randomBytes(seed, 4096), `random-${seed}`);
        await backendGone(r.pid, 3000);
        return { seed, code: r.error?.C, closed: r.closed, elapsed: r.elapsed };
      }),
    );
    for (const o of outcomes) {
      expect(o, `seed ${o.seed}`).toMatchObject({ code: '08P01', closed: true });
      expect(o.elapsed, `seed ${o.seed}`).toBeLessThan(1500);
    }
    await steadyWorks();
  });

  it('a message beyond limits.maxMessageBytes is refused from its header, without waiting for its body', async () => {
    const app = 'faults-oversized';
    const c = await RawClient.authenticated(strict.port, app);
    const pid = await backendPid(app);
    const started = Date.now();
    // Claims 10 MB; only the first KB is ever sent.
    c.socket.write(Buffer.concat([Buffer.from('Q'), int32(10_000_000), Buffer.alloc(1000, 0x61)]));
    const msgs = await c.waitFor((m) => m.some((x) => x.type === 'E'), 3000);
    const err = msgs.find((m) => m.type === 'E');
    expect(err).toBeDefined();
    expect(fields(err!.body)).toMatchObject({ C: '08P01', M: expect.stringMatching(/10000001 bytes exceeds the limit of 65536/) });
    expect(Date.now() - started).toBeLessThan(1000);
    await c.whenClosed;
    await backendGone(pid, 3000);
    // just under the limit still works
    const big = 'y'.repeat(60_000);
    const r = await strict.query(`SELECT length('${big}') AS n`, [], { user: 'trustuser' });
    expect(r.rows).toEqual([{ n: 60_000 }]);
    await steadyWorks();
  });
});

describe('malformed startup packets', () => {
  async function startupOutcome(bytes: Buffer, waitMs = 3000) {
    const c = new RawClient(strict.port);
    await c.connected();
    const started = Date.now();
    c.socket.write(bytes);
    await c.waitFor(() => false, waitMs);
    const err = c.messages.find((m) => m.type === 'E');
    c.destroy();
    return { closed: c.closed, elapsed: (c.closed ? c.closedAt : Date.now()) - started, error: err ? fields(err.body) : null, raw: c.received };
  }

  it.each([
    ['a length shorter than its parameters', (() => {
      const p = startupPacket(3 << 16, { user: 'trustuser', database: 'app' });
      p.writeInt32BE(16, 0);
      return p;
    })(), /invalid startup packet layout/],
    ['bytes after an SSLRequest', Buffer.concat([int32(8), int32(80877103), Buffer.from('garbage!')]), /after SSL/],
    ['no terminator', Buffer.concat([int32(8 + 9), int32(3 << 16), Buffer.from('user\0abc\0')]), /terminator/],
  ])('%s: closed with 08P01', async (_what, bytes, message) => {
    const r = await startupOutcome(bytes);
    expect(r.error).not.toBeNull();
    expect(r.error!.C).toBe('08P01');
    expect(r.error!.M).toMatch(message);
    expect(r.closed).toBe(true);
    expect(r.elapsed).toBeLessThan(1500);
  });

  // PostgreSQL closes these without a word (it only logs them); so does the proxy.
  it.each([
    ['a length below 8', Buffer.concat([int32(4), int32(3 << 16)])],
    ['a length beyond 10004', Buffer.concat([int32(1_000_000), int32(3 << 16), Buffer.alloc(100)])],
    ['an HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')],
  ])('%s: closed silently', async (_what, bytes) => {
    const r = await startupOutcome(bytes);
    expect(r.raw.length).toBe(0);
    expect(r.closed).toBe(true);
    expect(r.elapsed).toBeLessThan(1500);
  });

  it('a length longer than what is sent: closed silently at limits.startupTimeout', async () => {
    const p = startupPacket(3 << 16, { user: 'trustuser', database: 'app' });
    p.writeInt32BE(200, 0);
    const r = await startupOutcome(p, 4000);
    expect(r.raw.length).toBe(0);
    expect(r.closed).toBe(true);
    expect(r.elapsed).toBeGreaterThanOrEqual(900);
    expect(r.elapsed).toBeLessThan(2500);
  });

  it('random bytes (seeded): closed, silently or with a protocol error', async () => {
    for (const seed of [11, 12, 13, 14, 15, 16, 17, 18]) {
      const r = await startupOutcome(randomBytes(seed, 64));
      expect(r.closed, `seed ${seed}`).toBe(true);
      if (r.raw.length > 0) expect(['08P01', '0A000'], `seed ${seed}: ${JSON.stringify(r.error)}`).toContain(r.error?.C);
    }
  });

  it('leaves other clients alone', async () => {
    await steadyWorks();
    expect((await strict.query('SELECT 1 AS one', [], { user: 'trustuser' })).rows).toEqual([{ one: 1 }]);
    await eventually(async () => (await strict.proxy.sessionCount()) === 0, 2000);
  });
});

describe('back-pressure', () => {
  function memory() {
    const m = process.memoryUsage();
    return { rss: m.rss, buffers: m.arrayBuffers + m.external, heap: m.heapUsed };
  }

  it('a client that does not read a 200 MB result: proxy memory stays bounded, then every row arrives', async () => {
    const app = 'faults-slow-reader';
    const c = await RawClient.authenticated(via.port, app);
    const pid = await backendPid(app);
    // Count rows as they stream in instead of keeping 200 MB around.
    let rows = 0;
    let badRows = 0;
    let tag = '';
    let ready = false;
    let errorText = '';
    let pending: Buffer = Buffer.alloc(0);
    const expectedValue = Buffer.alloc(1000, 0x78);
    c.socket.removeAllListeners('data');
    c.socket.on('data', (chunk: Buffer) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      let pos = 0;
      while (pending.length - pos >= 5) {
        const len = pending.readInt32BE(pos + 1);
        if (pending.length - pos < 1 + len) break;
        const type = pending[pos];
        const body = pending.subarray(pos + 5, pos + 1 + len);
        if (type === 0x44) {
          rows++;
          if (body.readInt16BE(0) !== 1 || body.readInt32BE(2) !== 1000 || !body.subarray(6).equals(expectedValue)) badRows++;
        } else if (type === 0x43) tag = body.toString('utf8', 0, body.length - 1);
        else if (type === 0x45) errorText = JSON.stringify(fields(body));
        else if (type === 0x5a) ready = true;
        pos += 1 + len;
      }
      pending = pending.subarray(pos);
    });
    c.socket.pause();
    const base = memory();
    c.socket.write(query("SELECT repeat('x', 1000) FROM generate_series(1, 200000)"));
    let peak = { ...base };
    const sampler = setInterval(() => {
      const m = memory();
      peak = { rss: Math.max(peak.rss, m.rss), buffers: Math.max(peak.buffers, m.buffers), heap: Math.max(peak.heap, m.heap) };
    }, 50);
    await sleep(2000);
    // the server is blocked writing to the proxy, which does not read it while the client does not read
    const a = await cluster.query('SELECT state, wait_event FROM pg_stat_activity WHERE pid = $1', [pid]);
    await sleep(2000);
    clearInterval(sampler);
    const growth = { rss: peak.rss - base.rss, buffers: peak.buffers - base.buffers, heap: peak.heap - base.heap };
    console.log(`[faults] slow reader: peak growth rss ${(growth.rss / 1048576).toFixed(1)} MB, buffers ${(growth.buffers / 1048576).toFixed(1)} MB, heap ${(growth.heap / 1048576).toFixed(1)} MB`);
    expect(a.rows[0]).toEqual({ state: 'active', wait_event: 'ClientWrite' });
    expect(rows).toBe(0);
    expect(growth.rss).toBeLessThan(64 << 20);
    expect(growth.buffers).toBeLessThan(64 << 20);
    const started = Date.now();
    c.socket.resume();
    await eventually(async () => ready || c.closed, 60_000, 20);
    console.log(`[faults] slow reader: drained 200,000 rows in ${Date.now() - started} ms`);
    expect(errorText).toBe('');
    expect(rows).toBe(200_000);
    expect(badRows).toBe(0);
    expect(tag).toBe('SELECT 200000');
    expect(ready).toBe(true);
    c.socket.end(frame('X', Buffer.alloc(0)));
    await steadyWorks();
  }, 90_000);

  it('a client pushing a huge COPY into a server blocked on a lock: the proxy stops reading it', async () => {
    const locker = await cluster.connect();
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE faults_copy_lock IN ACCESS EXCLUSIVE MODE');
    const app = 'faults-copy-pusher';
    const c = await RawClient.authenticated(via.port, app);
    const pid = await backendPid(app);
    c.socket.write(query('COPY faults_copy_lock FROM STDIN'));
    // 64 KiB CopyData messages of valid rows, written as fast as the socket takes them.
    const line = (i: number) => `${i}\t${'p'.repeat(90)}\n`;
    let rowsPerFrame = 0;
    let text = '';
    while (text.length + line(0).length <= 65536) text += line(rowsPerFrame++);
    const chunk = frame('d', Buffer.from(text));
    let accepted = 0;
    let stop = false;
    const base = process.memoryUsage();
    let peakRss = base.rss;
    let peakBuffers = base.arrayBuffers + base.external;
    const sampler = setInterval(() => {
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakBuffers = Math.max(peakBuffers, m.arrayBuffers + m.external);
    }, 50);
    const writer = (async () => {
      while (!stop && accepted < 512 << 20) {
        accepted += chunk.length;
        if (!c.socket.write(chunk)) {
          await new Promise<void>((resolve) => {
            const done = () => {
              clearInterval(poll);
              c.socket.off('drain', done);
              resolve();
            };
            const poll = setInterval(() => stop && done(), 50);
            c.socket.once('drain', done);
          });
        }
      }
    })();
    await sleep(2500);
    const blocked = await cluster.query('SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1', [pid]);
    const acceptedWhileBlocked = accepted;
    await sleep(1500);
    const acceptedLater = accepted;
    clearInterval(sampler);
    stop = true;
    await writer;
    console.log(
      `[faults] COPY into a locked table: client could write ${(acceptedWhileBlocked / 1048576).toFixed(1)} MB, ` +
        `then ${((acceptedLater - acceptedWhileBlocked) / 1048576).toFixed(1)} MB more in 1.5 s; ` +
        `peak growth rss ${((peakRss - base.rss) / 1048576).toFixed(1)} MB, buffers ${((peakBuffers - base.arrayBuffers - base.external) / 1048576).toFixed(1)} MB`,
    );
    expect(blocked.rows[0].wait_event_type).toBe('Lock');
    // Kernel socket buffers take some; the proxy must not take the rest.
    expect(acceptedWhileBlocked).toBeLessThan(96 << 20);
    expect(acceptedLater - acceptedWhileBlocked).toBeLessThan(1 << 20);
    expect(peakRss - base.rss).toBeLessThan(64 << 20);
    expect(peakBuffers - base.arrayBuffers - base.external).toBeLessThan(64 << 20);
    // Release the lock: the server takes everything that was sent, then the client gives up.
    await locker.query('ROLLBACK');
    await locker.end();
    await new Promise<void>((resolve) => (c.socket.writableLength === 0 ? resolve() : c.socket.once('drain', () => resolve())));
    c.socket.write(frame('f', Buffer.from('faults test gives up\0')));
    const msgs = await c.waitFor((m) => m.some((x) => x.type === 'Z'), 30_000);
    expect(msgs.map((m) => m.type).filter((t) => t !== 'N')).toEqual(['G', 'E', 'Z']);
    expect(fields(msgs.find((m) => m.type === 'E')!.body)).toMatchObject({ C: '57014', M: expect.stringMatching(/faults test gives up/) });
    expect((await cluster.query('SELECT count(*)::int AS n FROM faults_copy_lock')).rows[0].n).toBe(0);
    c.socket.end(frame('X', Buffer.alloc(0)));
    await steadyWorks();
  }, 90_000);
});

describe('afterwards', () => {
  it('has no sessions left but the steady client’s', async () => {
    await eventually(async () => (await via.proxy.sessionCount()) === 1, 5000);
    const r = await cluster.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'faults-%'");
    expect(r.rows[0].n).toBe(0);
    expect(steadyRuns).toBeGreaterThan(10);
  });
});
