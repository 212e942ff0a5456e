/**
 * Files: the upload form the API hands out (`POST .../uploads`) is posted like a browser
 * form posts it, straight to storage (S3's presigned POST, or the app's own link with
 * local storage): its fields first, the file last, and no API credentials (the form's
 * signed fields are the authorisation).
 *
 * Downloads (`GET .../download`) answer with a redirect to a short-lived link, which
 * `fetch` follows: call them through `client.api` with `parseAs: "blob"` (or "text").
 */

import { discard, ProblemError, readProblem } from "./problem.js";
import type { UploadForm } from "./types.js";

/** Post `file` to the upload form; resolves once storage has it (then `.../complete`). */
export async function postUploadForm(
  form: UploadForm,
  file: Blob,
  filename: string,
  fetchImpl: typeof globalThis.fetch = (input, init) => globalThis.fetch(input, init),
): Promise<void> {
  const body = new FormData();
  for (const [name, value] of Object.entries(form.fields)) body.append(name, value);
  body.append("file", file, filename);
  const response = await fetchImpl(form.url, { method: form.method ?? "POST", body });
  if (!response.ok) throw new ProblemError(await readProblem(response), response);
  await discard(response);
}
