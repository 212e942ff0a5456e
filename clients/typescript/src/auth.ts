/**
 * Signing in and staying signed in: where the tokens live, and a `fetch` that sends the
 * access token and, when the server refuses an access token that has expired, refreshes
 * it once (the server rotates the refresh token on every refresh) and repeats the request.
 *
 * A refresh token is single use: presenting a spent one ends the whole sign-in. So at
 * most one refresh is in flight per client, and every request waiting on it gets its
 * result instead of refreshing again.
 */

import { discard } from "./problem.js";
import type { paths } from "./schema.js";

/** The tokens of a sign-in (the answer of `POST /auth/login` and `POST /auth/refresh`). */
export type Tokens =
  paths["/api/v1/auth/login"]["post"]["responses"][200]["content"]["application/json"];

/** Where a client keeps its tokens: memory by default; a frontend may persist them. */
export interface TokenStore {
  get(): Tokens | null;
  set(tokens: Tokens | null): void;
}

/** Tokens kept in memory only (lost on reload: a frontend may pass its own store). */
export function memoryTokenStore(initial: Tokens | null = null): TokenStore {
  let tokens = initial;
  return {
    get: () => tokens,
    set: (next) => {
      tokens = next;
    },
  };
}

/** A JWT's `exp` (seconds since the epoch), read without verifying: the server verifies. */
export function tokenExpiry(jwt: string): number | null {
  const payload = jwt.split(".")[1];
  if (!payload) return null;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const claims: unknown = JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "=")));
    const exp = (claims as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** Whether the access token has expired (or will within `skewSeconds`). */
export function isExpired(jwt: string, skewSeconds = 0, now: number = Date.now()): boolean {
  const exp = tokenExpiry(jwt);
  return exp !== null && exp - skewSeconds <= now / 1000;
}

export interface AuthFetchOptions {
  baseUrl: string;
  tokens: TokenStore;
  fetch: typeof globalThis.fetch;
  /** Headers every request gets unless it sets them itself (e.g. `X-API-Key`). */
  headers?: Record<string, string> | undefined;
  /** Called when the sign-in is over (the refresh token was refused): show a sign-in page. */
  onSignedOut?: (() => void) | undefined;
}

/** A `fetch` that authenticates with the stored access token and refreshes it once on a
 * 401 for an expired one; also the `refresh` it uses. */
export function createAuthFetch(options: AuthFetchOptions): {
  fetch: typeof globalThis.fetch;
  refresh: () => Promise<Tokens | null>;
} {
  const { baseUrl, tokens, fetch: baseFetch, onSignedOut, headers: defaults = {} } = options;
  let refreshing: Promise<Tokens | null> | null = null;

  async function refreshNow(): Promise<Tokens | null> {
    const current = tokens.get();
    if (!current) return null;
    const response = await baseFetch(`${baseUrl}/api/v1/auth/refresh`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ refresh_token: current.refresh_token }),
    });
    if (response.ok) {
      const next = (await response.json()) as Tokens;
      tokens.set(next);
      return next;
    }
    if (response.status === 401) {
      // Spent, revoked or expired: this sign-in is over.
      tokens.set(null);
      onSignedOut?.();
      return null;
    }
    // 429, 503, ...: not an answer about the session; keep the tokens, fail this request.
    await discard(response);
    return null;
  }

  /** One refresh at a time; concurrent callers share its outcome. */
  function refresh(): Promise<Tokens | null> {
    refreshing ??= refreshNow().finally(() => {
      refreshing = null;
    });
    return refreshing;
  }

  function withHeaders(request: Request, extra: Record<string, string>, replace: boolean): Request {
    const missing = Object.entries(extra).filter(([n]) => replace || !request.headers.has(n));
    if (missing.length === 0) return request;
    const headers = new Headers(request.headers);
    for (const [name, value] of missing) headers.set(name, value);
    return new Request(request, { headers });
  }

  function authorised(request: Request, accessToken: string): Request {
    return withHeaders(request, { Authorization: `Bearer ${accessToken}` }, true);
  }

  const authFetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = withHeaders(new Request(input, init), defaults, false);
    const sent = tokens.get();
    // The caller's own credentials (an API key, a stream token) win over the sign-in.
    if (!sent || request.headers.has("Authorization") || request.headers.has("X-API-Key")) {
      return baseFetch(request);
    }
    const retry = request.clone(); // its body, for the one retry
    const response = await baseFetch(authorised(request, sent.access_token));
    if (response.status !== 401) return response;

    const current = tokens.get();
    let next: Tokens | null = null;
    if (current && current.access_token !== sent.access_token) {
      next = current; // someone refreshed while this request was out
    } else if (isExpired(sent.access_token)) {
      next = await refresh();
    }
    if (!next) return response; // revoked, not expired, or the refresh failed: the 401 stands
    await discard(response);
    return baseFetch(authorised(retry, next.access_token));
  };

  return { fetch: authFetch, refresh };
}
