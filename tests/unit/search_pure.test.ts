// Pure parts of search: the query cache, table names, request validation,
// JWT verification and the caller's role.
import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { createQueryCache } from "../../supabase/functions/_shared/search/cache.ts";
import { callerOf } from "../../supabase/functions/_shared/search/caller.ts";
import { parseTableName } from "../../supabase/functions/_shared/search/target.ts";
import {
  fieldWithNul,
  parseSearchRequest,
  SearchError,
  searchRequestSchema,
} from "../../supabase/functions/_shared/search/types.ts";
import {
  createJwtVerifier,
  JwtError,
  signJwt,
  verifyJwt,
} from "../../supabase/functions/_shared/jwt.ts";

const SECRET = "unit-test-jwt-secret-of-at-least-32-characters";
const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

Deno.test("query cache: a repeated text is a hit; keys include model and dimensions; LRU bound", async () => {
  const cache = createQueryCache(2);
  let calls = 0;
  const embed = () => Promise.resolve([++calls, 0, 0]);
  assert.equal((await cache.vector("m", 3, "a", embed)).hit, false);
  const again = await cache.vector("m", 3, "a", embed);
  assert.equal(again.hit, true);
  assert.deepEqual(Array.from(again.vector), [1, 0, 0]);
  assert.equal((await cache.vector("other", 3, "a", embed)).hit, false, "another model");
  assert.equal((await cache.vector("m", 4, "a", embed)).hit, false, "other dimensions");
  assert.equal(calls, 3);
  // Size 2: ("m",3,"a") was used least recently and has left.
  assert.equal((await cache.vector("m", 3, "a", embed)).hit, false);
  assert.deepEqual(cache.stats(), { hits: 1, misses: 4, size: 2 });
});

Deno.test("query cache: identical queries in flight share one call; a failure is not kept", async () => {
  const cache = createQueryCache(10);
  let calls = 0;
  const slow = () => {
    calls++;
    return new Promise<number[]>((r) => setTimeout(() => r([1, 2]), 10));
  };
  const [a, b] = await Promise.all([
    cache.vector("m", 2, "q", slow),
    cache.vector("m", 2, "q", slow),
  ]);
  assert.equal(calls, 1);
  // One miss and one hit; which of the two resumes first from hashing its key is not fixed.
  assert.deepEqual([a.hit, b.hit].sort(), [false, true]);
  const failing = () => Promise.reject(new Error("provider down"));
  await assert.rejects(cache.vector("m", 2, "x", failing), /provider down/);
  assert.equal((await cache.vector("m", 2, "x", () => Promise.resolve([3, 4]))).hit, false);
});

Deno.test("parseTableName: name or schema.name; anything else is refused", () => {
  assert.deepEqual(parseTableName("notes"), { schema: "public", name: "notes" });
  assert.deepEqual(parseTableName("app.notes"), { schema: "app", name: "notes" });
  assert.deepEqual(parseTableName('notes"; drop table x'), {
    schema: "public",
    name: 'notes"; drop table x',
  }, "kept as a value to compare, never as SQL");
  for (const bad of ["a.b.c", ".notes", "notes.", "x".repeat(64)]) {
    assert.throws(() => parseTableName(bad), (e) => e instanceof SearchError && e.status === 400);
  }
});

Deno.test("search request: defaults, caps and unknown fields", () => {
  const ok = searchRequestSchema.parse({ table: "notes", query: "  hello " });
  assert.deepEqual(ok, {
    table: "notes",
    query: "hello",
    match_count: 10,
    match_threshold: 0,
    mode: "vector",
    filter: {},
  });
  const refused = [
    { table: "notes", query: "q", match_count: 101 },
    { table: "notes", query: "q".repeat(2001) },
    { table: "notes", query: "q", mode: "fuzzy" },
    { table: "notes", query: "q", filter: { a: [1] } },
    {
      table: "notes",
      query: "q",
      filter: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`c${i}`, i])),
    },
    { table: "notes", query: "q", sql: "drop table notes" },
  ];
  for (const input of refused) assert.equal(searchRequestSchema.safeParse(input).success, false);
});

Deno.test("search request: a NUL anywhere is named by its field, at any depth", () => {
  const cases: [unknown, string | null][] = [
    [{ table: "notes", query: "q" }, null],
    [{ table: "notes", query: "q\u0000" }, "query"],
    [{ table: "notes", query: "q", filter: { a: 1, b: "x\u0000" } }, "filter.b"],
    [{ table: "notes", query: "q", filter: { "a\u0000": 1 } }, "a key of filter"],
    [{ "\u0000table": "notes" }, "a field name"],
    [{ table: "a\u0000", query: "b\u0000" }, "table"],
    ["\u0000", "body"],
    [[["x", ["\u0000"]]], "0.1.0"],
    [{ a: { b: { c: { d: { e: "\u0000" } } } } }, "a.b.c.d..."],
    [JSON.parse("[".repeat(50_000) + '"\\u0000"' + "]".repeat(50_000)), "0.0.0.0..."],
    [null, null],
    [42, null],
  ];
  for (const [json, field] of cases) assert.equal(fieldWithNul(json), field);
  assert.throws(
    () => parseSearchRequest({ table: "notes", query: "q", filter: { title: "\u0000" } }),
    (e) =>
      e instanceof SearchError && e.status === 400 &&
      /filter\.title holds a NUL character/.test(e.message),
  );
  assert.equal(parseSearchRequest({ table: "notes", query: " q " }).query, "q");
});

Deno.test("verifyJwt: HS256 with the secret and an unexpired exp only", async () => {
  const good = await signJwt({ role: "anon", exp: inAnHour() }, SECRET);
  assert.equal((await verifyJwt(good, SECRET)).role, "anon");
  const encode = (o: unknown) =>
    btoa(JSON.stringify(o)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
  const bad: Record<string, string> = {
    expired: await signJwt({ role: "anon", exp: 1_000_000 }, SECRET),
    "no exp": await signJwt({ role: "anon" }, SECRET),
    "other secret": await signJwt({ role: "anon", exp: inAnHour() }, `${SECRET}-other`),
    "alg none": `${encode({ alg: "none" })}.${encode({ role: "service_role", exp: inAnHour() })}.`,
    HS512: await new SignJWT({ role: "anon", exp: inAnHour() }).setProtectedHeader({ alg: "HS512" })
      .sign(new TextEncoder().encode(SECRET)),
    "payload swapped": `${good.split(".")[0]}.${
      encode({ role: "service_role", exp: inAnHour() })
    }.${good.split(".")[2]}`,
    empty: "",
  };
  for (const [what, token] of Object.entries(bad)) {
    await assert.rejects(verifyJwt(token, SECRET), JwtError, what);
  }
});

Deno.test("callerOf: the three API roles; 401 for bad tokens, 403 for other roles", async () => {
  const token = (role: string) => signJwt({ role, sub: "u1", exp: inAnHour() }, SECRET);
  for (const role of ["anon", "authenticated", "service_role"]) {
    const caller = await callerOf(
      `Bearer ${await token(role)}`,
      createJwtVerifier({ secret: SECRET }),
    );
    assert.equal(caller.role, role);
    assert.equal(caller.claims.sub, "u1");
  }
  const status = async (header: string | null, secret: string | undefined = SECRET) => {
    try {
      await callerOf(header, createJwtVerifier({ secret }));
      return 200;
    } catch (err) {
      return (err as SearchError).status;
    }
  };
  assert.equal(await status(`Bearer ${await token("postgres")}`), 403);
  assert.equal(await status(`Bearer ${await signJwt({ exp: inAnHour() }, SECRET)}`), 403);
  assert.equal(await status(null), 401);
  assert.equal(await status("Basic abc"), 401);
  assert.equal(await status(`Bearer ${await token("anon")}`, "another-secret"), 401);
  // Without a secret the gateway's check is relied on: claims are read, not verified.
  assert.equal(await status(`Bearer ${await token("anon")}`, undefined), 200);
  assert.equal(await status("Bearer not-a-jwt", undefined), 401);
});
