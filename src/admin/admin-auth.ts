import type net from 'node:net';
import { randomInt } from 'node:crypto';
import type { Logger } from 'pino';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { backendKeyData, errorResponse, parameterStatus, readyForQuery } from '../protocol/backend-messages.js';
import { PgError } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import { buildStartupPacket } from '../protocol/startup.js';
import * as fe from '../protocol/frontend-writer.js';
import { connectUpstream, type UpstreamAddress } from '../upstream/connect.js';
import { ScramChannelBinding } from '../tls/channel-binding.js';

/**
 * Lets a client into the admin console only after the PostgreSQL server itself has
 * authenticated it, and only if that role is an admin.
 *
 * The proxy keeps no passwords: it opens an upstream connection with the client's own startup
 * parameters (database replaced by admin.authDatabase) and relays the authentication exchange
 * byte for byte, whatever the method (SCRAM, md5, trust...). The proxy never sees a password in
 * clear for SCRAM. Once the server says ReadyForQuery, the same authenticated session answers
 * whether its role is a superuser, a member of pgbg_admin, or listed in admin.users.
 */

/** Roles whose members get in besides superusers (created by the registry migration). */
export const ADMIN_ROLE = 'pgbg_admin';

/**
 * Asked on the authenticated session. session_user, not current_user: a startup option
 * `-c role=...` changes current_user, but the role the server authenticated is session_user.
 * The CASE keeps pg_has_role from failing where the registry (and so the role) was never
 * installed: CASE evaluates its branches in order.
 *
 * The session is the client's, with the client's startup options (search_path and all), so
 * every name is schema-qualified: functions and relations with pg_catalog., operators as
 * OPERATOR(pg_catalog.=), literals cast to pg_catalog types. Otherwise a role that may CREATE
 * in a schema ahead of pg_catalog on its search_path (`-c search_path=public,pg_catalog`) could
 * define `public.=(name, name)` to answer true and be let in as a superuser. The literals hold
 * no backslash, so standard_conforming_strings cannot change them; session_user is SQL syntax,
 * not a function looked up on the search_path.
 */
export const ADMIN_CHECK_SQL = `SELECT session_user AS role,
       r.rolsuper AS superuser,
       CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles a
                          WHERE a.rolname OPERATOR(pg_catalog.=) '${ADMIN_ROLE}'::pg_catalog.name)
            THEN pg_catalog.pg_has_role(session_user, '${ADMIN_ROLE}'::pg_catalog.name, 'MEMBER'::pg_catalog.text)
            ELSE false END AS admin_member
  FROM pg_catalog.pg_roles r
 WHERE r.rolname OPERATOR(pg_catalog.=) session_user`;

export interface AdminAuthOptions {
  upstream: UpstreamAddress;
  connectTimeoutMs: number;
  /** Deadline for the whole exchange, connection included. */
  timeoutMs: number;
  /** Database the authentication session connects to (admin.authDatabase). */
  authDatabase: string;
  /** Roles let in besides superusers and members of pgbg_admin (admin.users). */
  allowedUsers: readonly string[];
  log: Logger;
  sessionId: string;
}

export interface AdminIdentity {
  /** The role the server authenticated. */
  user: string;
  /** Why this role may use the console. */
  admittedAs: 'superuser' | 'pgbg_admin' | 'admin.users';
  /** ParameterStatus values the server reported (client_encoding forced to UTF8). */
  serverParameters: ReadonlyMap<string, string>;
}

export interface AdminAdmission {
  identity: AdminIdentity;
  /** Client bytes that arrived after its authentication messages: the console's first input. */
  clientBytes: Buffer;
}

/** Authentication messages are small; a larger one, or a flood before login, is refused. */
const MAX_AUTH_BYTES = 1 << 20;

const R = 0x52, E = 0x45, S = 0x53, K = 0x4b, Z = 0x5a, N = 0x4e, V = 0x76, D = 0x44;
const PASSWORD = 0x70, TERMINATE = 0x58;

/**
 * Runs the exchange. Resolves with the admission, or null after it has told the client why
 * (the server's own error for a failed login, 28000 for a non-admin) and closed the connection.
 * The client socket is paused when this resolves.
 */
export async function admitAdmin(client: net.Socket, params: ReadonlyMap<string, string>, clientBytes: Buffer, opts: AdminAuthOptions): Promise<AdminAdmission | null> {
  let clientGone = false;
  const onEarlyClose = () => (clientGone = true);
  client.once('close', onEarlyClose);
  let upstream: net.Socket;
  try {
    upstream = await connectUpstream(opts.upstream, opts.connectTimeoutMs);
  } catch (err) {
    client.off('close', onEarlyClose);
    opts.log.warn({ session: opts.sessionId, err: (err as Error).message }, 'admin console: upstream connection failed');
    refuse(
      client,
      new PgError(
        SqlState.ConnectionFailure,
        `pgbg-proxy could not connect to the server at ${opts.upstream.host}:${opts.upstream.port} to authenticate`,
        (err as Error).message,
        undefined,
        'FATAL',
      ),
    );
    return null;
  }
  client.off('close', onEarlyClose);
  if (clientGone || client.destroyed) {
    upstream.destroy();
    return null;
  }
  const startup = new Map(params);
  startup.set('database', opts.authDatabase);
  return new Promise((resolve) => new AuthRelay(client, upstream, opts, resolve).start(buildStartupPacket(startup), clientBytes));
}

/** Cuts a byte stream into whole protocol messages (type byte + int32 length). */
class MessageCutter {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    if (this.buf.length > MAX_AUTH_BYTES) throw new PgError(SqlState.ProtocolViolation, 'too much data before authentication completed', undefined, undefined, 'FATAL');
  }

  /** The next whole message, left in place until take(). */
  peek(): Buffer | null {
    if (this.buf.length < 5) return null;
    const length = this.buf.readInt32BE(1);
    if (length < 4 || length + 1 > MAX_AUTH_BYTES) throw new PgError(SqlState.ProtocolViolation, `invalid message length ${length}`, undefined, undefined, 'FATAL');
    return this.buf.length >= length + 1 ? this.buf.subarray(0, length + 1) : null;
  }

  take(message: Buffer): void {
    this.buf = this.buf.subarray(message.length);
  }

  get rest(): Buffer {
    return Buffer.from(this.buf);
  }
}

class AuthRelay {
  private phase: 'auth' | 'check' | 'done' = 'auth';
  private readonly fromClient = new MessageCutter();
  private readonly fromServer = new MessageCutter();
  private readonly parser = new Parser();
  private readonly serverParameters = new Map<string, string>();
  private readonly scram: ScramChannelBinding;
  private checkRow: (string | null)[] | null = null;
  private checkError: { code: string; message: string } | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly client: net.Socket,
    private readonly upstream: net.Socket,
    private readonly opts: AdminAuthOptions,
    private readonly resolve: (admission: AdminAdmission | null) => void,
  ) {
    this.scram = new ScramChannelBinding(client, upstream);
  }

  private get done(): boolean {
    return this.phase === 'done';
  }

  private readonly onClientData = (chunk: Buffer) => this.guard(() => this.clientData(chunk));
  private readonly onServerData = (chunk: Buffer) => this.guard(() => this.serverData(chunk));
  private readonly onClientClose = () => this.finish(null);
  private readonly onServerClose = () =>
    this.fail(new PgError(SqlState.ConnectionFailure, 'the server closed the connection during authentication', undefined, undefined, 'FATAL'));
  private readonly ignore = () => {};

  start(startupPacket: Buffer, clientBytes: Buffer): void {
    this.client.on('data', this.onClientData);
    this.client.on('close', this.onClientClose);
    this.client.on('error', this.ignore);
    this.upstream.on('data', this.onServerData);
    this.upstream.on('close', this.onServerClose);
    this.upstream.on('error', this.ignore);
    this.timer = setTimeout(
      () => this.fail(new PgError(SqlState.ConnectionFailure, `admin console authentication did not complete within ${this.opts.timeoutMs} ms`, undefined, undefined, 'FATAL')),
      this.opts.timeoutMs,
    );
    this.upstream.write(startupPacket);
    if (clientBytes.length) this.onClientData(clientBytes);
    this.client.resume();
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (err instanceof PgError) return this.fail(err);
      this.opts.log.error({ session: this.opts.sessionId, err }, 'admin console: internal error during authentication');
      this.fail(new PgError(SqlState.InternalError, 'pgbg-proxy internal error', undefined, undefined, 'FATAL'));
    }
  }

  // ---- client → server: only authentication answers go through -------------------------

  private clientData(chunk: Buffer): void {
    if (this.phase === 'done') return;
    this.fromClient.push(chunk);
    this.forwardAuthAnswers();
  }

  private forwardAuthAnswers(): void {
    // Anything but PasswordMessage/SASL answers (a pipelined query) waits for the console.
    for (let m = this.fromClient.peek(); m && this.phase === 'auth'; m = this.fromClient.peek()) {
      if (m[0] === TERMINATE) return this.finish(null);
      if (m[0] !== PASSWORD) return;
      this.fromClient.take(m);
      const refusal = this.scram.fromClient(m[0], m);
      if (refusal) return this.fail(refusal);
      this.upstream.write(Buffer.from(m));
    }
  }

  // ---- server → client ------------------------------------------------------------------

  private serverData(chunk: Buffer): void {
    if (this.phase === 'done') return;
    this.fromServer.push(chunk);
    for (let m = this.fromServer.peek(); m && !this.done; m = this.fromServer.peek()) {
      this.fromServer.take(m);
      if (this.phase === 'auth') this.authMessage(m);
      else this.checkMessage(m);
    }
  }

  private authMessage(m: Buffer): void {
    switch (m[0]) {
      case R: // authentication requests and AuthenticationOk: the client answers the server
      case N:
      case V: // NegotiateProtocolVersion
        this.client.write(Buffer.from(this.scram.fromServer(m)));
        return;
      case S:
        this.noteParameter(m);
        return;
      case K: // the server's cancel key stays here; this session is about to end anyway
        return;
      case E: {
        // The server's own verdict (28P01, 28000, 3D000 ...) reaches the client unchanged.
        const err = this.decode(m) as unknown as { code?: string; message?: string };
        this.opts.log.info({ session: this.opts.sessionId, code: err.code, err: err.message }, 'admin console: server refused the login');
        this.client.end(Buffer.from(m));
        return this.finish(null);
      }
      case Z:
        this.phase = 'check';
        this.upstream.write(fe.query(ADMIN_CHECK_SQL));
        return;
      default:
        return;
    }
  }

  private checkMessage(m: Buffer): void {
    switch (m[0]) {
      case D:
        this.checkRow = (this.decode(m) as unknown as { fields: (string | null)[] }).fields;
        return;
      case E:
        this.checkError ??= this.decode(m) as unknown as { code: string; message: string };
        return;
      case S:
        this.noteParameter(m);
        return;
      case Z:
        return this.decide();
      default:
        return;
    }
  }

  private decide(): void {
    const log = this.opts.log;
    if (this.checkError || !this.checkRow) {
      log.warn({ session: this.opts.sessionId, err: this.checkError?.message }, 'admin console: could not check admin privileges');
      return this.fail(
        new PgError(
          SqlState.InvalidAuthorization,
          'permission denied for the pgbg-proxy admin console',
          `could not check the role's privileges: ${this.checkError?.message ?? 'no answer'}`,
          undefined,
          'FATAL',
        ),
      );
    }
    const [role, superuser, member] = this.checkRow;
    const user = role ?? '';
    const admittedAs: AdminIdentity['admittedAs'] | null =
      superuser === 't' ? 'superuser' : member === 't' ? 'pgbg_admin' : this.opts.allowedUsers.includes(user) ? 'admin.users' : null;
    if (!admittedAs) {
      log.warn({ session: this.opts.sessionId, user }, 'admin console: login refused, not an admin');
      return this.fail(
        new PgError(
          SqlState.InvalidAuthorization,
          'permission denied for the pgbg-proxy admin console',
          `role "${user}" is neither a superuser nor a member of ${ADMIN_ROLE}`,
          `GRANT ${ADMIN_ROLE} TO ${quoteIdent(user)}; or list the role in admin.users`,
          'FATAL',
        ),
      );
    }
    // The console writes UTF-8 whatever the client asked for, so it says so.
    this.serverParameters.set('client_encoding', 'UTF8');
    const hello: Buffer[] = [];
    for (const [name, value] of this.serverParameters) hello.push(parameterStatus(name, value));
    // A made-up key: the console has nothing a CancelRequest could stop.
    hello.push(backendKeyData(randomInt(1, 0x7fffffff), randomInt(-0x80000000, 0x7fffffff)), readyForQuery('I'));
    this.client.write(Buffer.concat(hello));
    this.upstream.end(Buffer.from([TERMINATE, 0, 0, 0, 4]));
    log.info({ session: this.opts.sessionId, user, admitted_as: admittedAs }, 'admin console session started');
    this.finish({ identity: { user, admittedAs, serverParameters: this.serverParameters }, clientBytes: this.fromClient.rest });
  }

  private noteParameter(m: Buffer): void {
    const p = this.decode(m) as unknown as { parameterName: string; parameterValue: string };
    this.serverParameters.set(p.parameterName, p.parameterValue);
  }

  private decode(m: Buffer): BackendMessage {
    let out: BackendMessage | null = null;
    this.parser.parse(Buffer.from(m), (msg: BackendMessage) => (out = msg));
    if (!out) throw new PgError(SqlState.ProtocolViolation, 'could not decode a server message', undefined, undefined, 'FATAL');
    return out;
  }

  private fail(err: PgError): void {
    if (this.phase === 'done') return;
    refuse(this.client, err);
    this.finish(null);
  }

  private finish(admission: AdminAdmission | null): void {
    if (this.phase === 'done') return;
    this.phase = 'done';
    if (this.timer) clearTimeout(this.timer);
    this.client.pause();
    this.client.off('data', this.onClientData);
    this.client.off('close', this.onClientClose);
    this.upstream.off('data', this.onServerData);
    this.upstream.off('close', this.onServerClose);
    if (admission) {
      // the console session installs its own handlers; the upstream keeps `ignore` while it ends
      this.client.off('error', this.ignore);
    } else {
      this.upstream.destroy();
      if (!this.client.writableEnded) this.client.end();
    }
    this.resolve(admission);
  }
}

function refuse(client: net.Socket, err: PgError): void {
  if (client.writableEnded || client.destroyed) return;
  client.end(errorResponse({ severity: 'FATAL', code: err.code, message: err.message, detail: err.detail, hint: err.hint }));
}

function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : '"' + name.replace(/"/g, '""') + '"';
}
