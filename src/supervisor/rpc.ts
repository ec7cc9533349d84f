import type { RpcMessage } from './messages.js';

/**
 * Request / reply over one IPC channel (either direction), with a timeout per request: a worker
 * that hangs or dies must not hang the console command or the scrape that asked it.
 */
export class Rpc {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout }>();

  constructor(
    private readonly send: (msg: RpcMessage) => void,
    private readonly serve: (op: string) => Promise<unknown> | unknown,
  ) {}

  request<T>(op: string, timeoutMs: number): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`no answer to "${op}" within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      try {
        this.send({ pgbg: 'request', id, op });
      } catch (err) {
        clearTimeout(timer);
        this.waiting.delete(id);
        reject(err as Error);
      }
    });
  }

  /** Takes a request or reply; false for any other message. */
  handle(msg: { pgbg: string }): boolean {
    if (msg.pgbg === 'request') {
      const { id, op } = msg as unknown as { id: number; op: string };
      Promise.resolve()
        .then(() => this.serve(op))
        .then(
          (value) => this.reply({ pgbg: 'reply', id, ok: true, value }),
          (err) => this.reply({ pgbg: 'reply', id, ok: false, error: (err as Error)?.message ?? String(err) }),
        );
      return true;
    }
    if (msg.pgbg === 'reply') {
      const reply = msg as unknown as RpcMessage & { pgbg: 'reply' };
      const entry = this.waiting.get(reply.id);
      if (!entry) return true; // answered after its timeout
      this.waiting.delete(reply.id);
      clearTimeout(entry.timer);
      if (reply.ok) entry.resolve(reply.value);
      else entry.reject(new Error(reply.error));
      return true;
    }
    return false;
  }

  /** The other side is gone: every open request fails now. */
  close(reason: string): void {
    for (const [id, entry] of this.waiting) {
      clearTimeout(entry.timer);
      entry.reject(new Error(reason));
      this.waiting.delete(id);
    }
  }

  private reply(msg: RpcMessage): void {
    try {
      this.send(msg);
    } catch {
      /* the asker is gone */
    }
  }
}
