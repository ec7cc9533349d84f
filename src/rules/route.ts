import type { PgError } from '../protocol/errors.js';
import type { JobPlan } from '../jobs/plan.js';

export interface RoutingContext {
  user: string;
  database: string;
  applicationName: string;
  /**
   * The session's standard_conforming_strings, as the server last reported it (ParameterStatus);
   * false: backslashes escape inside ordinary string literals. Absent means on.
   */
  standardConformingStrings?: boolean;
}

export type Route =
  | { action: 'forward' }
  | { action: 'background'; plan: JobPlan }
  | { action: 'reject'; error: PgError };

/** Decides, from the SQL text of a Query or Parse, what the proxy does with a statement. */
export interface StatementRouter {
  route(sql: string, ctx: RoutingContext): Route;
  /**
   * Whether a statement with no hint opening ("/*+") anywhere in its text could be routed other
   * than forward in this session, that is, whether a rule may apply. When not, a session passes
   * such a statement on without decoding its text (see mayHoldHint). The context is asked for
   * only where rules exist (building it reads the session's parameters).
   */
  routesUnhinted(ctx: () => RoutingContext): boolean;
}
