/** An error that goes to the client as an ErrorResponse with these fields. */
export class PgError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly detail?: string,
    readonly hint?: string,
    readonly severity: 'ERROR' | 'FATAL' = 'ERROR',
  ) {
    super(message);
  }
}

/** A client broke the frontend protocol: its session ends with 08P01. */
export class ProtocolViolation extends Error {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}
