import { describe, expect, it } from 'vitest';
import type net from 'node:net';
import { authenticationSasl, readMechanisms, ScramChannelBinding } from '../../src/tls/channel-binding.js';

const cert = (s: string) => Buffer.from(s);
function sockets(opts: { clientTls: boolean; upstreamTls: boolean; clientCert?: string; serverCert?: string }) {
  const client = { encrypted: opts.clientTls || undefined, getCertificate: () => ({ raw: cert(opts.clientCert ?? 'proxy') }) } as unknown as net.Socket;
  const upstream = { encrypted: opts.upstreamTls || undefined, getPeerCertificate: () => ({ raw: cert(opts.serverCert ?? 'server') }) } as unknown as net.Socket;
  return new ScramChannelBinding(client, upstream);
}

/** SASLInitialResponse: mechanism, then the client-first-message (gs2 header first). */
function saslInitial(mechanism: string, clientFirst: string): Buffer {
  const data = Buffer.from(clientFirst);
  const body = Buffer.concat([Buffer.from(`${mechanism}\0`), Buffer.alloc(4), data]);
  body.writeInt32BE(data.length, mechanism.length + 1);
  const out = Buffer.alloc(5 + body.length);
  out[0] = 0x70;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

const offered = authenticationSasl(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);

describe('SCRAM channel binding through the proxy', () => {
  it('AuthenticationSASL is written and read back', () => {
    expect(readMechanisms(offered)).toEqual(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
    expect(offered.readInt32BE(1)).toBe(offered.length - 1);
  });

  it('strips the -PLUS mechanisms unless the client sees the server\'s own certificate', () => {
    expect(readMechanisms(sockets({ clientTls: true, upstreamTls: true }).fromServer(offered))).toEqual(['SCRAM-SHA-256']);
    expect(readMechanisms(sockets({ clientTls: false, upstreamTls: true }).fromServer(offered))).toEqual(['SCRAM-SHA-256']);
    expect(sockets({ clientTls: true, upstreamTls: true, clientCert: 'same', serverCert: 'same' }).fromServer(offered)).toBe(offered);
  });

  it('leaves every other message as it is', () => {
    const ok = Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0]);
    const b = sockets({ clientTls: true, upstreamTls: true });
    expect(b.fromServer(ok)).toBe(ok);
    expect(b.fromClient(0x70, saslInitial('SCRAM-SHA-256', 'y,,n=,r=abc'))).toBeNull(); // no AuthenticationSASL seen yet
  });

  it('refuses the "y" flag (client binds, thinks the server cannot) only where a TLS server would refuse it', () => {
    const both = sockets({ clientTls: true, upstreamTls: true });
    both.fromServer(offered);
    const err = both.fromClient(0x70, saslInitial('SCRAM-SHA-256', 'y,,n=,r=abc'));
    expect(err?.code).toBe('08P01');
    expect(err?.severity).toBe('FATAL');
    expect(err?.hint).toMatch(/channel_binding=disable/);

    const n = sockets({ clientTls: true, upstreamTls: true });
    n.fromServer(offered);
    expect(n.fromClient(0x70, saslInitial('SCRAM-SHA-256', 'n,,n=,r=abc'))).toBeNull();

    const plainUpstream = sockets({ clientTls: true, upstreamTls: false });
    plainUpstream.fromServer(authenticationSasl(['SCRAM-SHA-256']));
    expect(plainUpstream.fromClient(0x70, saslInitial('SCRAM-SHA-256', 'y,,n=,r=abc'))).toBeNull();

    const same = sockets({ clientTls: true, upstreamTls: true, clientCert: 'c', serverCert: 'c' });
    same.fromServer(offered);
    expect(same.fromClient(0x70, saslInitial('SCRAM-SHA-256', 'y,,n=,r=abc'))).toBeNull();
  });
});
