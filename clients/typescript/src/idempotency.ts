/**
 * Idempotency-Key per intent. One key stands for one thing the user meant to do ("pay
 * order 42"), not for one HTTP request: every retry of that intent (a timeout, a dropped
 * connection, a 503, a double click) sends the same key, so the server carries it out
 * once and replays its first answer (`Idempotent-Replayed: true`) to the rest.
 *
 *   const pay = new Intent();               // when the user presses "Pay"
 *   const { data } = await pay.send((key) =>
 *     client.api.POST("/api/v1/teams/{team_id}/payments", {
 *       params: { path: { team_id }, header: { "Idempotency-Key": key } },
 *       body: { amount: 1250, currency: "USD", payment_method: "pm_card_visa" },
 *     }));
 */

import { discard, retryAfterSeconds } from "./problem.js";
import { sleep } from "./sleep.js";

export interface SendOptions {
  /** Give up retrying after this long (the last answer, or error, is returned/thrown). */
  budgetMs?: number;
  /** Waits between tries without a Retry-After: this, doubling, up to 5 s. */
  firstDelayMs?: number;
  signal?: AbortSignal;
}

/** A new key: 128 random bits as hex (the API takes up to 255 characters). Not
 * `crypto.randomUUID`: browsers offer it on https and localhost only. */
export function newIdempotencyKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Whether an answer means "the same request may succeed later": send it again, same key. */
export function isRetryable(response: Response): boolean {
  if (response.status === 502 || response.status === 503 || response.status === 504) return true;
  // 409 with Retry-After: the first request with this key is still running. A 409 without
  // it is an answer (a conflict, or "carried out but its answer was lost": look it up).
  // 429 with Retry-After: rate limited, or payments paused for a while.
  return (
    (response.status === 409 || response.status === 429) && response.headers.has("Retry-After")
  );
}

/** One intent of the user, carrying its key across every try. */
export class Intent {
  constructor(readonly key: string = newIdempotencyKey()) {}

  /** Run `call` with this intent's key; repeat it (same key) while the answer says to
   * retry, or the network failed, within the budget. Returns the last answer. */
  async send<R extends { response: Response }>(
    call: (key: string) => Promise<R>,
    options: SendOptions = {},
  ): Promise<R> {
    const { budgetMs = 30_000, firstDelayMs = 250, signal } = options;
    const deadline = Date.now() + budgetMs;
    let delay = firstDelayMs;
    for (;;) {
      let result: R | undefined;
      let failure: unknown;
      try {
        result = await call(this.key);
      } catch (error) {
        // fetch rejects with a TypeError when the network failed; anything else is ours.
        if (!(error instanceof TypeError) || signal?.aborted) throw error;
        failure = error;
      }
      if (result && !isRetryable(result.response)) return result;
      const hinted = result ? retryAfterSeconds(result.response) : null;
      const wait = hinted !== null ? hinted * 1000 : delay;
      if (Date.now() + wait > deadline) {
        if (result) return result;
        throw failure;
      }
      if (result) await discard(result.response);
      await sleep(wait, signal);
      delay = Math.min(delay * 2, 5_000);
    }
  }
}

/** `new Intent().send(call, options)`: one action, one key, retried as needed. */
export function idempotent<R extends { response: Response }>(
  call: (key: string) => Promise<R>,
  options?: SendOptions,
): Promise<R> {
  return new Intent().send(call, options);
}
