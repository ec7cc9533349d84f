import { INT8, TEXT, dataRow, encodeInt8, formatFor, rowDescription, commandComplete } from '../protocol/backend-messages.js';
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
  return dataRow([encodeInt8(job.jobId, formatFor(resultFormats, 0)), Buffer.from(job.state)]);
}

export const jobCommandComplete = (): Buffer => commandComplete('SELECT 1');
