import type { AdminControls } from '../admin/controls.js';
import type { ClientSlots } from '../listener/client-slots.js';

/**
 * What a worker's proxy (src/proxy.ts) needs of its supervisor: the admin console's controls
 * (RELOAD, PAUSE / RESUME, SHOW CLIENTS, SHOW STATS go through the supervisor, which owns that
 * state or asks every worker), where a CancelRequest goes that no local session holds, and
 * the count of every worker's sessions against limits.maxClients.
 */
export interface ClusterLink {
  controls(local: AdminControls): AdminControls;
  cancelElsewhere(pid: number, key: number): void;
  clientSlots: ClientSlots;
}
