import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import type { Exchange } from '../upstream/channel.js';

/**
 * Gathers the server's answers to statements the proxy itself runs on a client's upstream
 * session, up to ReadyForQuery. Whole messages arrive one at a time from BackendStream's capture
 * mode; pg-protocol decodes them (our own statements only ever ask for text results).
 */
export class ExchangeCollector {
  private readonly parser = new Parser();
  private readonly result: Exchange = { messages: [], error: null, rows: [], status: 'I' };
  done = false;

  constructor(
    private readonly resolve: (exchange: Exchange) => void,
    readonly reject: (err: Error) => void,
    /** ReadyForQuery messages that end the exchange: 2 when a simple Query is pipelined ahead of a Sync. */
    private readyLeft = 1,
  ) {}

  /** Returns true when the exchange ended with this message. */
  take(message: Buffer): boolean {
    this.parser.parse(message, (m: BackendMessage) => this.onMessage(m));
    return this.done;
  }

  private onMessage(m: BackendMessage): void {
    const r = this.result;
    switch (m.name) {
      case 'dataRow':
        r.rows.push((m as unknown as { fields: (string | null)[] }).fields);
        break;
      case 'error':
        if (!r.error) r.error = m as Exchange['error'];
        break;
      case 'readyForQuery':
        r.status = (m as unknown as { status: 'I' | 'T' | 'E' }).status;
        if (--this.readyLeft > 0) return;
        this.done = true;
        this.resolve(r);
        return;
      default:
        break;
    }
    r.messages.push(m);
  }
}
