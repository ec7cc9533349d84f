import type { Rule } from '../config/schema.js';
import type { RoutingContext } from './route.js';

/**
 * Rules in the order they are written, with the cheap tests first: who is asking (user,
 * database, application) and the statement's first keyword. Only a statement that survives
 * these is parsed, which keeps rules off the hot path of ordinary traffic.
 */
export class RuleMatcher {
  constructor(readonly rules: readonly Rule[]) {}

  get empty(): boolean {
    return this.rules.length === 0;
  }

  /** Rules whose session conditions hold for this client. */
  forContext(ctx: RoutingContext): Rule[] {
    return this.rules.filter(
      (r) =>
        (!r.match.users || r.match.users.includes(ctx.user)) &&
        (!r.match.databases || r.match.databases.includes(ctx.database)) &&
        (!r.match.applicationNames || r.match.applicationNames.includes(ctx.applicationName)),
    );
  }

  /** Could any rule match a statement that starts with this keyword and has this text? */
  static mayMatch(rule: Rule, firstWord: string, sql: string): boolean {
    if (rule.match.kinds) {
      const leading = firstWord === 'WITH' || firstWord === '(' || rule.match.kinds.some((k) => k.split(' ')[0] === firstWord);
      if (!leading) return false;
    }
    return !rule.match.pattern || rule.match.pattern.test(sql);
  }

  /** The first rule matching a classified statement, if any. */
  static first(rules: Rule[], kind: string, sql: string): Rule | null {
    for (const r of rules) {
      if (r.match.kinds && !r.match.kinds.includes(kind)) continue;
      if (r.match.pattern && !r.match.pattern.test(sql)) continue;
      return r;
    }
    return null;
  }
}
