/**
 * The inbox of the end-to-end run: a folder of `.eml` files (what `make run`'s local mail
 * sink writes under var/mail/, and what the pytest driver's SMTP server saves), read as a
 * user reads mail, to follow the link the API emailed.
 */

import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import PostalMime from "postal-mime";

import { sleep } from "../src/sleep.js";

async function messagesTo(dir: string, address: string): Promise<string[]> {
  const texts: string[] = [];
  const names = (await readdir(dir)).filter((name) => name.endsWith(".eml")).sort();
  for (const name of names) {
    const email = await PostalMime.parse(await readFile(join(dir, name)));
    const recipients = (email.to ?? []).flatMap((a) => (a.group ? a.group : [a]));
    if (recipients.some((r) => r.address.toLowerCase() === address.toLowerCase())) {
      texts.push(email.text ?? "");
    }
  }
  return texts;
}

/** The `token` of the newest link to `path` (e.g. "/verify-email") mailed to `address`. */
export async function linkToken(
  dir: string,
  address: string,
  path: string,
  timeoutMs = 30_000,
): Promise<string> {
  const pattern = new RegExp(`${path.replace(/[/.]/g, "\\$&")}\\?token=([A-Za-z0-9._-]+)`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const tokens = (await messagesTo(dir, address)).map((text) => pattern.exec(text)?.[1]);
    const newest = tokens.filter((t): t is string => t !== undefined).pop();
    if (newest) return newest;
    if (Date.now() > deadline) throw new Error(`no ${path} link mailed to ${address} in ${dir}`);
    await sleep(250);
  }
}
