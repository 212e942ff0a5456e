/**
 * Background work: a call that starts some answers `202` with `Location: /api/v1/jobs/{id}`
 * and `{ job }`. `waitForJob` follows it until the job reaches a final status, either by
 * the realtime stream (no polling; the default for a signed-in user) or by polling the
 * Location (API keys, or where a stream cannot be opened).
 *
 * With the stream there is no race to lose: every connection begins with `ready`, and on
 * it the job is read once, so a job that finished before the stream opened is seen too.
 */

import type { MaycoleClient } from "./client.js";
import { streamEvents, type JobProgressData } from "./events.js";
import { ProblemError, readProblem, retryAfterSeconds } from "./problem.js";
import { sleep } from "./sleep.js";
import type { Job, JobEnvelope, JobStatus } from "./types.js";

export const FINISHED_STATUSES: readonly JobStatus[] = ["succeeded", "failed", "dead", "cancelled"];

/** Whether a job will change no more (`retrying` is not final: it runs again). */
export function isFinished(status: JobStatus): boolean {
  return FINISHED_STATUSES.includes(status);
}

/** What a call that started background work returned (an openapi-fetch result). */
export interface Started {
  response: Response;
  data?: { job: { id: string } } | undefined;
}

export interface WaitOptions {
  /** `stream`: the event stream only; `location`: poll the job; `auto` (default): the
   * stream, or polling when the stream cannot be opened. */
  via?: "auto" | "stream" | "location";
  /** Give up after this long (default 5 minutes): rejects with `JobWaitTimeout`. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Each `job.progress` of this job (stream) or each poll's job (location). */
  onProgress?: (progress: Pick<JobProgressData, "progress" | "status">) => void;
}

export class JobWaitTimeout extends Error {
  override readonly name = "JobWaitTimeout";
}

function locationOf(client: MaycoleClient, started: Started | string): { id: string; url: string } {
  if (typeof started === "string") {
    return { id: started, url: `${client.baseUrl}/api/v1/jobs/${encodeURIComponent(started)}` };
  }
  const location = started.response.headers.get("Location");
  const id = started.data?.job.id ?? location?.split("/").pop();
  if (!id) {
    throw new Error(`not a started job: ${started.response.status} without Location or job`);
  }
  // An absolute path (the API's) resolves against the API's origin.
  const url = location
    ? new URL(location, `${client.baseUrl}/`).toString()
    : locationOf(client, id).url;
  return { id, url };
}

/** The job behind a Location, now. */
export async function fetchJob(
  client: MaycoleClient,
  url: string,
  signal?: AbortSignal,
): Promise<Job> {
  const response = await client.fetch(url, {
    headers: { Accept: "application/json" },
    ...(signal ? { signal } : {}),
  });
  if (!response.ok) throw new ProblemError(await readProblem(response), response);
  return ((await response.json()) as JobEnvelope).job;
}

async function byLocation(
  client: MaycoleClient,
  url: string,
  signal: AbortSignal,
  onProgress: WaitOptions["onProgress"],
): Promise<Job> {
  let delay = 250;
  for (;;) {
    const response = await client.fetch(url, { headers: { Accept: "application/json" }, signal });
    if (!response.ok) throw new ProblemError(await readProblem(response), response);
    const { job } = (await response.json()) as JobEnvelope;
    if (isFinished(job.status)) return job;
    onProgress?.({ progress: job.progress, status: job.status });
    const hinted = retryAfterSeconds(response);
    await sleep(hinted !== null ? hinted * 1000 : delay, signal);
    delay = Math.min(delay * 2, 5_000);
  }
}

async function byStream(
  client: MaycoleClient,
  id: string,
  url: string,
  signal: AbortSignal,
  onProgress: WaitOptions["onProgress"],
): Promise<Job> {
  for await (const event of streamEvents(client, { signal })) {
    if (event.event === "ready" || event.event === "reset") {
      // (Re)connected: whatever happened before now is in the job itself.
      const job = await fetchJob(client, url, signal);
      if (isFinished(job.status)) return job;
    } else if (event.event === "job.progress" && event.data.job_id === id) {
      onProgress?.({ progress: event.data.progress, status: event.data.status });
    } else if (event.event === "job.finished" && event.data.job_id === id) {
      return fetchJob(client, url, signal);
    }
  }
  throw signal.reason;
}

/** Wait until the job a call started (or the job of that id) has finished; returns it
 * whatever its final status (`succeeded`, `failed`, `dead`, `cancelled`): check it. */
export async function waitForJob(
  client: MaycoleClient,
  started: Started | string,
  options: WaitOptions = {},
): Promise<Job> {
  const { via = "auto", timeoutMs = 300_000, onProgress } = options;
  const { id, url } = locationOf(client, started);
  const controller = new AbortController();
  const timeout = new JobWaitTimeout(`job ${id} did not finish within ${timeoutMs} ms`);
  const timer = setTimeout(() => controller.abort(timeout), timeoutMs);
  const stop = (): void => controller.abort(options.signal?.reason);
  options.signal?.addEventListener("abort", stop, { once: true });
  try {
    if (via === "location") return await byLocation(client, url, controller.signal, onProgress);
    try {
      return await byStream(client, id, url, controller.signal, onProgress);
    } catch (error) {
      // No stream for this caller (an API key: 403; no sign-in: 401), or none free now
      // (429, 503): poll the Location instead.
      const cannotStream =
        error instanceof ProblemError && [401, 403, 429, 503].includes(error.status);
      if (via === "stream" || !cannotStream) throw error;
      return await byLocation(client, url, controller.signal, onProgress);
    }
  } catch (error) {
    throw controller.signal.aborted ? controller.signal.reason : error;
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", stop);
    controller.abort(); // closes the stream, if one is still open
  }
}
