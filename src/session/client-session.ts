import type net from 'node:net';
import type { Logger } from 'pino';
import { BackendStream, type BackendStreamSink } from '../protocol/backend-stream.js';
import { FrontendFramer } from '../protocol/frontend-framer.js';
import { parseLayout, querySqlEnd, readBind, readExecute, readParse, readQuery, readTarget } from '../protocol/frontend-messages.js';
import { mayHoldHint } from '../rules/hint.js';
import {
  bindComplete,
  closeComplete,
  errorResponse,
  parameterDescription,
  parseComplete,
  readyForQuery,
} from '../protocol/backend-messages.js';
import { PgError, ProtocolViolation } from '../protocol/errors.js';
import { SqlState } from '../protocol/sqlstate.js';
import { connectUpstream, sendCancel, type UpstreamAddress } from '../upstream/connect.js';
import type { Exchange, SessionChannel } from '../upstream/channel.js';
import type { CancelKeys } from '../listener/cancel-keys.js';
import type { RoutingContext, StatementRouter } from '../rules/route.js';
import type { BoundParams, JobSubmitter, SettingsToken, SubmittedJob } from '../jobs/submitter.js';
import { SessionJobs } from './session-jobs.js';
import { noteLargeMessage } from './large-message-release.js';
import type { JobPlan } from '../jobs/plan.js';
import { ExchangeCollector } from './exchange-collector.js';
import { OutboundBatch } from './outbound-batch.js';
import { LocalPortals, type LocalStatement } from './local-portals.js';
import { jobCommandComplete, jobRow, jobRowDescription } from './job-answer.js';
import { raiseStatement } from './raise-statement.js';
import { parse as parseMessage, query as queryMessage } from '../protocol/frontend-writer.js';
import type { SessionObserver } from './session-observer.js';
import { ScramChannelBinding } from '../tls/channel-binding.js';
import { SkippedReadyTracker } from './skipped-ready.js';

export interface SessionSettings {
  upstream: UpstreamAddress;
  connectTimeoutMs: number;
  maxMessageBytes: number;
  inTransaction: 'reject' | 'foreground';
}

export interface SessionDeps {
  settings: () => SessionSettings;
  router: () => StatementRouter;
  jobs: JobSubmitter | null;
  /** Whether a new session of (database, login) should look for a launcher to start (see LauncherCheckThrottle). */
  launcherCheckDue: (database: string, login: string) => boolean;
  cancelKeys: CancelKeys;
  observer: SessionObserver;
  log: Logger;
}

type Phase = 'connecting' | 'auth' | 'ready' | 'closed';

const PARAMETER_STATUS = 0x53;
const Q = 0x51, P = 0x50, B = 0x42, D = 0x44, E = 0x45, S = 0x53, H = 0x48, C = 0x43, X = 0x58, F = 0x46;
/** Client bytes held while the proxy runs its own exchange; beyond this the client is paused. */
const HELD_BYTES_LIMIT = 1 << 20;

/**
 * One client connection and its own upstream session.
 *
 * Ordinary traffic is relayed as the buffers it arrived in, in both directions. Only Query and
 * Parse are read (the router decides on their SQL); Bind/Describe/Execute/Close are read only
 * while the proxy holds prepared statements of its own for this client. When a statement is to
 * become a job, the session waits until the server has answered everything the client sent
 * before, holds later client messages, runs its own statements on the upstream session (the
 * server's answers are captured, not relayed), answers the client itself, then goes on.
 */
export class ClientSession implements BackendStreamSink {
  readonly id: string;
  readonly startedAt = Date.now();
  readonly params: Map<string, string>;
  private phase: Phase = 'connecting';
  private upstream: net.Socket | null = null;
  private readonly framer: FrontendFramer;
  private readonly backend = new BackendStream(this);
  private readonly outbound = new OutboundBatch();
  private readonly local = new LocalPortals();

  /** Query/Sync/FunctionCall messages forwarded whose ReadyForQuery has not come back yet. */
  private pendingReady = 0;
  /** Extended-protocol messages forwarded since the last Sync (their answers may be unflushed). */
  private forwardedSinceSync = 0;
  /** Extended-protocol messages forwarded since the last Query, FunctionCall or Sync. */
  private extendedSinceAnswer = 0;
  /** A Query or FunctionCall after unsynced extended messages may get no ReadyForQuery (see there). */
  private readonly skips = new SkippedReadyTracker();
  /** The current batch (since the last Sync) has messages the proxy answered itself. */
  private batchHasLocal = false;
  /** After a local error in an extended batch, messages are discarded up to Sync, as the server does. */
  private skipUntilSync = false;
  /** Batches of client bytes relayed to the server so far: any of them may have changed a setting. */
  private relayed = 0;
  /** The latest new job of this session and the relay count when it was recorded (see SubmitContext.settingsFrom). */
  private settingsFrom: { token: SettingsToken; relayed: number } | null = null;
  txStatus: 'I' | 'T' | 'E' = 'I';

  private held: { type: number; msg: Buffer }[] = [];
  private heldBytes = 0;
  private localBusy = false;
  private idleWaiters: (() => void)[] = [];
  private collector: ExchangeCollector | null = null;
  private authHeld: Buffer[] = [];
  /** SCRAM channel binding across the proxy's TLS termination (src/tls/channel-binding.ts). */
  private scram: ScramChannelBinding | null = null;

  /** The client sent Terminate; the server session is ending. */
  private terminating = false;
  /** Type of the last message the server sent (relayed or captured). */
  private lastServerMessage = 0;
  private realPid = 0;
  private realKey = 0;
  private readonly cancelTarget = { cancel: () => this.cancelUpstream() };
  /** What this session owes its jobs once its client has gone (disconnect policy); null when jobs are disabled. */
  readonly jobs: SessionJobs | null;
  private superviseTimer: NodeJS.Timeout | null = null;
  private launcherRetryTimer: NodeJS.Timeout | null = null;
  private superviseDue = false;
  private clientGone = false;
  /** The client left while a submission ran: adopt or close once the local operation is done. */
  private decideAfterLocal = false;
  /** A job submission is talking to the server (see onClientClosed). */
  private submitting = false;
  /** The session's settings that change how the proxy must read its SQL, from ParameterStatus. */
  private standardConformingStrings = true;
  private textEncoding: BufferEncoding = 'utf8';
  private readonly pausedBy = new Set<'held' | 'upstream' | 'client'>();
  private closeListeners: (() => void)[] = [];
  readonly channel: SessionChannel;

  constructor(
    private readonly client: net.Socket,
    private readonly startupPacket: Buffer,
    params: Map<string, string>,
    id: string,
    private readonly deps: SessionDeps,
  ) {
    this.id = id;
    this.params = params;
    this.framer = new FrontendFramer(deps.settings().maxMessageBytes);
    this.jobs = deps.jobs ? new SessionJobs(deps.jobs) : null;
    const self = this;
    this.channel = {
      exchange: (messages, readyCount) => self.exchange(messages, readyCount),
      get txStatus() {
        return self.txStatus;
      },
      get backendPid() {
        return self.realPid;
      },
      get textEncoding() {
        return self.textEncoding;
      },
    };
  }

  get user(): string {
    return this.params.get('user') ?? '';
  }
  get database(): string {
    return this.params.get('database') || this.user;
  }
  get applicationName(): string {
    return this.params.get('application_name') ?? '';
  }
  get state(): Phase {
    return this.phase;
  }
  /** Idle: the server owes no answers and the proxy runs nothing of its own. */
  get idle(): boolean {
    return this.pendingReady === 0 && this.forwardedSinceSync === 0 && !this.localBusy && this.backend.atBoundary && !this.framer.midStream;
  }
  /** Jobs this session must still launch, retry or read the outcome of. */
  get hasPendingJobs(): boolean {
    return this.jobs?.pending ?? false;
  }
  get pendingJobCount(): number {
    return this.jobs?.ids.length ?? 0;
  }
  get adopted(): boolean {
    return this.clientGone && this.phase !== 'closed';
  }

  onClose(listener: () => void): void {
    this.closeListeners.push(listener);
  }

  async start(initialClientBytes: Buffer): Promise<void> {
    const settings = this.deps.settings();
    this.client.on('error', (err) => this.deps.log.debug({ session: this.id, err: err.message }, 'client socket error'));
    this.client.on('close', () => this.onClientClosed());
    this.client.on('data', (chunk: Buffer) => this.onClientData(chunk));
    this.client.on('drain', () => this.unpause('client'));
    // Bytes that came with the startup packet (a pipelining client) are framed like any others.
    this.client.pause();
    try {
      this.upstream = await connectUpstream(settings.upstream, settings.connectTimeoutMs);
    } catch (err) {
      this.deps.log.warn({ session: this.id, err: (err as Error).message }, 'upstream connection failed');
      this.failStartup(
        new PgError(
          SqlState.ConnectionFailure,
          `pgbg-proxy could not connect to the server at ${settings.upstream.host}:${settings.upstream.port}`,
          (err as Error).message,
          undefined,
          'FATAL',
        ),
      );
      return;
    }
    if (this.clientGone) {
      this.upstream.destroy();
      return;
    }
    this.deps.observer.upstreamConnected(1);
    this.phase = 'auth';
    const up = this.upstream;
    this.scram = new ScramChannelBinding(this.client, up);
    up.on('data', (chunk: Buffer) => this.onUpstreamData(chunk));
    up.on('drain', () => this.unpause('upstream'));
    up.on('error', (err) => this.deps.log.debug({ session: this.id, err: err.message }, 'upstream socket error'));
    up.on('close', () => this.onUpstreamClosed());
    up.write(this.startupPacket);
    this.client.resume();
    if (initialClientBytes.length) this.onClientData(initialClientBytes);
  }

  // ---- client → server -------------------------------------------------------------------

  private onClientData(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    this.deps.observer.bytes('client_to_server', chunk.length);
    try {
      this.framer.pushRanges(chunk, this.takeClientMessage, this.pieceSink);
    } catch (err) {
      this.flushOutbound();
      if (err instanceof ProtocolViolation) return this.protocolViolation(err);
      if (err instanceof PgError) return this.fatal(err);
      this.deps.log.error({ session: this.id, err }, 'internal error while reading client message');
      return this.fatal(new PgError(SqlState.InternalError, 'pgbg-proxy internal error', undefined, undefined, 'FATAL'));
    }
    this.flushOutbound();
  }

  // Made once, not per read: the relay's hot path allocates as little as it can.
  private readonly takeClientMessage = (type: number, bytes: Buffer, start: number, end: number): void =>
    this.onClientRange(type, bytes, start, end);
  private readonly writeUpstreamBound = (buf: Buffer): void => this.writeUpstream(buf);

  /**
   * The relay's hot path. A Bind, Describe, Execute or Close that goes to the server as it is,
   * and a Sync that ends a batch of only such messages, are added to the outgoing batch as ranges
   * of the read, with no Buffer made for each (the extended protocol sends five messages per
   * statement). Everything else, and every message while the session is anything but plainly
   * relaying, takes the general path with the message as a Buffer of its own.
   */
  private onClientRange(type: number, bytes: Buffer, start: number, end: number): void {
    if (
      (type === B || type === D || type === E || type === C || (type === S && !this.batchHasLocal)) &&
      this.phase === 'ready' &&
      !this.localBusy &&
      this.held.length === 0 &&
      !this.skipUntilSync &&
      this.local.empty
    ) {
      noteLargeMessage(end - start);
      if (type === S) this.syncForwarded();
      else this.extendedForwarded();
      this.outbound.addRange(bytes, start, end);
      return;
    }
    this.onClientMessage(type, start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end));
  }

  private onClientMessage(type: number, msg: Buffer): void {
    if (this.phase === 'closed') return;
    noteLargeMessage(msg.length);
    if (this.phase === 'auth') {
      const refusal = this.scram?.fromClient(type, msg);
      if (refusal) return this.fatal(refusal);
      // Authentication answers (PasswordMessage, SASL) go straight through; anything else waits
      // until the session is ready, so that no statement reaches the server unrouted.
      if (type === 0x70 && this.authHeld.length === 0) this.outbound.add(msg);
      else this.authHeld.push(Buffer.from(msg));
      return;
    }
    if (this.localBusy || this.held.length > 0) {
      this.hold(type, msg);
      return;
    }
    this.dispatch(type, msg);
  }

  /**
   * Large Bind, CopyData and FunctionCall messages are relayed in the pieces they arrive in
   * (see PieceSink) whenever the session would forward them untouched anyway: ready, nothing of
   * the proxy's own running or held, and, for Bind, no statement of the proxy's own it could
   * be aimed at.
   */
  private readonly pieceSink = {
    wants: (type: number, total: number): boolean => {
      noteLargeMessage(total);
      return (
        this.phase === 'ready' &&
        !this.localBusy &&
        this.held.length === 0 &&
        !this.skipUntilSync &&
        (type === 0x64 /* CopyData */ || type === F || (type === B && this.local.empty))
      );
    },
    piece: (type: number, bytes: Buffer, first: boolean): void => {
      if (first && type === B) return this.forwardExtended(bytes);
      if (first && type === F) this.expectReady();
      this.outbound.add(bytes);
    },
  };

  private hold(type: number, msg: Buffer): void {
    // A slice of the socket chunk stays valid: Node does not reuse chunk memory.
    this.held.push({ type, msg });
    this.heldBytes += msg.length;
    if (this.heldBytes > HELD_BYTES_LIMIT) this.pause('held');
  }

  private dispatch(type: number, msg: Buffer): void {
    if (this.skipUntilSync && type !== S) return;
    switch (type) {
      case Q:
        return this.onQuery(msg);
      case P:
        return this.onParse(msg);
      case S:
        return this.onSync(msg);
      case X:
        this.flushOutbound();
        // A session still supervising jobs outlives its client (adopted): keep the server session.
        if (this.hasPendingJobs) {
          this.client.end();
          return;
        }
        // The server answers what came before the Terminate, then closes: the client gets those
        // answers, and its connection ends when the server's does (onUpstreamClosed).
        this.terminating = true;
        this.upstream?.end(msg);
        return;
      case F:
        this.expectReady();
        this.outbound.add(msg);
        return;
      case B:
      case D:
      case E:
      case C:
        if (!this.local.empty && this.dispatchLocalExtended(type, msg)) return;
        this.forwardExtended(msg);
        return;
      case H:
        if (this.batchHasLocal && this.forwardedSinceSync === 0) return; // our answers are already written
        this.outbound.add(msg);
        return;
      default:
        // CopyData/CopyDone/CopyFail and the rest: bytes the server expects as they are.
        this.outbound.add(msg);
    }
  }

  private forwardExtended(msg: Buffer): void {
    this.extendedForwarded();
    this.outbound.add(msg);
  }

  /** Counts an extended-protocol message (not Sync) the server is sent. */
  private extendedForwarded(): void {
    this.forwardedSinceSync++;
    this.extendedSinceAnswer++;
  }

  /**
   * A Query or FunctionCall is forwarded: one more ReadyForQuery is owed, unless extended
   * messages went ahead of it with no Sync and the server is known to be skipping to that Sync.
   */
  private expectReady(): void {
    const ahead = this.extendedSinceAnswer;
    this.extendedSinceAnswer = 0;
    if (this.skips.isUnsure(this.forwardedSinceSync) && !this.skips.add(this.pendingReady, ahead)) return;
    this.pendingReady++;
  }

  /**
   * Whether the server may still owe answers to messages already sent, or be discarding messages
   * up to the client's Sync: the proxy then cannot answer a message of the batch itself, in
   * between, and makes the server produce the error in place instead.
   */
  private get serverMayOwe(): boolean {
    return this.forwardedSinceSync > 0 || this.pendingReady > 0 || this.skips.batchMaySkip;
  }

  private readonly routingContextOf = (): RoutingContext => this.routingContext();

  private routingContext(): RoutingContext {
    return {
      user: this.user,
      database: this.database,
      applicationName: this.applicationName,
      standardConformingStrings: this.standardConformingStrings,
    };
  }

  /**
   * Whether a statement whose text is [start, end) of msg goes to the server as it is, decided
   * without decoding the text: no hint opening in its bytes and no rule for this session.
   */
  private plainlyForwarded(msg: Buffer, start: number, end: number): boolean {
    return !mayHoldHint(msg, start, end) && !this.deps.router().routesUnhinted(this.routingContextOf);
  }

  private onQuery(msg: Buffer): void {
    // Most statements: no hint, no rule. Their text is never decoded (a malformed message
    // takes the full reader below, which names the fault).
    const sqlEnd = querySqlEnd(msg);
    if (sqlEnd >= 0 && this.plainlyForwarded(msg, 5, sqlEnd)) return this.forwardQuery(msg);
    const sql = readQuery(msg, this.textEncoding);
    const route = this.deps.router().route(sql, this.routingContext());
    if (route.action !== 'forward' && this.skips.isUnsure(this.forwardedSinceSync)) {
      // Extended-protocol messages went ahead without a Sync, and the server may be skipping
      // everything up to that Sync after an error, this Query included. The proxy cannot run
      // statements of its own in between: a statement that fails at once takes this one's
      // place, in order, and the server treats it as it would have treated the client's Query
      // (skipped, or an error). Whether it answers is unknown until the Sync, so the batch
      // stays open until then.
      this.deps.observer.statement('rejected');
      this.expectReady();
      this.outbound.add(queryMessage(raiseStatement(new PgError(SqlState.ProtocolViolation, PIPELINE_REFUSAL))));
      return;
    }
    if (route.action === 'forward') return this.forwardQuery(msg);
    this.forwardedSinceSync = 0;
    this.batchHasLocal = false;
    this.runLocal(async () => {
      await this.whenIdle();
      if (route.action === 'reject') {
        this.deps.observer.statement('rejected');
        if (this.txStatus !== 'I') return this.forwardRaise(route.error);
        this.writeClient(Buffer.concat([errorResponse(route.error), readyForQuery(this.txStatus)]));
        return;
      }
      if (this.txStatus !== 'I') {
        if (this.deps.settings().inTransaction === 'foreground') {
          this.deps.observer.statement('forwarded');
          this.pendingReady++;
          this.relayed++;
          this.writeUpstream(msg);
          return;
        }
        this.deps.observer.statement('rejected');
        return this.forwardRaise(inTransactionError(route.plan));
      }
      try {
        const job = await this.submit(route.plan, null);
        this.writeClient(Buffer.concat([jobRowDescription(), jobRow(job), jobCommandComplete(), readyForQuery(this.txStatus)]));
      } catch (err) {
        this.writeClient(Buffer.concat([errorResponse(toPgError(err, this.deps.log, this.id)), readyForQuery(this.txStatus)]));
      }
    });
  }

  /**
   * Sends the client's error through the server as a failing statement, so the server's
   * transaction state (an explicit block now aborted) is exactly what the client is told.
   */
  private forwardRaise(error: PgError): void {
    this.pendingReady++;
    this.relayed++;
    this.writeUpstream(queryMessage(raiseStatement(error)));
  }

  private forwardQuery(msg: Buffer): void {
    this.deps.observer.statement('forwarded');
    this.expectReady();
    this.forwardedSinceSync = 0;
    this.batchHasLocal = false;
    this.outbound.add(msg);
  }

  /** A well-formed Parse goes to the server; a statement of ours by its name is forgotten. */
  private forwardParse(msg: Buffer): void {
    this.deps.observer.statement('forwarded');
    if (!this.local.empty) this.local.forgetStatement(msg.toString(this.textEncoding, 5, msg.indexOf(0, 5)));
    this.forwardExtended(msg);
  }

  private onParse(msg: Buffer): void {
    const layout = parseLayout(msg);
    if (layout && this.plainlyForwarded(msg, layout.nameEnd + 1, layout.sqlEnd)) return this.forwardParse(msg);
    const parse = readParse(msg, this.textEncoding);
    const route = this.deps.router().route(parse.sql, this.routingContext());
    if (route.action === 'forward') return this.forwardParse(msg);
    this.local.forgetStatement(parse.name);
    if (this.serverMayOwe) {
      // Answers to earlier messages of this batch may still sit unflushed in the server, so the
      // proxy cannot answer in between; a Parse that fails at once takes the statement's place,
      // in order (its error names the reason), and the server skips the rest up to Sync.
      this.deps.observer.statement('rejected');
      return this.forwardExtended(parseMessage(parse.name, pipelineRefusal(), parse.paramTypes));
    }
    this.runLocal(async () => {
      await this.whenIdle();
      this.batchHasLocal = true;
      if (route.action === 'reject') {
        this.deps.observer.statement('rejected');
        return this.refuseInBatch(route.error);
      }
      if (this.txStatus !== 'I') {
        if (this.deps.settings().inTransaction === 'foreground') {
          this.batchHasLocal = false;
          return this.forwardExtended(msg);
        }
        this.deps.observer.statement('rejected');
        return this.refuseInBatch(inTransactionError(route.plan));
      }
      try {
        if (!this.deps.jobs) throw jobsDisabled();
        const paramTypes = await this.deps.jobs.describe(this.channel, route.plan, parse.paramTypes);
        this.local.statements.set(parse.name, { plan: route.plan, paramTypes });
        this.writeClient(parseComplete());
      } catch (err) {
        this.localError(err);
      }
    });
  }

  /**
   * Refuses a statement of an extended batch. Inside a transaction block the server raises the
   * same error first, so its transaction is aborted exactly as the client is told.
   */
  private async refuseInBatch(error: PgError): Promise<void> {
    if (this.txStatus === 'T') await this.exchange([queryMessage(raiseStatement(error))]);
    this.localError(error);
  }

  /** Handles Bind/Describe/Execute/Close aimed at the proxy's own statements; false to forward. */
  private dispatchLocalExtended(type: number, msg: Buffer): boolean {
    if (type === B) {
      const bind = readBind(msg);
      const stmt = this.local.statements.get(bind.statement);
      if (!stmt) {
        this.local.forgetPortal(bind.portal);
        return false;
      }
      if (this.serverMayOwe) {
        // Same ordering constraint as in onParse: make the server produce the error in place.
        this.forwardExtended(bindToMissingStatement(msg));
        return true;
      }
      this.batchHasLocal = true;
      const n = stmt.paramTypes.length;
      if (bind.params.length !== n) {
        this.localError(
          new PgError('08P01', `bind message supplies ${bind.params.length} parameters, but prepared statement "${bind.statement}" requires ${n}`),
        );
        return true;
      }
      const formats = bind.paramFormats.length === 1 ? new Array(n).fill(bind.paramFormats[0]) : bind.paramFormats;
      this.local.portals.set(bind.portal, {
        statement: stmt,
        params: { types: stmt.paramTypes, formats: n === 0 ? [] : formats.length ? formats : new Array(n).fill(0), values: bind.params },
        resultFormats: bind.resultFormats,
      });
      this.writeClient(bindComplete());
      return true;
    }
    const target = type === E ? { kind: 'P' as const, name: readExecute(msg).portal } : readTarget(msg);
    const isLocal = target.kind === 'S' ? this.local.statements.has(target.name) : this.local.portals.has(target.name);
    if (!isLocal) return false;
    if (this.serverMayOwe) {
      this.forwardExtended(msg);
      return true;
    }
    this.batchHasLocal = true;
    if (type === C) {
      if (target.kind === 'S') this.local.forgetStatement(target.name);
      else this.local.forgetPortal(target.name);
      this.writeClient(closeComplete());
      return true;
    }
    if (type === D) {
      if (target.kind === 'S') {
        const stmt = this.local.statements.get(target.name) as LocalStatement;
        this.writeClient(Buffer.concat([parameterDescription(stmt.paramTypes), jobRowDescription()]));
      } else {
        this.writeClient(jobRowDescription(this.local.portals.get(target.name)!.resultFormats));
      }
      return true;
    }
    const portal = this.local.portals.get(target.name)!;
    this.local.forgetPortal(target.name);
    this.runLocal(async () => {
      await this.whenIdle();
      try {
        if (this.txStatus !== 'I') throw inTransactionError(portal.statement.plan);
        const job = await this.submit(portal.statement.plan, portal.params);
        this.writeClient(Buffer.concat([jobRow(job, portal.resultFormats), jobCommandComplete()]));
      } catch (err) {
        this.localError(err);
      }
    });
    return true;
  }

  private onSync(msg: Buffer): void {
    if (this.batchHasLocal && this.forwardedSinceSync === 0 && this.pendingReady === 0) {
      // Only the proxy's own messages since the last Sync: it owes the ReadyForQuery itself.
      this.skipUntilSync = false;
      this.batchHasLocal = false;
      this.flushOutbound();
      this.writeClient(readyForQuery(this.txStatus));
      return;
    }
    this.syncForwarded();
    this.outbound.add(msg);
  }

  /** The client's Sync goes to the server: a ReadyForQuery is owed and a new batch begins. */
  private syncForwarded(): void {
    this.skipUntilSync = false;
    this.batchHasLocal = false;
    this.forwardedSinceSync = 0;
    this.skips.synced();
    this.extendedSinceAnswer = 0;
    this.pendingReady++;
  }

  private localError(err: unknown): void {
    this.writeClient(errorResponse(toPgError(err, this.deps.log, this.id)));
    this.skipUntilSync = true;
  }

  private submitContext() {
    // Nothing relayed since that job: only the proxy's own statements ran, and they set nothing.
    const settingsFrom = this.settingsFrom?.relayed === this.relayed ? this.settingsFrom.token : undefined;
    return { sessionId: this.id, user: this.user, database: this.database, applicationName: this.applicationName, settingsFrom };
  }

  private async submit(plan: JobPlan, params: BoundParams | null): Promise<SubmittedJob> {
    if (!this.deps.jobs) throw jobsDisabled();
    const started = performance.now();
    this.submitting = true;
    let job: SubmittedJob;
    try {
      job = await this.deps.jobs.submit(this.channel, plan, params, this.submitContext());
    } finally {
      this.submitting = false;
    }
    this.deps.observer.statement('backgrounded');
    this.deps.observer.jobSubmitted((performance.now() - started) / 1000);
    this.jobs?.track(job, plan.options.onDisconnect ?? 'keep');
    if (job.settings) this.settingsFrom = { token: job.settings, relayed: this.relayed };
    if (!job.launcherAlive) this.scheduleLauncherRetry();
    return job;
  }

  // ---- the proxy's own work on the upstream session ---------------------------------------

  /** Runs an operation of the proxy's own; client messages that arrive meanwhile are held. */
  private runLocal(op: () => Promise<void>): void {
    this.flushOutbound();
    this.localBusy = true;
    op()
      .catch((err) => {
        this.deps.log.error({ session: this.id, err }, 'local operation failed');
        this.fatal(new PgError(SqlState.InternalError, 'pgbg-proxy internal error', undefined, undefined, 'FATAL'));
      })
      .finally(() => {
        this.localBusy = false;
        if (this.decideAfterLocal) {
          this.decideAfterLocal = false;
          this.adoptOrClose();
          return;
        }
        this.flushOutbound();
        this.pump();
      });
  }

  private pump(): void {
    while (!this.localBusy && this.held.length > 0 && this.phase === 'ready') {
      const next = this.held.shift()!;
      this.heldBytes -= next.msg.length;
      try {
        this.dispatch(next.type, next.msg);
      } catch (err) {
        this.flushOutbound();
        if (err instanceof ProtocolViolation) return this.protocolViolation(err);
        throw err;
      }
    }
    this.flushOutbound();
    if (this.heldBytes <= HELD_BYTES_LIMIT) this.unpause('held');
    if (!this.localBusy && this.held.length === 0) {
      this.maybeFinishAdopted();
      if (this.superviseDue && this.idle && this.txStatus === 'I') setImmediate(() => this.superviseOnce());
    }
  }

  /** Resolves once the server owes the client nothing; local writes are safe from then on. */
  private whenIdle(): Promise<void> {
    if (this.pendingReady === 0 && this.backend.atBoundary) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private exchange(messages: Buffer[], readyCount = 1): Promise<Exchange> {
    // A PgError: the session ended under the proxy's own statements (client gone, protocol
    // violation), which is no internal error; there is nobody left to tell.
    if (this.phase !== 'ready' || !this.upstream) return Promise.reject(new PgError(SqlState.ConnectionFailure, 'upstream session is closed'));
    if (this.collector) return Promise.reject(new Error('an exchange is already running'));
    return new Promise<Exchange>((resolve, reject) => {
      this.collector = new ExchangeCollector(
        (result) => {
          this.collector = null;
          this.txStatus = result.status;
          resolve(result);
        },
        reject,
        readyCount,
      );
      this.writeUpstream(messages.length === 1 ? messages[0] : Buffer.concat(messages));
    });
  }

  /** Once the client has gone: the session's remaining duty to its jobs, at the next idle moment. */
  private scheduleSupervision(): void {
    if (this.superviseTimer || !this.jobs?.pending || !this.clientGone) return;
    this.superviseTimer = setTimeout(() => {
      this.superviseTimer = null;
      this.superviseOnce();
    }, 0);
  }

  /** Cancels the departed client's still-queued "cancel on disconnect" jobs, when idle outside a transaction block. */
  private superviseOnce(): void {
    const jobs = this.jobs;
    if (this.phase !== 'ready' || !jobs) return;
    if (!this.idle || this.held.length > 0 || this.txStatus !== 'I') {
      // Busy now: look again at the next moment the session is idle outside a transaction.
      this.superviseDue = true;
      return;
    }
    this.superviseDue = false;
    this.runLocal(async () => {
      if (this.clientGone) await jobs.cancelOnDisconnect(this.channel);
    });
  }

  /**
   * A submission found no launcher alive and could not start one (no free worker slot): while
   * the client stays, try again every second, at idle moments, until one is alive (the next
   * submission or session of the login would also start it).
   */
  private scheduleLauncherRetry(): void {
    if (this.launcherRetryTimer || !this.deps.jobs) return;
    this.launcherRetryTimer = setTimeout(() => {
      this.launcherRetryTimer = null;
      const jobs = this.deps.jobs;
      if (this.phase !== 'ready' || this.clientGone || !jobs) return;
      if (!this.idle || this.held.length > 0 || this.txStatus !== 'I') return this.scheduleLauncherRetry();
      this.runLocal(async () => {
        if (!(await jobs.retryLauncher(this.channel))) this.scheduleLauncherRetry();
      });
    }, 1000);
    this.launcherRetryTimer.unref();
  }

  /**
   * The first session of a login in a while (per proxy process) checks whether that login has
   * jobs waiting without a live launcher (after a server restart, or a terminated launcher) and
   * starts one: that is how queued jobs resume without any proxy remembering them.
   */
  private checkLauncher(): void {
    const jobs = this.deps.jobs;
    if (!jobs || !this.deps.launcherCheckDue(this.database, this.user)) return;
    this.runLocal(async () => {
      await jobs.ensureLauncher(this.channel);
    });
  }

  // ---- server → client ------------------------------------------------------------------

  private onUpstreamData(chunk: Buffer): void {
    this.deps.observer.bytes('server_to_client', chunk.length);
    this.backend.push(chunk);
    if (this.pendingReady === 0 && this.backend.atBoundary && this.idleWaiters.length) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
    if (this.superviseDue && this.txStatus === 'I' && this.idle && this.held.length === 0) this.superviseOnce();
  }

  capturing(type: number): boolean {
    // ParameterStatus is read as well as relayed: the proxy lexes SQL the way it says.
    return this.phase === 'auth' || type === PARAMETER_STATUS || (this.collector !== null && this.pendingReady === 0);
  }

  relay(bytes: Buffer): void {
    if (this.clientGone) return;
    if (!this.client.write(bytes)) this.pause('client');
  }

  noteMessage(type: number, status: number): void {
    this.lastServerMessage = type;
    if (this.forwardedSinceSync > 0 || this.skips.tracking) {
      const never = this.skips.note(type);
      if (never > 0) this.pendingReady = Math.max(0, this.pendingReady - never);
    }
    if (type === 0x5a) {
      if (this.pendingReady > 0) this.pendingReady--;
      this.txStatus = String.fromCharCode(status) as 'I' | 'T' | 'E';
    }
  }

  capture(type: number, message: Buffer): void {
    this.lastServerMessage = type;
    if (type === PARAMETER_STATUS) this.noteParameter(message);
    if (this.phase === 'auth') return this.onAuthMessage(type, message);
    // A FATAL ends the server session under the proxy's own statement: the client is told
    // exactly what the server said, as it would be without the proxy.
    if (type === ERROR_RESPONSE && isFatal(message)) {
      this.relay(message);
      return;
    }
    // Notifications and parameter changes belong to the client even while we hold the session.
    if (type === 0x41 || type === 0x53) {
      this.relay(message);
      return;
    }
    this.collector?.take(message);
  }

  /**
   * The server reports standard_conforming_strings and client_encoding whenever they change
   * (and at startup): a SET, a RESET, a function's SET clause ending, a rolled-back SET.
   */
  private noteParameter(message: Buffer): void {
    const nameEnd = message.indexOf(0, 5);
    if (nameEnd < 0) return;
    const valueEnd = message.indexOf(0, nameEnd + 1);
    if (valueEnd < 0) return;
    const name = message.toString('latin1', 5, nameEnd);
    const value = message.toString('latin1', nameEnd + 1, valueEnd);
    if (name === 'standard_conforming_strings') this.standardConformingStrings = value !== 'off';
    else if (name === 'client_encoding') this.textEncoding = /^(UTF8|UNICODE)$/i.test(value) ? 'utf8' : 'latin1';
  }

  private onAuthMessage(type: number, message: Buffer): void {
    if (type === 0x4b && message.length === 13) {
      // BackendKeyData: the client gets the server's own key, unchanged (see CancelKeys).
      this.realPid = message.readInt32BE(5);
      this.realKey = message.readInt32BE(9);
      this.deps.cancelKeys.register(this.realPid, this.realKey, this.cancelTarget);
    }
    this.relay(this.scram ? this.scram.fromServer(message) : message);
    if (type === 0x5a) {
      this.phase = 'ready';
      this.txStatus = String.fromCharCode(message[5]) as 'I' | 'T' | 'E';
      this.deps.log.info(
        { session: this.id, user: this.user, database: this.database, application_name: this.applicationName, backend_pid: this.realPid },
        'session ready',
      );
      this.checkLauncher();
      const early = this.authHeld;
      this.authHeld = [];
      // Messages pipelined behind the startup packet are read here, on the server's data
      // event: a malformed one must end this session, not throw out of the socket handler.
      try {
        for (const m of early) this.onClientMessage(m[0], m);
      } catch (err) {
        this.flushOutbound();
        if (err instanceof ProtocolViolation) return this.protocolViolation(err);
        throw err;
      }
      this.flushOutbound();
    }
  }

  cancelUpstream(): void {
    if (!this.realPid) return;
    const s = this.deps.settings();
    sendCancel(s.upstream, this.realPid, this.realKey, s.connectTimeoutMs).catch((err) =>
      this.deps.log.warn({ session: this.id, err: (err as Error).message }, 'cancel request to server failed'),
    );
  }

  // ---- writing, back-pressure, endings ----------------------------------------------------

  private flushOutbound(): void {
    if (this.outbound.empty) return;
    this.relayed++;
    this.outbound.drainTo(this.writeUpstreamBound);
  }

  private writeUpstream(buf: Buffer): void {
    if (!this.upstream || this.upstream.destroyed) return;
    if (!this.upstream.write(buf)) this.pause('upstream');
  }

  private writeClient(buf: Buffer): void {
    if (this.clientGone) return;
    if (!this.client.write(buf)) this.pause('client');
  }

  /**
   * 'upstream' = the server is not draining what the client sends: stop reading the client.
   * 'client' = the client is not draining what the server sends: stop reading the server.
   */
  private pause(reason: 'held' | 'upstream' | 'client'): void {
    this.pausedBy.add(reason);
    if (reason === 'client') this.upstream?.pause();
    else this.client.pause();
  }

  private unpause(reason: 'held' | 'upstream' | 'client'): void {
    if (!this.pausedBy.delete(reason)) return;
    if (reason === 'client') this.upstream?.resume();
    else if (!this.pausedBy.has('held') && !this.pausedBy.has('upstream')) this.client.resume();
  }

  private protocolViolation(err: ProtocolViolation): void {
    this.deps.observer.protocolError(err.reason);
    this.deps.log.warn({ session: this.id, reason: err.reason, err: err.message }, 'protocol violation');
    this.fatal(new PgError(SqlState.ProtocolViolation, err.message, undefined, undefined, 'FATAL'));
  }

  /** Ends the session with a FATAL error, if the client can still be told at a message boundary. */
  fatal(error: PgError): void {
    if (!this.clientGone && this.backend.atBoundary) {
      this.client.end(errorResponse(error));
    } else {
      this.client.destroy();
    }
    this.clientGone = true;
    this.jobs?.clear();
    this.close();
  }

  private failStartup(error: PgError): void {
    if (!this.clientGone) this.client.end(errorResponse(error));
    this.clientGone = true;
    this.close();
  }

  /** Ends the session when idle (graceful shutdown); returns whether it did. */
  closeIfIdle(): boolean {
    if (this.phase === 'ready' && this.idle && this.held.length === 0 && this.txStatus === 'I') {
      this.fatal(new PgError(SqlState.AdminShutdown, 'terminating connection: pgbg-proxy is shutting down', undefined, undefined, 'FATAL'));
      return true;
    }
    return this.phase === 'closed';
  }

  private onClientClosed(): void {
    if (this.clientGone) return;
    this.clientGone = true;
    this.local.statements.clear();
    this.local.portals.clear();
    this.held = [];
    this.heldBytes = 0;
    if (this.submitting && this.phase === 'ready') {
      // A submission is in flight, its job row maybe committing right now: closing the server
      // session under it would leave a committed job with no session to launch or supervise it
      // (it would end 'lost'). Let it finish (it only waits for the server's answers to the
      // proxy's own statements), then adopt or close. Other local work (e.g. still waiting for
      // the server to finish the client's previous statement) ends with the session as before.
      this.unpause('client');
      this.decideAfterLocal = true;
      return;
    }
    this.adoptOrClose();
  }

  /** The client has left: keep the server session while it has jobs to look after, else end it. */
  private adoptOrClose(): void {
    if (this.hasPendingJobs && this.phase === 'ready') {
      // Adopted: the upstream session outlives its client until its supervised jobs end.
      this.deps.log.info({ session: this.id, jobs: this.jobs?.ids ?? [] }, 'client left; keeping session for its jobs');
      this.unpause('client');
      this.afterClientLeft();
      return;
    }
    this.close();
  }

  private afterClientLeft(): void {
    this.whenIdle().then(() => {
      if (this.phase !== 'ready') return;
      if (this.localBusy) {
        // The proxy's own operation holds the session (its transaction status is not the
        // client's): decide once it is done.
        this.decideAfterLocal = true;
        return;
      }
      if (this.txStatus !== 'I') {
        this.runLocal(async () => {
          await this.exchange([queryMessage('ROLLBACK')]);
        });
      }
      this.scheduleSupervision();
    });
  }

  private maybeFinishAdopted(): void {
    if (this.clientGone && this.phase === 'ready' && !this.hasPendingJobs && this.idle) this.close();
  }

  private onUpstreamClosed(): void {
    if (this.phase === 'closed') return;
    if (this.collector) this.collector.reject(new PgError(SqlState.ConnectionFailure, 'server closed the connection unexpectedly'));
    if (!this.clientGone) {
      // After the server's own FATAL the client sees that and nothing else; only a server
      // that vanished mid-statement without a word gets the proxy's 08006.
      const serverSaidWhy = this.lastServerMessage === ERROR_RESPONSE;
      if (this.backend.atBoundary && this.phase === 'ready' && this.pendingReady > 0 && !serverSaidWhy && !this.terminating) {
        this.client.end(
          errorResponse(new PgError(SqlState.ConnectionFailure, 'server closed the connection unexpectedly', undefined, undefined, 'FATAL')),
        );
      } else {
        this.client.end();
      }
      this.clientGone = true;
    }
    this.close();
  }

  close(): void {
    if (this.phase === 'closed') return;
    const wasConnected = this.upstream !== null;
    this.phase = 'closed';
    if (this.superviseTimer) clearTimeout(this.superviseTimer);
    if (this.launcherRetryTimer) clearTimeout(this.launcherRetryTimer);
    if (this.realPid) this.deps.cancelKeys.release(this.realPid, this.cancelTarget);
    if (this.upstream && !this.upstream.destroyed) {
      // A statement still running keeps its backend busy (the server reads Terminate only
      // after it): cancel it, so the backend goes away now rather than when it finishes.
      if (this.pendingReady > 0 || this.forwardedSinceSync > 0 || this.localBusy) this.cancelUpstream();
      this.upstream.end(Buffer.from([X, 0, 0, 0, 4]));
      this.upstream.destroySoon?.();
    }
    if (wasConnected) this.deps.observer.upstreamConnected(-1);
    if (!this.client.destroyed) this.client.destroy();
    this.deps.log.info({ session: this.id, duration_ms: Date.now() - this.startedAt }, 'session ended');
    for (const l of this.closeListeners) l();
  }
}

const ERROR_RESPONSE = 0x45;

/** Whether an ErrorResponse carries severity FATAL or PANIC (the server ends the session). */
function isFatal(message: Buffer): boolean {
  let pos = 5;
  while (pos < message.length && message[pos] !== 0) {
    const code = message[pos];
    const end = message.indexOf(0, pos + 1);
    if (end < 0) return false;
    if (code === 0x56 /* V, never localized */ || code === 0x53 /* S */) {
      const severity = message.toString('latin1', pos + 1, end);
      if (code === 0x56 || severity === 'FATAL' || severity === 'PANIC') return severity === 'FATAL' || severity === 'PANIC';
    }
    pos = end + 1;
  }
  return false;
}

/**
 * A statement that fails at Parse time, whatever parameters it was declared with. In pg_catalog,
 * where no client can create the relation (on its search_path it could, and the refusal would
 * then run as a harmless SELECT instead of failing).
 */
/** Why a background statement in the middle of an extended-protocol batch is refused. */
const PIPELINE_REFUSAL = 'a background statement must be the first of its pipeline; send Sync before it';

/** A statement the server fails at Parse, naming PIPELINE_REFUSAL. */
function pipelineRefusal(): string {
  return `SELECT FROM pg_catalog."pgbg-proxy: ${PIPELINE_REFUSAL}"`;
}

/** A Bind aimed at a statement name the server cannot have, so the server fails it in order. */
function bindToMissingStatement(msg: Buffer): Buffer {
  const portalEnd = msg.indexOf(0, 5);
  const stmtEnd = msg.indexOf(0, portalEnd + 1);
  const replacement = Buffer.from('pgbg-proxy: background statement must start its own pipeline', 'utf8');
  const out = Buffer.concat([msg.subarray(0, portalEnd + 1), replacement, msg.subarray(stmtEnd)]);
  out.writeInt32BE(out.length - 1, 1);
  return out;
}

function inTransactionError(plan: JobPlan): PgError {
  return new PgError(
    SqlState.ActiveSqlTransaction,
    `${plan.kind} cannot run in the background inside a transaction block`,
    'A background job runs in its own worker and cannot join the client’s transaction.',
    'Run the statement outside BEGIN ... COMMIT, or remove the background hint.',
  );
}

function jobsDisabled(): PgError {
  return new PgError(SqlState.FeatureNotSupported, 'background jobs are disabled in this pgbg-proxy', undefined, 'Set jobs.enabled: true in the configuration.');
}

function toPgError(err: unknown, log: Logger, session: string): PgError {
  if (err instanceof PgError) return err;
  log.error({ session, err }, 'unexpected error while handling a background statement');
  return new PgError(SqlState.InternalError, `pgbg-proxy: ${(err as Error).message ?? String(err)}`);
}

