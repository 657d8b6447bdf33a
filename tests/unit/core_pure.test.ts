// The core's pure helpers, with tables of cases: primary-key checks, float16
// vector text, and database error classification.
import assert from "node:assert/strict";
import {
  errorCode,
  isConnectionError,
  isRetryableNow,
  PIPELINE_SQLSTATES,
} from "../../supabase/functions/_shared/db_errors.ts";
import { EXACTLY_CHECKED_KEY_TYPES, idFitsKeyType } from "../../supabase/functions/_shared/keys.ts";
import {
  float16TextTable,
  vectorList,
  vectorLiteral,
} from "../../supabase/functions/_shared/vectors.ts";

Deno.test("idFitsKeyType accepts exactly the values of each key type", () => {
  const cases: [string, string, boolean][] = [
    ["42", "bigint", true],
    ["-9223372036854775808", "bigint", true],
    ["9223372036854775807", "bigint", true],
    ["9223372036854775808", "bigint", false],
    ["1.5", "bigint", false],
    ["1e3", "bigint", false],
    ["", "bigint", false],
    ["2147483647", "integer", true],
    ["2147483648", "integer", false],
    ["-32768", "smallint", true],
    ["32768", "smallint", false],
    ["0x10", "integer", false],
    [" 1", "integer", false],
    ["8c6f0e1a-2b3c-4d5e-8f90-a1b2c3d4e5f6", "uuid", true],
    ["8C6F0E1A2B3C4D5E8F90A1B2C3D4E5F6", "uuid", true],
    ["8c6f0e1a-2b3c-4d5e-8f90", "uuid", false],
    ["not-a-uuid", "uuid", false],
    ["any text at all", "text", true],
    ["x".repeat(1000), "text", true],
    ["x".repeat(1001), "text", false],
    ["nul\u0000inside", "text", false],
  ];
  for (const [id, type, fits] of cases) {
    assert.equal(idFitsKeyType(id, type), fits, `${JSON.stringify(id.slice(0, 40))} as ${type}`);
  }
  // Types it cannot check exactly (numeric, date, ...) go to util._invalid_keys.
  assert.equal(EXACTLY_CHECKED_KEY_TYPES.has("numeric"), false);
  assert.equal(EXACTLY_CHECKED_KEY_TYPES.has("bigint"), true);
});

Deno.test("float16 text: every finite value's text reads back as the same float16, and is short", () => {
  const table = float16TextTable();
  const value = new Float16Array(1);
  const bits = new Uint16Array(value.buffer);
  let longest = 0;
  for (let b = 0; b < 65536; b++) {
    bits[0] = b;
    if (!Number.isFinite(value[0])) continue;
    const text = table[b];
    // Postgres reads halfvec text with strtof, then rounds to float16.
    assert.ok(Object.is(Math.f16round(Math.fround(Number(text))), value[0]), `bits ${b}: ${text}`);
    longest = Math.max(longest, text.replace("-", "").replace("0.", "").length);
  }
  assert.ok(longest <= 8, `longest mantissa text ${longest}`);
});

Deno.test("vectorLiteral: halfvec values rounded as halfvec_in would, vector values kept", () => {
  const values = [0.1, -0.333333, 1, 0, 65504, 1e-8];
  const half = JSON.parse(vectorLiteral(values, "halfvec(6)")) as number[];
  // The shortest text that Postgres reads back as the value's float16.
  const asHalfvec = (x: number) => Math.f16round(Math.fround(x));
  half.forEach((v, i) =>
    assert.equal(asHalfvec(v), asHalfvec(values[i]), `value ${i}: ${values[i]} -> ${v}`)
  );
  assert.equal(vectorLiteral([0.5, -0.25], "vector(2)"), "[0.5,-0.25]");
  assert.equal(vectorLiteral([-0], "halfvec(1)"), "[-0]");
});

Deno.test("vectorLiteral: halfvec text is the table's text of each float16, for arrays and Float32Array", () => {
  const table = float16TextTable();
  const values = Array.from({ length: 1536 }, (_, i) => Math.sin(i * 7.3) * (i % 5 ? 0.05 : 3));
  values.push(0, -0, 65504, 1e-8, -6e-5, 1e9);
  const bits = new Uint16Array(new Float16Array(Float32Array.from(values)).buffer);
  const want = `[${Array.from(bits, (b) => table[b]).join(",")}]`;
  assert.equal(vectorLiteral(values, "halfvec(1542)"), want);
  assert.equal(vectorLiteral(Float32Array.from(values), "halfvec(1542)"), want);
  assert.equal(vectorLiteral(Float32Array.of(0.5, -0.25), "vector(2)"), "[0.5,-0.25]");
});

Deno.test("vectorList: a batch's vectors, texts and nulls as one ';'-separated text", () => {
  const a = Float32Array.of(0.1, -0.5), b = [1, 1e-8];
  const donor = "[0.25,-1e-05]";
  assert.equal(
    vectorList([a, null, donor, b], "halfvec(2)"),
    [vectorLiteral(a, "halfvec(2)"), "", donor, vectorLiteral(b, "halfvec(2)")].join(";"),
  );
  assert.equal(vectorList([null], "halfvec(2)"), "");
  assert.equal(vectorList([], "halfvec(2)"), "");
  assert.equal(vectorList([[0.5, -0.25], "[1,2]"], "vector(2)"), "[0.5,-0.25];[1,2]");
  for (const bad of ["[1;2]", "[1,2]\n", "x", '["1"]', "[1,2],[3]x"]) {
    assert.throws(() => vectorList([bad], "halfvec(2)"), /no vector text has/, bad);
  }
});

Deno.test("database errors: unreachable vs failing statement vs retry-at-once, by code", () => {
  const pg = (code: string, message = "x") =>
    Object.assign(new Error(message), { name: "PostgresError", code });
  const cases: [string, unknown, { connection: boolean; retryNow: boolean }][] = [
    ["connection failure 08006", pg("08006"), { connection: true, retryNow: false }],
    ["admin shutdown 57P01", pg("57P01"), { connection: true, retryNow: false }],
    ["cannot connect now 57P03", pg("57P03"), { connection: true, retryNow: false }],
    ["refused socket", Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }), {
      connection: true,
      retryNow: false,
    }],
    [
      "postgres.js CONNECTION_ENDED",
      Object.assign(new Error("ended"), { code: "CONNECTION_ENDED" }),
      {
        connection: true,
        retryNow: false,
      },
    ],
    ["a socket error without a code", new Error("socket hang up"), {
      connection: true,
      retryNow: false,
    }],
    // node-postgres's own messages when the server is gone or never answers.
    ["node-postgres: terminated", new Error("Connection terminated unexpectedly"), {
      connection: true,
      retryNow: false,
    }],
    ["node-postgres: connect timeout", new Error("timeout exceeded when trying to connect"), {
      connection: true,
      retryNow: false,
    }],
    ["deadlock 40P01", pg("40P01"), { connection: false, retryNow: true }],
    ["serialization 40001", pg("40001"), { connection: false, retryNow: true }],
    ["syntax error 42601", pg("42601"), { connection: false, retryNow: false }],
    // A statement error whose text mentions a connection is still a statement error.
    ["server error about connections", pg("53300", "too many connections"), {
      connection: false,
      retryNow: false,
    }],
    ["our own: not attached", pg(PIPELINE_SQLSTATES.notAttached), {
      connection: false,
      retryNow: false,
    }],
    ["no error object", null, { connection: false, retryNow: false }],
  ];
  for (const [what, err, expected] of cases) {
    assert.deepEqual(
      { connection: isConnectionError(err), retryNow: isRetryableNow(err) },
      expected,
      what,
    );
  }
  assert.equal(errorCode({ code: 7 }), undefined);
  assert.equal(errorCode(pg("AE001")), "AE001");
});
