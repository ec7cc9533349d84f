import { INT8, TEXT, dataRow, formatFor, rowDescription, commandComplete } from '../protocol/backend-messages.js';
import type { SubmittedJob } from '../jobs/submitter.js';

/** The row a backgrounded statement answers with: its job id and the state it is in now. */
const JOB_COLUMNS = [
  { name: 'job_id', ...INT8 },
  { name: 'state', ...TEXT },
];

export function jobRowDescription(resultFormats: number[] = []): Buffer {
  return rowDescription(JOB_COLUMNS, resultFormats);
}

export function jobRow(job: SubmittedJob, resultFormats: number[] = []): Buffer {
  const id =
    formatFor(resultFormats, 0) === 1
      ? (() => {
          const b = Buffer.alloc(8);
          b.writeBigInt64BE(job.jobId);
          return b;
        })()
      : Buffer.from(job.jobId.toString());
  return dataRow([id, Buffer.from(job.state)]);
}

export const jobCommandComplete = (): Buffer => commandComplete('SELECT 1');
