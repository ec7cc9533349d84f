import type { BackendMessage } from 'pg-protocol/dist/messages.js';

/** What the server answered to statements the proxy ran on a client's upstream session. */
export interface Exchange {
  messages: BackendMessage[];
  /** The first ErrorResponse, if any. */
  error: (BackendMessage & Record<string, any>) | null;
  /** DataRow values as text (our own statements ask for text results only). */
  rows: (string | null)[][];
  status: 'I' | 'T' | 'E';
}

/**
 * The proxy's own access to a client's upstream session. Only usable while the session is idle
 * (no client statement in flight); the session holds client traffic until the exchange ends.
 */
export interface SessionChannel {
  /**
   * Writes the messages (ending in Sync or a Query) and resolves at ReadyForQuery, or at the
   * readyCount-th one when several Sync/Query messages are pipelined in one write.
   */
  exchange(messages: Buffer[], readyCount?: number): Promise<Exchange>;
  /** Transaction status from the last ReadyForQuery. */
  readonly txStatus: 'I' | 'T' | 'E';
  readonly backendPid: number;
  /**
   * How the session's client_encoding maps characters to bytes: 'utf8' for UTF8, else 'latin1',
   * which carries every byte through unchanged (text the proxy read from the client in that
   * encoding goes back to the server as the same bytes).
   */
  readonly textEncoding: BufferEncoding;
}
