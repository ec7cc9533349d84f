/**
 * Upgrade of a version-10 registry with jobs in every state to the newest version
 * (see test/support/registry-upgrade.ts).
 *
 *   npx vitest run test/registry-upgrade-v10.test.ts
 */
import { upgradeSuite } from './support/registry-upgrade.js';

upgradeSuite(10);
