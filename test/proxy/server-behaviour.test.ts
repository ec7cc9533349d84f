/**
 * The server's own identity and endings, unchanged by the proxy: the BackendKeyData pid is
 * pg_backend_pid(), pg_terminate_backend of it ends that session with the server's single
 * FATAL, and a startup packet gets exactly the answer (or the silence) the server gives it:
 * every case is sent, byte for byte, to the server and to the proxy, and the answers compared.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import { eventually, getCluster } from '../harness/index.js';
import { startTestProxy, type TestProxy } from '../support/proxy.js';
import { authenticatedSocket, frame, int32, sendAndReadUntilReady, startupPacket } from '../support/wire.js';
import { bind, execute, parse, sync } from '../../src/protocol/frontend-writer.js';

const cluster = getCluster();
let via: TestProxy;

beforeAll(async () => {
  via = await startTestProxy(cluster);
});
afterAll(async () => {
  await via?.close();
});

interface Msg {
  type: string;
  body: Buffer;
}

function messagesOf(buf: Buffer): { msgs: Msg[]; trailing: number } {
  const msgs: Msg[] = [];
  let pos = 0;
  while (buf.length - pos >= 5) {
    const len = buf.readInt32BE(pos + 1);
    if (len < 4 || buf.length - pos < 1 + len) break;
    msgs.push({ type: String.fromCharCode(buf[pos]), body: buf.subarray(pos + 5, pos + 1 + len) });
    pos += 1 + len;
  }
  return { msgs, trailing: buf.length - pos };
}

function fields(body: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < body.length && body[pos] !== 0) {
    const end = body.indexOf(0, pos + 1);
    out[String.fromCharCode(body[pos])] = body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return out;
}

/** Sends `bytes` on a fresh connection; collects everything until the peer closes (or the time is up). */
function exchange(port: number, bytes: Buffer, timeoutMs = 4000): Promise<{ received: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ received: Buffer.concat(chunks), closed: false });
    }, timeoutMs);
    s.on('error', () => undefined);
    s.on('data', (d) => chunks.push(d));
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ received: Buffer.concat(chunks), closed: true });
    });
    s.on('connect', () => s.write(bytes));
  });
}

/** What a client can observe: the messages' types, the errors' severity/code/text, the close. */
function observable(r: { received: Buffer; closed: boolean }) {
  const { msgs, trailing } = messagesOf(r.received);
  return {
    closed: r.closed,
    // A protocol 2.0 error is 'E' and a string: the raw bytes say it all.
    raw: msgs.length === 0 ? r.received.toString('latin1') : '',
    messages: msgs.map((m) => {
      if (m.type !== 'E') return m.type;
      if (m.body.length === 0) return 'E (empty)';
      const f = fields(m.body);
      return `E ${f.S}/${f.V} ${f.C} ${f.M}`;
    }),
    trailing,
  };
}

describe('the server’s BackendKeyData', () => {
  it('pg_terminate_backend of the pid the client got ends that session with the server’s single FATAL 57P01', async () => {
    const s = net.connect(via.port, '127.0.0.1');
    s.on('error', () => undefined);
    const chunks: Buffer[] = [];
    let closed = false;
    s.on('data', (d) => chunks.push(d));
    const whenClosed = new Promise<void>((r) =>
      s.on('close', () => {
        closed = true;
        r();
      }),
    );
    await new Promise((r) => s.once('connect', r));
    s.write(startupPacket(3 << 16, { user: 'trustuser', database: 'app', application_name: 'terminate-me' }));
    await eventually(async () => messagesOf(Buffer.concat(chunks)).msgs.some((m) => m.type === 'Z'), 10_000, 10);
    const key = messagesOf(Buffer.concat(chunks)).msgs.find((m) => m.type === 'K')!;
    const pid = key.body.readInt32BE(0);
    const bystander = await via.connect({ user: 'trustuser' });
    try {
      // The pid the client got is the server's: the server knows it as this session.
      const seen = await cluster.query('SELECT application_name FROM pg_stat_activity WHERE pid = $1', [pid]);
      expect(seen.rows).toEqual([{ application_name: 'terminate-me' }]);
      // A statement in flight (the proxy owes the client its answer) when the session is ended.
      chunks.length = 0;
      s.write(frame('Q', Buffer.from('SELECT pg_sleep(30)\0')));
      await eventually(async () => (await cluster.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", [pid])).rowCount === 1);
      const terminated = await bystander.query('SELECT pg_terminate_backend($1) AS ok', [pid]);
      expect(terminated.rows).toEqual([{ ok: true }]);
      await Promise.race([whenClosed, new Promise((r) => setTimeout(r, 5000))]);
      expect(closed).toBe(true);
      const { msgs, trailing } = messagesOf(Buffer.concat(chunks));
      expect(trailing).toBe(0);
      // the row description sent before pg_sleep ran, then the server's FATAL, nothing else
      expect(msgs.map((m) => m.type)).toEqual(['T', 'E']);
      expect(fields(msgs[1].body)).toMatchObject({ S: 'FATAL', C: '57P01', M: 'terminating connection due to administrator command' });
      // the other session is untouched
      expect((await bystander.query('SELECT pg_backend_pid() AS pid')).rows[0].pid).not.toBe(pid);
    } finally {
      s.destroy();
      await bystander.end();
    }
  });

  it('notifications carry the pid the client got as the sender', async () => {
    const listener = await via.connect({ user: 'alice' });
    const sender = await via.connect({ user: 'alice' });
    try {
      const got: { processId: number; payload?: string }[] = [];
      listener.on('notification', (n) => got.push({ processId: n.processId, payload: n.payload }));
      await listener.query('LISTEN pgbg_pid_test');
      await listener.query("NOTIFY pgbg_pid_test, 'own'");
      await sender.query("NOTIFY pgbg_pid_test, 'other'");
      await eventually(async () => got.length === 2, 5000, 20);
      const self = (listener as unknown as { processID: number }).processID;
      const other = (sender as unknown as { processID: number }).processID;
      expect(got).toEqual([
        { processId: self, payload: 'own' },
        { processId: other, payload: 'other' },
      ]);
    } finally {
      await listener.end();
      await sender.end();
    }
  });

  it('an idle session ended by the server: node-postgres sees what it sees without the proxy', async () => {
    async function endedBy(target: { connect: typeof cluster.connect }) {
      const client = await target.connect({ user: 'bob' });
      const pid = (client as unknown as { processID: number }).processID;
      const errors: string[] = [];
      client.on('error', (e) => errors.push(`${(e as { code?: string }).code} ${e.message}`));
      const ended = new Promise<void>((r) => client.on('end', () => r()));
      await cluster.query('SELECT pg_terminate_backend($1)', [pid]);
      await ended;
      return errors;
    }
    const direct = await endedBy(cluster);
    expect(direct[0]).toMatch(/^57P01 /);
    expect(await endedBy(via)).toEqual(direct);
  });
});

describe('startup packets: the proxy answers as the server does', () => {
  const cases: [string, Buffer][] = [
    ['a Terminate before the startup packet', frame('X', Buffer.alloc(0))],
    ['a length of 4', Buffer.concat([int32(4), int32(3 << 16)])],
    ['a length of 7', Buffer.concat([int32(7), int32(3 << 16)])],
    ['a length beyond 10004', Buffer.concat([int32(1_000_000), int32(3 << 16), Buffer.alloc(100)])],
    ['an HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')],
    ['protocol 2.0', startupPacket(2 << 16, { user: 'trustuser', database: 'app' })],
    ['protocol 1234.5678', startupPacket((1234 << 16) | 5678, { user: 'trustuser', database: 'app' })],
    ['a parameter list without its terminator', Buffer.concat([int32(8 + 9), int32(3 << 16), Buffer.from('user\0abc\0')])],
    [
      'a length shorter than its parameters',
      (() => {
        const p = startupPacket(3 << 16, { user: 'trustuser', database: 'app' });
        p.writeInt32BE(16, 0);
        return p;
      })(),
    ],
    ['no user name', startupPacket(3 << 16, { database: 'app' })],
    ['an invalid replication value', startupPacket(3 << 16, { user: 'trustuser', database: 'app', replication: 'maybe' })],
    ['a CancelRequest for no session', Buffer.concat([int32(16), int32(80877102), int32(12345), int32(678)])],
    ['a CancelRequest of 12 bytes', Buffer.concat([int32(12), int32(80877102), int32(12345)])],
  ];

  it.each(cases)('%s', async (_what, bytes) => {
    const [direct, proxied] = await Promise.all([exchange(cluster.port, bytes), exchange(via.port, bytes)]);
    const expected = observable(direct);
    expect(expected.closed).toBe(true);
    expect(observable(proxied)).toEqual(expected);
  });

  it('counts (and logs) the connections it closes silently', async () => {
    const read = async () => {
      return via.proxy.metricValue('pgbg_protocol_errors_total', { reason: 'startup_length' });
    };
    const before = await read();
    const r = await exchange(via.port, frame('X', Buffer.alloc(0)));
    expect(r).toEqual({ received: Buffer.alloc(0), closed: true });
    expect(await read()).toBe(before + 1);
  });
});

describe('protocol edges', () => {
  it('Parse and Bind with 40,000 parameters (the count is unsigned) run through the proxy', async () => {
    const n = 40_000;
    const placeholders = Array.from({ length: n }, (_, i) => `$${i + 1}`).join(',');
    const sql = `SELECT (SELECT sum(x)::bigint FROM unnest(ARRAY[${placeholders}]::int[]) x) AS total, ${n} AS n`;
    const values = Array.from({ length: n }, (_, i) => String(i + 1));
    const socket = await authenticatedSocket(via.port, 'trustuser');
    try {
      const msgs = await sendAndReadUntilReady(
        socket,
        Buffer.concat([parse('', sql, new Array(n).fill(23)), bind('', '', values), execute(), sync()]),
      );
      const errors = msgs.filter((m) => m.type === 'E').map((m) => fields(m.body));
      expect(errors).toEqual([]);
      expect(msgs.map((m) => m.type)).toEqual(['1', '2', 'D', 'C', 'Z']);
      const row = msgs.find((m) => m.type === 'D')!.body;
      // DataRow: int16 columns, then int32 length + text per column
      const first = row.readInt32BE(2);
      expect(row.toString('utf8', 6, 6 + first)).toBe(String((n * (n + 1)) / 2));
      // the session goes on
      const again = await sendAndReadUntilReady(socket, frame('Q', Buffer.from('SELECT 1\0')));
      expect(again.map((m) => m.type)).toEqual(['T', 'D', 'C', 'Z']);
    } finally {
      socket.destroy();
    }
  });
});
