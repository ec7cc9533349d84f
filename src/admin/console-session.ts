import type net from 'node:net';
import type { Logger } from 'pino';
import {
  bindComplete,
  closeComplete,
  emptyQueryResponse,
  errorResponse,
  noData,
  parameterDescription,
  parseComplete,
  readyForQuery,
} from '../protocol/backend-messages.js';
import { FrontendFramer } from '../protocol/frontend-framer.js';
import { readBind, readExecute, readParse, readQuery, readTarget } from '../protocol/frontend-messages.js';
import { PgError, ProtocolViolation } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import type { AdminIdentity } from './admin-auth.js';
import { parseCommand, splitCommands, type CommandContext, type ConsoleSessionInfo, type ParsedCommand } from './commands.js';
import { describeColumns, encodeResult, type ResultSet } from './result-set.js';

/** Frontend messages held unanswered before the client is no longer read. */
const MAX_QUEUED = 256;

const Q = 0x51, P = 0x50, B = 0x42, D = 0x44, E = 0x45, S = 0x53, H = 0x48, C = 0x43, X = 0x58, F = 0x46;

/** A prepared statement of the console: a command, or null for an empty string. */
type Prepared = ParsedCommand | null;
interface Portal {
  statement: Prepared;
  formats: number[];
}

export interface ConsoleSessionDeps {
  /** Context for commands, minus what this session supplies (identity, id). */
  context: Omit<CommandContext, 'identity' | 'sessionId'>;
  maxMessageBytes: number;
  log: Logger;
}

/**
 * One admin console connection after login: reads frontend messages and answers each command
 * with a real result set. Messages are handled strictly one after another (a command may wait
 * on the registry), which keeps answers in the order the protocol requires.
 *
 * The simple protocol is the main path (psql, and node-postgres for queries without
 * parameters). The extended protocol is supported just enough for drivers that prepare every
 * statement: Parse/Bind/Describe/Execute/Close/Sync without parameters; after an error the
 * rest of the batch is skipped up to Sync, as PostgreSQL does.
 */
export class ConsoleSession implements ConsoleSessionInfo {
  readonly startedAt = Date.now();
  private readonly framer: FrontendFramer;
  private readonly queue: { type: number; msg: Buffer }[] = [];
  private draining = false;
  private closed = false;
  private skipUntilSync = false;
  private readonly statements = new Map<string, Prepared>();
  private readonly portals = new Map<string, Portal>();
  private readonly closeListeners: (() => void)[] = [];
  private readonly context: CommandContext;

  constructor(
    private readonly socket: net.Socket,
    readonly id: string,
    readonly identity: AdminIdentity,
    readonly applicationName: string,
    private readonly deps: ConsoleSessionDeps,
  ) {
    this.framer = new FrontendFramer(deps.maxMessageBytes);
    this.context = { ...deps.context, identity, sessionId: id };
  }

  get user(): string {
    return this.identity.user;
  }
  /** Running a command or holding unanswered messages. */
  get busy(): boolean {
    return this.draining || this.queue.length > 0;
  }

  onClose(listener: () => void): void {
    this.closeListeners.push(listener);
  }

  /** Takes over the socket; `initial` holds client bytes that arrived during login. */
  start(initial: Buffer): void {
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('close', () => this.finish());
    this.socket.on('error', (err) => this.deps.log.debug({ session: this.id, err: err.message }, 'admin console socket error'));
    if (initial.length) this.onData(initial);
    this.socket.resume();
  }

  /** Ends the session with a FATAL error (shutdown). */
  terminate(err: PgError): void {
    if (this.closed) return;
    this.socket.end(errorResponse({ severity: 'FATAL', code: err.code, message: err.message, detail: err.detail, hint: err.hint }));
    this.finish();
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    try {
      this.framer.push(chunk, (type, msg) => this.queue.push({ type, msg }));
      // A client pipelining faster than commands complete stops being read until they catch up.
      if (this.queue.length > MAX_QUEUED) this.socket.pause();
    } catch (err) {
      if (err instanceof ProtocolViolation) return this.terminate(new PgError(SqlState.ProtocolViolation, err.message, undefined, undefined, 'FATAL'));
      throw err;
    }
    void this.drain();
  }

  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (!this.closed && this.queue.length > 0) {
        const { type, msg } = this.queue.shift()!;
        try {
          await this.handle(type, msg);
        } catch (err) {
          if (err instanceof ProtocolViolation) {
            return this.terminate(new PgError(SqlState.ProtocolViolation, err.message, undefined, undefined, 'FATAL'));
          }
          this.deps.log.error({ session: this.id, err }, 'admin console: internal error');
          return this.terminate(new PgError(SqlState.InternalError, 'pgbg-proxy internal error', undefined, undefined, 'FATAL'));
        }
      }
    } finally {
      this.draining = false;
      if (!this.closed) this.socket.resume();
    }
  }

  private async handle(type: number, msg: Buffer): Promise<void> {
    if (type === X) {
      this.socket.end();
      return this.finish();
    }
    if (type === Q) return this.simpleQuery(readQuery(msg));
    if (type === S) {
      this.skipUntilSync = false;
      return this.send(readyForQuery('I'));
    }
    if (type === H) return; // every answer is written at once: nothing to flush
    if (this.skipUntilSync) return;
    try {
      switch (type) {
        case P:
          return this.onParse(msg);
        case B:
          return this.onBind(msg);
        case D:
          return this.onDescribe(msg);
        case E:
          return await this.onExecute(msg);
        case C: {
          const target = readTarget(msg);
          if (target.kind === 'S') this.statements.delete(target.name);
          else this.portals.delete(target.name);
          return this.send(closeComplete());
        }
        case F:
          throw new PgError(SqlState.FeatureNotSupported, 'the pgbg-proxy admin console does not support function calls');
        default:
          // CopyData/CopyDone/CopyFail: no command of the console starts a COPY
          return;
      }
    } catch (err) {
      if (err instanceof ProtocolViolation) throw err;
      this.sendError(err);
      this.skipUntilSync = true;
    }
  }

  // ---- simple protocol ------------------------------------------------------------------

  private async simpleQuery(sql: string): Promise<void> {
    const texts = splitCommands(sql);
    if (texts.length === 0) {
      this.send(emptyQueryResponse());
    } else {
      // Like PostgreSQL, the first error ends the rest of the string.
      try {
        for (const text of texts) {
          const parsed = parseCommand(text);
          this.send(encodeResult(await this.run(parsed), { describe: true }));
        }
      } catch (err) {
        this.sendError(err);
      }
    }
    this.send(readyForQuery('I'));
  }

  // ---- extended protocol ------------------------------------------------------------------

  private onParse(msg: Buffer): void {
    const { name, sql } = readParse(msg);
    const texts = splitCommands(sql);
    if (texts.length > 1) throw new PgError(SqlState.SyntaxError, 'cannot insert multiple commands into a prepared statement');
    this.statements.set(name, texts.length === 0 ? null : parseCommand(texts[0]!));
    this.send(parseComplete());
  }

  private onBind(msg: Buffer): void {
    const bind = readBind(msg);
    if (!this.statements.has(bind.statement)) throw new PgError('26000', `prepared statement "${bind.statement}" does not exist`);
    if (bind.params.length > 0) {
      throw new PgError(SqlState.ProtocolViolation, `bind message supplies ${bind.params.length} parameters, but prepared statement "${bind.statement}" requires 0`);
    }
    this.portals.set(bind.portal, { statement: this.statements.get(bind.statement)!, formats: bind.resultFormats });
    this.send(bindComplete());
  }

  private onDescribe(msg: Buffer): void {
    const target = readTarget(msg);
    if (target.kind === 'S') {
      if (!this.statements.has(target.name)) throw new PgError('26000', `prepared statement "${target.name}" does not exist`);
      const cols = this.statements.get(target.name)?.command.columns;
      this.send(parameterDescription([]), cols ? describeColumns(cols) : noData());
      return;
    }
    const portal = this.portals.get(target.name);
    if (!portal) throw new PgError('34000', `portal "${target.name}" does not exist`);
    const cols = portal.statement?.command.columns;
    this.send(cols ? describeColumns(cols, portal.formats) : noData());
  }

  private async onExecute(msg: Buffer): Promise<void> {
    // maxRows is not honoured: console results are small and are sent whole.
    const { portal: name } = readExecute(msg);
    const portal = this.portals.get(name);
    if (!portal) throw new PgError('34000', `portal "${name}" does not exist`);
    if (!portal.statement) return this.send(emptyQueryResponse());
    this.send(encodeResult(await this.run(portal.statement), { describe: false, formats: portal.formats }));
  }

  // ---- running and writing ----------------------------------------------------------------

  private async run(parsed: ParsedCommand): Promise<ResultSet> {
    this.deps.log.debug({ session: this.id, user: this.user, command: parsed.text }, 'admin console command');
    return parsed.command.run(this.context, parsed.args);
  }

  private sendError(err: unknown): void {
    if (err instanceof PgError) {
      this.send(errorResponse({ code: err.code, message: err.message, detail: err.detail, hint: err.hint }));
      return;
    }
    this.deps.log.error({ session: this.id, err }, 'admin console: command failed');
    this.send(errorResponse({ code: SqlState.InternalError, message: `pgbg-proxy admin console: ${(err as Error)?.message ?? String(err)}` }));
  }

  private send(...messages: Buffer[]): void {
    if (this.closed || this.socket.destroyed) return;
    this.socket.write(messages.length === 1 ? messages[0]! : Buffer.concat(messages));
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.deps.log.info({ session: this.id, user: this.user, duration_ms: Date.now() - this.startedAt }, 'admin console session ended');
    for (const l of this.closeListeners.splice(0)) l();
  }
}
