/**
 * problem+json (RFC 9457) as a typed value: every error the API answers has this shape,
 * and `unwrap` turns an openapi-fetch result that is not a success into a thrown
 * `ProblemError` carrying it.
 */

import type { paths } from "./schema.js";

/** An RFC 9457 problem as the API sends it (`errors` only for validation failures). */
export interface Problem {
  /** A URI naming the kind of problem, e.g. `.../problems/not-found`. */
  type: string;
  title: string;
  status: number;
  detail: string;
  /** Validation failures: messages per field (also headers, e.g. `Idempotency-Key`). */
  errors?: { [field: string]: string[] };
  /** Quote it when reporting a problem: the server's logs are searchable by it. */
  request_id?: string | null;
}

// Compile-time proof that the document's problem schema still fits `Problem` (found by a
// path, not by the schema's name, which the document may change).
type DocumentedProblem =
  paths["/api/v1/auth/login"]["post"]["responses"][422]["content"]["application/problem+json"];
const _fits = (p: DocumentedProblem): Problem => p;
void _fits;

/** Whether a parsed body looks like a problem. */
export function isProblem(value: unknown): value is Problem {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v["type"] === "string" &&
    typeof v["status"] === "number" &&
    typeof v["title"] === "string"
  );
}

/** Thrown for an answer that is not a success; `problem` says why, `response` is the answer. */
export class ProblemError extends Error {
  override readonly name = "ProblemError";

  constructor(
    readonly problem: Problem,
    readonly response: Response,
  ) {
    super(`${problem.status} ${problem.title}: ${problem.detail}`);
  }

  get status(): number {
    return this.problem.status;
  }

  /** The last part of the problem's `type` URI, e.g. `not-found` or `email-not-verified`. */
  get kind(): string {
    return this.problem.type.split("/").pop() ?? this.problem.type;
  }

  /** Seconds to wait before trying again, when the server said so (`Retry-After`). */
  get retryAfterSeconds(): number | null {
    return retryAfterSeconds(this.response);
  }
}

/** `Retry-After` in seconds (delta-seconds or an HTTP date), or null when absent. */
export function retryAfterSeconds(response: Response): number | null {
  const header = response.headers.get("Retry-After");
  if (header === null) return null;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(header);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

/** Let go of an answer's body that nobody will read (frees the connection). */
export async function discard(response: Response): Promise<void> {
  if (response.body && !response.bodyUsed) await response.body.cancel().catch(() => undefined);
}

/** The problem of a failed answer whose body was already parsed (openapi-fetch's `error`). */
export function problemOf(response: Response, body: unknown): Problem {
  if (isProblem(body)) return body;
  // Something in front of the API (a proxy, a load balancer) answered without one.
  const text = typeof body === "string" ? body.trim() : "";
  return {
    type: "about:blank",
    title: response.statusText || `HTTP ${response.status}`,
    status: response.status,
    detail: text.slice(0, 500) || response.statusText || `HTTP ${response.status}`,
  };
}

/** The problem of a failed raw `fetch` answer (reads the body). */
export async function readProblem(response: Response): Promise<Problem> {
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: problemOf describes it from the status
  }
  return problemOf(response, body);
}

/** An openapi-fetch result: `data` on success, `error` (the parsed body) otherwise. */
export interface FetchResult<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The data of a successful result; throws `ProblemError` for any other answer. */
export function unwrap<T>(result: FetchResult<T>): T {
  if (!result.response.ok) {
    throw new ProblemError(problemOf(result.response, result.error), result.response);
  }
  return result.data as T;
}
