// The caller's token as hosted Supabase issues it: ES256 signed with the
// project's signing key and checked against its JSON Web Key Set (served here
// on loopback), HS256 with the JWT secret, nothing else; a key set that cannot
// be fetched is a 503, never unverified claims.
import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { createSearchHandler } from "../../supabase/functions/search/handler.ts";
import { callerOf } from "../../supabase/functions/_shared/search/caller.ts";
import { SearchError } from "../../supabase/functions/_shared/search/types.ts";
import {
  createJwtVerifier,
  JwksUnavailableError,
  JwtError,
  type JwtVerifier,
  signJwt,
} from "../../supabase/functions/_shared/jwt.ts";
import { es256Key, startJwksServer } from "../_support/jwks.ts";
import { waitFor } from "../../devtools/wait.ts";

const SECRET = "unit-test-jwt-secret-of-at-least-32-characters";
const USER = "00000000-0000-4000-8000-00000000a11c";
const now = () => Math.floor(Date.now() / 1000);
const userClaims = (exp = now() + 3600) => ({ sub: USER, role: "authenticated", exp });
const encode = (o: unknown) =>
  btoa(JSON.stringify(o)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");

/** The status callerOf answers `token` with: 200 when it passes. */
async function status(verifier: JwtVerifier, token: string): Promise<number> {
  try {
    await callerOf(`Bearer ${token}`, verifier);
    return 200;
  } catch (err) {
    if (err instanceof SearchError) return err.status;
    throw err;
  }
}

Deno.test("JWKS: a token signed with the project's signing key passes with its claims; the key set is cached", async () => {
  const jwks = await startJwksServer();
  try {
    const verifier = createJwtVerifier({ secret: SECRET, jwksUrl: new URL(jwks.jwksUrl) });
    const caller = await callerOf(`Bearer ${await jwks.sign(userClaims())}`, verifier);
    assert.equal(caller.role, "authenticated");
    assert.equal(caller.claims.sub, USER);
    // The legacy keys (HS256 with the secret) pass the same verifier.
    const anon = await callerOf(
      `Bearer ${await signJwt({ role: "anon", exp: now() + 60 }, SECRET)}`,
      verifier,
    );
    assert.equal(anon.role, "anon");
    await verifier.verify(await jwks.sign({ ...userClaims(), sub: "another-user" }));
    assert.equal(jwks.requests(), 1, "fetched once, then served from jose's cache");
  } finally {
    await jwks.close();
  }
});

Deno.test("JWKS: another key, expired, no exp, alg none, a wrong HS256 secret, other algs, non-JWTs get 401", async () => {
  const jwks = await startJwksServer();
  try {
    const verifier = createJwtVerifier({ secret: SECRET, jwksUrl: new URL(jwks.jwksUrl) });
    const good = await jwks.sign(userClaims());
    assert.equal(await status(verifier, good), 200);
    const sameKid = await es256Key("test-signing-key");
    const otherKid = await es256Key("not-published");
    const refused: Record<string, string> = {
      "another key, same kid": await sameKid.sign(userClaims()),
      "another key, unknown kid": await otherKid.sign(userClaims()),
      expired: await jwks.sign(userClaims(now() - 60)),
      "no exp": await jwks.sign({ sub: USER, role: "authenticated" }),
      "alg none": `${encode({ alg: "none", typ: "JWT" })}.${
        encode({ role: "service_role", exp: now() + 3600 })
      }.`,
      "ES256 header, no signature": `${
        encode({ alg: "ES256", typ: "JWT", kid: "test-signing-key" })
      }.${encode({ role: "service_role", exp: now() + 3600 })}.`,
      "payload swapped": `${good.split(".")[0]}.${
        encode({ ...userClaims(), role: "service_role" })
      }.${good.split(".")[2]}`,
      "HS256, wrong secret": await signJwt(userClaims(), `${SECRET}-other`),
      HS512: await new SignJWT(userClaims()).setProtectedHeader({ alg: "HS512" })
        .sign(new TextEncoder().encode(SECRET)),
      "a new API key is not a JWT": "sb_publishable_abcdefghijklmnopqrstuv",
      empty: "",
    };
    for (const [what, token] of Object.entries(refused)) {
      assert.equal(await status(verifier, token), 401, what);
    }
    // alg none and unknown algorithms are refused even where nothing is verified here.
    const none = createJwtVerifier({});
    assert.equal(await status(none, refused["alg none"]), 401);
    assert.equal(await status(none, refused.HS512), 401);
  } finally {
    await jwks.close();
  }
});

Deno.test("JWKS: an unreachable, failing or silent key set gives 503 (retry), never the claims", async () => {
  const jwks = await startJwksServer();
  const token = await jwks.sign(userClaims());
  // Failing (500): a fresh verifier, so nothing is cached yet.
  jwks.fail(true);
  const failing = createJwtVerifier({ jwksUrl: new URL(jwks.jwksUrl), jwksCooldownMs: 200 });
  await assert.rejects(failing.verify(token), JwksUnavailableError);
  try {
    await callerOf(`Bearer ${token}`, failing);
    assert.fail("a token checked against no key passed");
  } catch (err) {
    assert.ok(err instanceof SearchError);
    assert.equal(err.status, 503);
    assert.ok(err.headers["Retry-After"]);
  }
  // Back: the same verifier fetches again once its cool-down has passed (a
  // failure is not kept longer; tests/security/jwks_fetches.test.ts counts the fetches).
  jwks.fail(false);
  const claims = await waitFor(() => failing.verify(token).catch(() => null), {
    what: "the key set to be fetched again after the cool-down",
  });
  assert.equal(claims.sub, USER);
  // Unreachable: nothing listens there any more.
  await jwks.close();
  const gone = createJwtVerifier({ jwksUrl: new URL(jwks.jwksUrl) });
  assert.equal(await status(gone, token), 503);
  // Silent: the request outlasts the timeout.
  let release = () => {};
  const held = new Promise<void>((resolve) => release = resolve);
  const silent = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async () => {
    await held;
    return Response.json({ keys: [] });
  });
  try {
    const slow = createJwtVerifier({
      jwksUrl: new URL(`http://127.0.0.1:${silent.addr.port}/auth/v1/.well-known/jwks.json`),
      jwksTimeoutMs: 100,
    });
    assert.equal(await status(slow, token), 503);
  } finally {
    release();
    await silent.shutdown();
  }
});

Deno.test("JWKS: a token of an algorithm without a key here is read on the gateway's word", async () => {
  const jwks = await startJwksServer();
  try {
    const hs256 = await signJwt({ role: "anon", exp: now() + 60 }, `${SECRET}-gateway-only`);
    const es256 = await jwks.sign(userClaims());
    // Only the signing keys: HS256 (the hosted legacy keys) is left to the gateway.
    const jwksOnly = createJwtVerifier({ jwksUrl: new URL(jwks.jwksUrl) });
    assert.equal(await status(jwksOnly, hs256), 200);
    // Only the secret: ES256 is left to the gateway.
    const secretOnly = createJwtVerifier({ secret: SECRET });
    assert.equal(await status(secretOnly, es256), 200);
    assert.equal(await status(secretOnly, hs256), 401, "HS256 is verified where the secret is");
    assert.equal(jwks.requests(), 0, "no key set was fetched");
    await assert.rejects(createJwtVerifier({}).verify("not-a-jwt"), JwtError);
    // The gateway's own verifier reads nothing on trust.
    const gateway = createJwtVerifier({ secret: SECRET, keyless: "refuse" });
    await assert.rejects(gateway.verify(es256), JwtError);
  } finally {
    await jwks.close();
  }
});

Deno.test("search handler: ES256 checked against SUPABASE_JWKS_URL or SUPABASE_URL's key set; 401 and 503 before any query", async () => {
  const jwks = await startJwksServer();
  const handlerWith = (env: Record<string, string>) =>
    createSearchHandler({
      // Nothing listens here: a request that got past the JWT check would answer 503 "database".
      env: (name) => ({ SUPABASE_DB_URL: "postgres://nobody@127.0.0.1:9/none", ...env })[name],
      log: () => {},
    });
  const call = async (handler: ReturnType<typeof createSearchHandler>, token: string) => {
    const res = await handler.fetch(
      new Request("http://localhost/functions/v1/search", {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ table: "notes", query: "q" }),
      }),
    );
    return { status: res.status, error: ((await res.json()) as { error: string }).error };
  };
  const byProjectUrl = handlerWith({ SUPABASE_URL: jwks.projectUrl, SUPABASE_JWT_SECRET: SECRET });
  const byJwksUrl = handlerWith({
    SUPABASE_URL: "http://127.0.0.1:9",
    SUPABASE_JWKS_URL: jwks.jwksUrl,
  });
  try {
    const stranger = await (await es256Key("test-signing-key")).sign(userClaims());
    for (const handler of [byProjectUrl, byJwksUrl]) {
      const good = await call(handler, await jwks.sign(userClaims()));
      assert.equal(good.status, 503);
      assert.match(good.error, /database/, "the token passed: the search reached the database");
      const bad = await call(handler, stranger);
      assert.equal(bad.status, 401);
      assert.match(bad.error, /invalid JWT/);
    }
    jwks.fail(true);
    const cold = handlerWith({ SUPABASE_JWKS_URL: jwks.jwksUrl });
    try {
      const down = await call(cold, await jwks.sign(userClaims()));
      assert.equal(down.status, 503);
      assert.match(down.error, /signing keys/);
    } finally {
      await cold.close(0);
    }
  } finally {
    await byProjectUrl.close(0);
    await byJwksUrl.close(0);
    await jwks.close();
  }
});
