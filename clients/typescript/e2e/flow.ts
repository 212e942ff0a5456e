/**
 * End to end through the typed client against a live stack: register, verify the email,
 * log in, pay with an idempotency key (and see the replay), wait for the payment's job by
 * the event stream, export and download (by the job's Location, and as an API key's
 * script), upload and download, refresh (an expired access token, three calls sharing one
 * refresh, then on demand), problem+json errors, log out.
 *
 * Environment: MAYCOLE_API_URL (the API's base URL) and MAYCOLE_MAIL_DIR (a folder the
 * stack's mail lands in as .eml files). The server's access tokens must live one minute
 * (ACCESS_TOKEN_MINUTES=1): the run waits for its token to expire. tests/clients/ runs
 * it under pytest; by hand: `npm --prefix clients/typescript run e2e`.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

import {
  createMaycoleClient,
  Intent,
  idempotent,
  isExpired,
  postUploadForm,
  ProblemError,
  streamEvents,
  tokenExpiry,
  unwrap,
  waitForJob,
  type Job,
  type MaycoleClient,
  type StreamEvent,
} from "../src/index.js";
import { sleep } from "../src/sleep.js";
import { linkToken } from "./mail.js";

const baseUrl = required("MAYCOLE_API_URL");
const mailDir = required("MAYCOLE_MAIL_DIR");

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
}

async function step<T>(name: string, run: () => Promise<T>): Promise<T> {
  const began = Date.now();
  const result = await run();
  console.log(`ok - ${name} (${Date.now() - began} ms)`);
  return result;
}

async function expectProblem(status: number, run: () => Promise<unknown>): Promise<ProblemError> {
  try {
    await run();
  } catch (error) {
    if (error instanceof ProblemError && error.status === status) return error;
    throw error;
  }
  throw new Error(`expected a ${status} problem`);
}

/** The event stream, open (its `ready` received), read on demand until a wanted event. */
async function openStream(client: MaycoleClient, timeoutMs = 60_000) {
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new Error(`no awaited event in ${timeoutMs} ms`)),
    timeoutMs,
  );
  const events = streamEvents(client, { signal: controller.signal });
  const first = await events.next();
  assert.ok(!first.done && first.value.event === "ready", "a stream starts with ready");
  return {
    async until(wanted: (event: StreamEvent) => boolean): Promise<StreamEvent[]> {
      const seen: StreamEvent[] = [];
      for (let next = await events.next(); !next.done; next = await events.next()) {
        seen.push(next.value);
        if (wanted(next.value)) return seen;
      }
      throw new Error(`the stream ended; saw ${JSON.stringify(seen)}`);
    },
    close(): void {
      clearTimeout(timer);
      controller.abort();
      void events.return(undefined);
    },
  };
}

async function main(): Promise<void> {
  let signedOut = 0;
  const client = createMaycoleClient({ baseUrl, onSignedOut: () => (signedOut += 1) });
  const { api } = client;
  const email = `ts-client-${randomUUID()}@example.com`;
  const password = `Sturdy-${randomUUID()}`;

  await step("register", async () => {
    const accepted = unwrap(
      await api.POST("/api/v1/auth/register", { body: { email, password, name: "Ada Lovelace" } }),
    );
    assert.equal(accepted.status, "accepted");
  });

  await step("verify the email from the link mailed", async () => {
    const token = await linkToken(mailDir, email, "/verify-email");
    const { user } = unwrap(await api.POST("/api/v1/auth/verify-email", { body: { token } }));
    assert.equal(user.email_verified, true);
  });

  const signedIn = await step("log in", () => client.login(email, password));
  const me = unwrap(await api.GET("/api/v1/me"));
  assert.equal(me.user.email, email);
  const teams = unwrap(await api.GET("/api/v1/teams"));
  const team = teams.items.find((t) => t.is_personal);
  assert.ok(team, "registering made a personal team");
  const team_id = team.id;

  const problem = await step("problem+json errors as a typed value", () =>
    expectProblem(404, async () =>
      unwrap(
        await api.GET("/api/v1/jobs/{job_id}", { params: { path: { job_id: randomUUID() } } }),
      ),
    ),
  );
  assert.equal(problem.kind, "not-found");
  assert.ok(problem.problem.request_id, "a problem carries the request id");

  // Opened before paying, so the payment job's own events must come through it.
  const stream = await step("open the event stream", () => openStream(client));

  const payment = await step(
    "pay with an idempotency key, replayed for the same intent",
    async () => {
      // No `description`: it has a default, and the types must not demand it.
      const body = { amount: 1250, currency: "usd", payment_method: "pm_card_visa" };
      const pay = new Intent();
      const send = (key: string) =>
        api.POST("/api/v1/teams/{team_id}/payments", {
          params: { path: { team_id }, header: { "Idempotency-Key": key } },
          body,
        });
      const first = await pay.send(send);
      const accepted = unwrap(first);
      assert.equal(first.response.status, 202);
      assert.equal(accepted.payment.status, "pending");
      // The same intent again (a double click, a retry after a timeout): one payment.
      const again = await pay.send(send);
      assert.equal(again.response.headers.get("Idempotent-Replayed"), "true");
      assert.equal(unwrap(again).payment.id, accepted.payment.id);
      // The same key for something else is refused, not carried out.
      const misuse = await expectProblem(422, async () =>
        unwrap(
          await pay.send((key) =>
            api.POST("/api/v1/teams/{team_id}/payments", {
              params: { path: { team_id }, header: { "Idempotency-Key": key } },
              body: { ...body, amount: 9999 },
            }),
          ),
        ),
      );
      assert.ok(misuse.problem.errors?.["Idempotency-Key"]);
      return first;
    },
  );

  await step("wait for the payment's job by the event stream", async () => {
    const jobId = unwrap(payment).job.id;
    const events = await stream.until((e) => e.event === "job.finished" && e.data.job_id === jobId);
    const finished = events.at(-1);
    assert.ok(finished?.event === "job.finished");
    assert.equal(finished.data.status, "succeeded", JSON.stringify(events));
    assert.equal(finished.data.type, "payments.charge");
    stream.close();
    // The helper, on a stream of its own: the job finished before it opened, and the
    // `ready` it starts with makes it read the job instead of waiting for an event.
    const job: Job = await waitForJob(client, payment, { via: "stream", timeoutMs: 60_000 });
    assert.equal(job.status, "succeeded", JSON.stringify(job));
    const shown = unwrap(
      await api.GET("/api/v1/teams/{team_id}/payments/{payment_id}", {
        params: { path: { team_id, payment_id: unwrap(payment).payment.id } },
      }),
    );
    assert.equal(shown.payment.status, "succeeded");
  });

  await step("export the payments as CSV and download it (the job by its Location)", async () => {
    const started = await idempotent((key) =>
      api.POST("/api/v1/teams/{team_id}/exports", {
        params: { path: { team_id }, header: { "Idempotency-Key": key } },
        body: { resource: "payments", format: "csv" },
      }),
    );
    const { export: created } = unwrap(started);
    const job = await waitForJob(client, started, { via: "location", timeoutMs: 60_000 });
    assert.equal(job.status, "succeeded", JSON.stringify(job));
    const download = await api.GET("/api/v1/teams/{team_id}/exports/{export_id}/download", {
      params: { path: { team_id, export_id: created.id } },
      parseAs: "text",
    });
    const csv = unwrap(download);
    assert.match(download.response.headers.get("Content-Type") ?? "", /^text\/csv/);
    assert.ok(csv.includes(unwrap(payment).payment.id), csv);
  });

  await step("an API key's client waits by polling (streams are for signed-in users)", async () => {
    const created = unwrap(
      await api.POST("/api/v1/auth/api-keys", {
        body: { name: "e2e script", scopes: ["read", "write"] },
      }),
    );
    const answers: string[] = []; // "status path" of every answer the script got
    const script = createMaycoleClient({
      baseUrl,
      headers: { "X-API-Key": created.secret },
      fetch: async (input, init) => {
        const response = await fetch(input, init);
        answers.push(`${response.status} ${new URL(response.url).pathname}`);
        return response;
      },
    });
    const started = await idempotent((key) =>
      script.api.POST("/api/v1/teams/{team_id}/exports", {
        params: { path: { team_id }, header: { "Idempotency-Key": key } },
        body: { resource: "payments", format: "jsonl" },
      }),
    );
    unwrap(started);
    const job = await waitForJob(script, started, { timeoutMs: 60_000 });
    assert.equal(job.status, "succeeded", JSON.stringify(job));
    assert.ok(answers.includes("403 /api/v1/events/stream"), answers.join(", "));
    assert.ok(answers.includes(`200 /api/v1/jobs/${job.id}`), answers.join(", "));
  });

  await step("upload a file, wait for its check, download it", async () => {
    const bytes = new TextEncoder().encode(`hello from the typed client ${randomUUID()}\n`);
    const created = unwrap(
      await api.POST("/api/v1/teams/{team_id}/uploads", {
        params: { path: { team_id } },
        body: { filename: "hello.txt", content_type: "text/plain", size: bytes.byteLength },
      }),
    );
    await postUploadForm(created.upload, new Blob([bytes], { type: "text/plain" }), "hello.txt");
    const file_id = created.file.id;
    const completed = await api.POST("/api/v1/teams/{team_id}/uploads/{file_id}/complete", {
      params: { path: { team_id, file_id } },
    });
    unwrap(completed);
    const job = await waitForJob(client, completed, { via: "stream", timeoutMs: 60_000 });
    assert.equal(job.status, "succeeded", JSON.stringify(job));
    const { file } = unwrap(
      await api.GET("/api/v1/teams/{team_id}/uploads/{file_id}", {
        params: { path: { team_id, file_id } },
      }),
    );
    assert.equal(file.state, "ready", JSON.stringify(file));
    const downloaded = unwrap(
      await api.GET("/api/v1/teams/{team_id}/uploads/{file_id}/download", {
        params: { path: { team_id, file_id } },
        parseAs: "arrayBuffer",
      }),
    );
    assert.deepEqual(new Uint8Array(downloaded), bytes);
  });

  await step(
    "refresh: an expired access token is refreshed once and the call repeated",
    async () => {
      const before = client.tokens.get();
      assert.ok(before);
      const exp = tokenExpiry(signedIn.access_token);
      assert.ok(exp !== null, "the access token carries its expiry");
      const wait = exp * 1000 - Date.now() + 1_000;
      assert.ok(
        wait < 90_000,
        "start the server with ACCESS_TOKEN_MINUTES=1 (the run waits for expiry)",
      );
      await sleep(Math.max(0, wait));
      assert.ok(isExpired(before.access_token));
      // The server refuses the expired token itself...
      const raw = await fetch(`${baseUrl}/api/v1/me`, {
        headers: { Authorization: `Bearer ${before.access_token}` },
      });
      assert.equal(raw.status, 401);
      // ...and the client gets through with it, rotating both tokens on the way. Three
      // calls at once share one refresh: a second would present the spent refresh token,
      // which ends the whole sign-in (and the calls after it would fail).
      const [mine, myTeams, myJobs] = await Promise.all([
        api.GET("/api/v1/me"),
        api.GET("/api/v1/teams"),
        api.GET("/api/v1/jobs"),
      ]);
      assert.equal(unwrap(mine).user.email, email);
      assert.equal(unwrap(myTeams).items.length, 1);
      assert.ok(unwrap(myJobs).items.length >= 3, "the payment, export and upload jobs");
      const after = client.tokens.get();
      assert.ok(after);
      assert.notEqual(after.access_token, before.access_token);
      assert.notEqual(after.refresh_token, before.refresh_token);
      // And on demand.
      const rotated = await client.refresh();
      assert.ok(rotated);
      assert.notEqual(rotated.refresh_token, after.refresh_token);
      assert.equal(unwrap(await api.GET("/api/v1/me")).user.email, email);
    },
  );

  await step("log out", async () => {
    const last = client.tokens.get();
    assert.ok(last);
    await client.logout();
    assert.equal(client.tokens.get(), null);
    const raw = await fetch(`${baseUrl}/api/v1/me`, {
      headers: { Authorization: `Bearer ${last.access_token}` },
    });
    assert.equal(raw.status, 401, "the session's access token no longer works");
    const refused = await expectProblem(401, async () => unwrap(await api.GET("/api/v1/me")));
    assert.equal(refused.kind, "unauthorized");
    assert.equal(signedOut, 0, "logging out is not a lost session");
  });
}

main().then(
  () => console.log("e2e: every step passed"),
  (error: unknown) => {
    console.error(error);
    process.exit(1); // now: an open stream or timer must not keep a failed run waiting
  },
);
