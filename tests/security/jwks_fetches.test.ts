// Forged ES256/RS256 tokens against the search function: each is refused,
// and together they never make it fetch the project's key set (JWKS) more
// than once per cool-down, whether the key set answers, fails, or answered
// once and then went down. The fake key server counts every fetch.
import assert from "node:assert/strict";
import { createSearchHandler } from "../../supabase/functions/search/handler.ts";
import { callerOf } from "../../supabase/functions/_shared/search/caller.ts";
import { SearchError } from "../../supabase/functions/_shared/search/types.ts";
import { createJwtVerifier, type JwtVerifier } from "../../supabase/functions/_shared/jwt.ts";
import { waitFor } from "../../devtools/wait.ts";
import { es256Key, type JwksServer, startJwksServer } from "../_support/jwks.ts";

/** The verifier's default cool-down between two fetches of the key set. */
const COOLDOWN_MS = 30_000;
const KID = "test-signing-key";
const now = () => Math.floor(Date.now() / 1000);
const claims = () => ({ sub: "u-1", role: "authenticated", exp: now() + 3600 });
const base64url = (bytes: Uint8Array) =>
  btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
const encode = (o: unknown) => base64url(new TextEncoder().encode(JSON.stringify(o)));
const junk = (bytes: number) => base64url(crypto.getRandomValues(new Uint8Array(bytes)));

/** Tokens no published key signed: junk signatures, other keys, unknown kids, RS256 on an ES256 set. */
async function forgedTokens(jwks: JwksServer): Promise<Record<string, string>> {
  const [header, payload] = (await jwks.sign(claims())).split(".");
  const forged = (h: Record<string, unknown>, sigBytes: number) =>
    `${encode({ typ: "JWT", ...h })}.${encode({ ...claims(), role: "service_role" })}.${
      junk(sigBytes)
    }`;
  return {
    "a genuine header and payload, a junk signature": `${header}.${payload}.${junk(64)}`,
    "ES256, the published kid, a junk signature": forged({ alg: "ES256", kid: KID }, 64),
    "ES256, an unknown kid": forged({ alg: "ES256", kid: "rotated-in-maybe" }, 64),
    "ES256, no kid": forged({ alg: "ES256" }, 64),
    "RS256, the published kid": forged({ alg: "RS256", kid: KID }, 256),
    "RS256, no kid": forged({ alg: "RS256" }, 256),
    "signed by another key under the published kid": await (await es256Key(KID)).sign(claims()),
    "signed by another key, its own kid": await (await es256Key("attacker")).sign(claims()),
  };
}

/** Most fetches a verifier may make in `elapsedMs`: the first, then one per cool-down. */
const allowedFetches = (elapsedMs: number, cooldownMs = COOLDOWN_MS) =>
  1 + Math.floor(elapsedMs / cooldownMs);

function searchHandler(jwksUrl: string) {
  return createSearchHandler({
    // Nothing listens here: a token that passed would answer 503 "database unreachable".
    env: (name) =>
      ({ SUPABASE_DB_URL: "postgres://nobody@127.0.0.1:9/none", SUPABASE_JWKS_URL: jwksUrl })[
        name
      ],
    log: () => {},
  });
}

async function search(handler: ReturnType<typeof createSearchHandler>, token: string) {
  const res = await handler.fetch(
    new Request("http://localhost/functions/v1/search", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ table: "notes", query: "q" }),
    }),
  );
  const { error } = await res.json() as { error: string };
  return { status: res.status, error, retryAfter: res.headers.get("retry-after") };
}

/** `rounds` of every forged token: half one after another, half all at once. */
async function flood(
  handler: ReturnType<typeof createSearchHandler>,
  tokens: Record<string, string>,
  rounds: number,
) {
  const answers: { what: string; status: number; error: string; retryAfter: string | null }[] = [];
  for (let round = 0; round < rounds; round++) {
    const entries = Object.entries(tokens);
    if (round % 2 === 0) {
      for (const [what, token] of entries) answers.push({ what, ...await search(handler, token) });
    } else {
      answers.push(
        ...await Promise.all(
          entries.map(async ([what, token]) => ({ what, ...await search(handler, token) })),
        ),
      );
    }
  }
  return answers;
}

Deno.test("forged ES256/RS256 tokens get 401 and no fetch of a key set already held", async () => {
  const jwks = await startJwksServer();
  const handler = searchHandler(jwks.jwksUrl);
  try {
    const started = performance.now();
    // Premise: a genuine token passes the check (the search then reaches the database).
    const genuine = await search(handler, await jwks.sign(claims()));
    assert.equal(genuine.status, 503);
    assert.match(genuine.error, /database/);
    assert.equal(jwks.requests(), 1, "the key set was fetched for the genuine token");
    const answers = await flood(handler, await forgedTokens(jwks), 6);
    for (const a of answers) {
      assert.equal(a.status, 401, `${a.what}: ${a.error}`);
      assert.match(a.error, /invalid JWT/, a.what);
    }
    assert.ok(
      jwks.requests() <= allowedFetches(performance.now() - started),
      `${answers.length} forged tokens made ${jwks.requests()} fetches`,
    );
  } finally {
    await handler.close(0);
    await jwks.close();
  }
});

Deno.test("a key set that cannot be fetched is asked once per cool-down, however many tokens come", async () => {
  const jwks = await startJwksServer();
  jwks.fail(true);
  const handler = searchHandler(jwks.jwksUrl);
  try {
    const started = performance.now();
    const answers = await flood(handler, await forgedTokens(jwks), 6);
    assert.ok(answers.length >= 48);
    for (const a of answers) {
      // No key was ever fetched: nothing here can tell a forged token from a genuine one.
      assert.equal(a.status, 503, `${a.what}: ${a.error}`);
      assert.match(a.error, /signing keys/, a.what);
      assert.ok(Number(a.retryAfter) >= 1, `${a.what}: Retry-After ${a.retryAfter}`);
    }
    const genuine = await search(handler, await jwks.sign(claims()));
    assert.equal(genuine.status, 503, "a genuine token is not admitted without its key");
    assert.match(genuine.error, /signing keys/);
    assert.ok(jwks.requests() >= 1, "the key set was asked");
    assert.ok(
      jwks.requests() <= allowedFetches(performance.now() - started),
      `${answers.length + 1} tokens made ${jwks.requests()} fetches`,
    );
  } finally {
    await handler.close(0);
    await jwks.close();
  }
});

Deno.test("through a key set outage, the keys last fetched still refuse forged tokens (401) and admit none", async () => {
  const jwks = await startJwksServer();
  // Keys older than 50 ms are fetched again before they admit a token, at most once per 30 s.
  const verifier = createJwtVerifier({ jwksUrl: new URL(jwks.jwksUrl), jwksMaxAgeMs: 50 });
  const status = async (v: JwtVerifier, token: string) => {
    try {
      await callerOf(`Bearer ${token}`, v);
      return 200;
    } catch (err) {
      if (err instanceof SearchError) return err.status;
      throw err;
    }
  };
  try {
    const started = performance.now();
    const genuine = await jwks.sign(claims());
    assert.equal(await status(verifier, genuine), 200);
    assert.equal(jwks.requests(), 1);
    jwks.fail(true);
    // Once the keys are too old to admit a token and cannot be fetched again, the genuine token waits.
    await waitFor(async () => await status(verifier, genuine) === 503, {
      what: "the genuine token to need a fetch that fails",
    });
    const fetchesAtOutage = jwks.requests();
    assert.equal(fetchesAtOutage, 2, "one failed fetch so far");
    for (let round = 0; round < 5; round++) {
      for (const [what, token] of Object.entries(await forgedTokens(jwks))) {
        assert.equal(await status(verifier, token), 401, what);
      }
    }
    assert.equal(await status(verifier, genuine), 503, "the old keys admit nothing");
    assert.ok(
      jwks.requests() <= 1 + allowedFetches(performance.now() - started),
      `forged tokens during the outage made ${jwks.requests() - fetchesAtOutage} fetches`,
    );
  } finally {
    await jwks.close();
  }
});
