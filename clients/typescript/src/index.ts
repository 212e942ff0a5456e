/**
 * @maycole/client: the Maycole API, typed from its OpenAPI document.
 *
 * - `createMaycoleClient({ baseUrl })`: `client.api.GET/POST/...` on typed paths, signed
 *   in with `client.login(...)`, tokens refreshed on expiry, `client.logout()`.
 * - `Intent` / `idempotent`: one Idempotency-Key per user action, reused on retries.
 * - `waitForJob`: follow a `202` to its job's end, by the event stream or its Location.
 * - `streamEvents`: the realtime events (job progress, notifications).
 * - `ProblemError` / `unwrap`: problem+json errors as a typed value.
 * - `postUploadForm`: post a file to the form an upload hands out.
 */

export type { paths, components, operations } from "./schema.js";
export { createMaycoleClient, type MaycoleClient, type MaycoleClientOptions } from "./client.js";
export {
  createAuthFetch,
  isExpired,
  memoryTokenStore,
  tokenExpiry,
  type TokenStore,
  type Tokens,
} from "./auth.js";
export {
  Intent,
  idempotent,
  isRetryable,
  newIdempotencyKey,
  type SendOptions,
} from "./idempotency.js";
export {
  FINISHED_STATUSES,
  JobWaitTimeout,
  fetchJob,
  isFinished,
  waitForJob,
  type Started,
  type WaitOptions,
} from "./jobs.js";
export {
  streamEvents,
  type JobFinishedData,
  type JobProgressData,
  type StreamEvent,
  type StreamOptions,
} from "./events.js";
export {
  ProblemError,
  isProblem,
  problemOf,
  readProblem,
  retryAfterSeconds,
  unwrap,
  type FetchResult,
  type Problem,
} from "./problem.js";
export { postUploadForm } from "./files.js";
export type { Job, JobEnvelope, JobStatus, UploadForm } from "./types.js";
