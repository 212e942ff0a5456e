/**
 * Names for the API's representations a client handles everywhere, taken from the
 * generated `paths` by path and status (stable) rather than by schema name (which the
 * document may change).
 */

import type { paths } from "./schema.js";

type JsonOf<R> = R extends { content: { "application/json": infer Body } } ? Body : never;

/** `{ job: Job }`, the answer of `GET /api/v1/jobs/{job_id}`. */
export type JobEnvelope = JsonOf<paths["/api/v1/jobs/{job_id}"]["get"]["responses"][200]>;
export type Job = JobEnvelope["job"];
export type JobStatus = Job["status"];

/** The form a browser posts the file to (`POST .../uploads` answers it). */
export type UploadForm = JsonOf<
  paths["/api/v1/teams/{team_id}/uploads"]["post"]["responses"][201]
>["upload"];
