/**
 * The realtime stream (`GET /api/v1/events/stream`, Server-Sent Events) read with `fetch`,
 * so it authenticates like every other call (the `Authorization` header, refreshed when
 * it expires) in browsers and in Node alike; `EventSource` cannot send headers, which is
 * why the API also offers `?token=` from `POST /api/v1/events/token`.
 *
 * Every connection starts with `ready` (or `reset`: events may have been missed, refetch
 * what you show). A stream ends after a few minutes; with `reconnect` (the default) this
 * reconnects after the server's `retry:` hint with `Last-Event-ID`, so nothing is missed
 * that the server still keeps.
 */

import { createParser, type EventSourceMessage } from "eventsource-parser";

import type { MaycoleClient } from "./client.js";
import { ProblemError, readProblem } from "./problem.js";
import { sleep } from "./sleep.js";
import type { JobStatus } from "./types.js";

/** `job.progress`: a job of mine moved (status `running`, `retrying`, ...). */
export interface JobProgressData {
  job_id: string;
  type: string;
  progress: number;
  status: JobStatus;
}

/** `job.finished`: a job of mine reached a final status. */
export interface JobFinishedData {
  job_id: string;
  type: string;
  status: JobStatus;
  error?: string;
  /** As the job's `links.result`, when it produced something to fetch. */
  result_url?: string;
}

/** The events of the stream; events of other names (newer servers) are skipped. */
export type StreamEvent =
  | { id: string; event: "ready" | "reset"; data: Record<string, never> }
  | { id: string; event: "job.progress"; data: JobProgressData }
  | { id: string; event: "job.finished"; data: JobFinishedData }
  | { id: string; event: "notification.created"; data: { [key: string]: unknown } };

const KNOWN = new Set(["ready", "reset", "job.progress", "job.finished", "notification.created"]);

export interface StreamOptions {
  signal?: AbortSignal;
  /** Resume after this event id (events the server still keeps are replayed). */
  lastEventId?: string;
  /** Reconnect when the server ends the stream or the connection drops (default true). */
  reconnect?: boolean;
}

function toEvent(message: EventSourceMessage, fallbackId: string): StreamEvent | null {
  const name = message.event ?? "message";
  if (!KNOWN.has(name)) return null;
  const data: unknown = message.data ? JSON.parse(message.data) : {};
  return { id: message.id ?? fallbackId, event: name, data } as StreamEvent;
}

/** My events, as they happen, until `signal` aborts (or the first stream ends, without
 * `reconnect`). Opening the stream throws `ProblemError` (401, 429, 503 + Retry-After). */
export async function* streamEvents(
  client: MaycoleClient,
  options: StreamOptions = {},
): AsyncGenerator<StreamEvent, void, undefined> {
  const { signal, reconnect = true } = options;
  let lastId = options.lastEventId ?? "";
  let retryMs = 2_000;
  while (!signal?.aborted) {
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await client.fetch(`${client.baseUrl}/api/v1/events/stream`, {
      headers,
      ...(signal ? { signal } : {}),
    });
    if (!response.ok || !response.body) {
      throw new ProblemError(await readProblem(response), response);
    }
    const pending: StreamEvent[] = [];
    const parser = createParser({
      onEvent: (message) => {
        const event = toEvent(message, lastId);
        if (event) pending.push(event);
      },
      onRetry: (ms) => {
        retryMs = ms;
      },
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parser.feed(value);
        for (let event = pending.shift(); event; event = pending.shift()) {
          lastId = event.id;
          yield event;
        }
      }
    } catch (error) {
      // A dropped connection is what reconnecting is for; an abort is the caller's wish.
      if (signal?.aborted || !reconnect || !(error instanceof TypeError)) throw error;
    } finally {
      // Also when the caller stops iterating: close the connection.
      reader.cancel().catch(() => undefined);
    }
    if (!reconnect) return;
    await sleep(retryMs, signal).catch(() => undefined); // aborted: the loop ends
  }
}
