/** What a session reports as it runs; the metrics module implements it, tests may count with it. */
export interface SessionObserver {
  bytes(direction: 'client_to_server' | 'server_to_client', n: number): void;
  statement(action: 'forwarded' | 'backgrounded' | 'rejected'): void;
  protocolError(reason: string): void;
  upstreamConnected(delta: 1 | -1): void;
  /** Time to job id for one backgrounded statement. */
  jobSubmitted(seconds: number): void;
  /**
   * A replication connection: started (the server accepted it), refused (by the server or the
   * proxy, before it started), failed (server unreachable, or a socket broke mid-stream).
   */
  replication(event: 'started' | 'refused' | 'failed'): void;
}

export const quietObserver: SessionObserver = {
  bytes() {},
  statement() {},
  protocolError() {},
  upstreamConnected() {},
  jobSubmitted() {},
  replication() {},
};
