/**
 * The client: openapi-fetch over the generated `paths` (every path, parameter and body
 * typed from the API's OpenAPI document), authenticated by the stored tokens, plus the
 * sign-in calls that manage those tokens.
 */

import createClient, { type Client } from "openapi-fetch";

import { createAuthFetch, memoryTokenStore, type TokenStore, type Tokens } from "./auth.js";
import { unwrap } from "./problem.js";
import type { paths } from "./schema.js";

export interface MaycoleClientOptions {
  /** Where the API is, e.g. `https://api.example.com` (no `/api/v1`: paths carry it). */
  baseUrl: string;
  /** Where tokens live; in memory unless given. */
  tokens?: TokenStore;
  /** Sent with every request, e.g. `{"X-API-Key": "mk_..."}` for a script. */
  headers?: Record<string, string>;
  /** The `fetch` to use (tests, other runtimes); the global one by default. */
  fetch?: typeof globalThis.fetch;
  /** Called when the sign-in is over (refresh refused): send the user to sign in. */
  onSignedOut?: () => void;
}

export interface MaycoleClient {
  /** The typed API: `api.GET("/api/v1/teams")`, `api.POST(path, { params, body })`, ... */
  readonly api: Client<paths>;
  readonly baseUrl: string;
  readonly tokens: TokenStore;
  /** A `fetch` with the same credentials (and refresh) as `api`, for what is not JSON. */
  readonly fetch: typeof globalThis.fetch;
  /** Sign in with a password; keeps the tokens. Throws `ProblemError` (401, 429, ...). */
  login(email: string, password: string): Promise<Tokens>;
  /** Exchange the refresh token for new tokens now (it rotates); null if signed out. */
  refresh(): Promise<Tokens | null>;
  /** End this sign-in on the server and forget the tokens. */
  logout(): Promise<void>;
}

export function createMaycoleClient(options: MaycoleClientOptions): MaycoleClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const tokens = options.tokens ?? memoryTokenStore();
  const baseFetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const auth = createAuthFetch({
    baseUrl,
    tokens,
    fetch: baseFetch,
    headers: options.headers,
    onSignedOut: options.onSignedOut,
  });
  // `headers` are added by auth.fetch, so `client.fetch` (streams, jobs) sends them too.
  const api = createClient<paths>({ baseUrl, fetch: (request: Request) => auth.fetch(request) });

  return {
    api,
    baseUrl,
    tokens,
    fetch: auth.fetch,
    async login(email, password) {
      const signedIn = unwrap(await api.POST("/api/v1/auth/login", { body: { email, password } }));
      tokens.set(signedIn);
      return signedIn;
    },
    refresh: auth.refresh,
    async logout() {
      if (!tokens.get()) return;
      try {
        const { response, error } = await api.POST("/api/v1/auth/logout");
        // A 401: the session had already ended (revoked elsewhere); over either way.
        if (!response.ok && response.status !== 401) unwrap({ response, error });
      } finally {
        tokens.set(null);
      }
    },
  };
}
