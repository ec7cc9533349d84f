import type { Route, StatementRouter } from './route.js';

const FORWARD: Route = { action: 'forward' };

/** The router of a proxy with background jobs switched off: every statement goes through. */
export const forwardAll: StatementRouter = {
  route: () => FORWARD,
  routesUnhinted: () => false,
};
