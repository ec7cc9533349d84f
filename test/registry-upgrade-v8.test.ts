/**
 * Upgrade of a version-8 registry with jobs in every state to the newest version
 * (see test/support/registry-upgrade.ts).
 *
 *   npx vitest run test/registry-upgrade-v8.test.ts
 */
import { upgradeSuite } from './support/registry-upgrade.js';

upgradeSuite(8);
