import type { JobPlan } from '../jobs/plan.js';
import type { BoundParams } from '../jobs/submitter.js';

/** A prepared statement the proxy answered itself because it is to run as a job. */
export interface LocalStatement {
  plan: JobPlan;
  paramTypes: number[];
}

export interface LocalPortal {
  statement: LocalStatement;
  params: BoundParams;
  resultFormats: number[];
}

/**
 * The extended-protocol objects that exist only in the proxy. Names that the client reuses for
 * ordinary statements drop out of here, so the server's namespace and ours never overlap.
 */
export class LocalPortals {
  readonly statements = new Map<string, LocalStatement>();
  readonly portals = new Map<string, LocalPortal>();

  get empty(): boolean {
    return this.statements.size === 0 && this.portals.size === 0;
  }

  forgetStatement(name: string): void {
    this.statements.delete(name);
  }

  forgetPortal(name: string): void {
    this.portals.delete(name);
  }
}
