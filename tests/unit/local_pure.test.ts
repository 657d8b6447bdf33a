// Pure helpers of the local stack and the CLI.
import assert from "node:assert/strict";
import { localJwt, parseDotenv, parseVerifyJwt, verifyLocalJwt } from "../../local/functions.ts";
import { cliDbUrl, historyDivergence, listMigrations } from "../../local/migrate.ts";
import { chooseDefaultModel } from "../../local/default_model.ts";
import { type CronJob, planPushTick } from "../../local/push_tick.ts";
import { parseArgs, parseDuration, progressLine, UsageError } from "../../cli/autoembed.ts";

Deno.test("parseDotenv reads KEY=value lines, strips quotes, skips comments", () => {
  const env = parseDotenv(`# comment\nA=1\nexport B="two words"\nC='x=y'\n\nnot a line\n`);
  assert.deepEqual(env, { A: "1", B: "two words", C: "x=y" });
});

Deno.test("parseVerifyJwt reads verify_jwt per function table", () => {
  const toml =
    `[api]\nport = 1\n[functions.embed]\nverify_jwt = false # own check\n[functions.other]\nverify_jwt = true\n[db]\nverify_jwt = false\n`;
  const map = parseVerifyJwt(toml);
  assert.equal(map.get("embed"), false);
  assert.equal(map.get("other"), true);
  assert.equal(map.size, 2);
});

Deno.test("local JWTs verify; tampered ones do not", async () => {
  const token = await localJwt("anon");
  assert.ok(await verifyLocalJwt(token));
  const [h, p, s] = token.split(".");
  const forged = btoa(JSON.stringify({ role: "service_role", exp: 1983812996 })).replace(/=+$/, "");
  assert.equal(await verifyLocalJwt(`${h}.${forged}.${s}`), false);
  assert.equal(await verifyLocalJwt(`${h}.${p}`), false);
  assert.equal(await verifyLocalJwt(""), false);
});

Deno.test("local keys are the Supabase CLI's demo keys: the same on every start", async () => {
  // The keys `supabase status` prints for a local stack with the default JWT secret.
  assert.equal(
    await localJwt("anon"),
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0",
  );
  assert.equal(
    await localJwt("service_role"),
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU",
  );
});

Deno.test("cliDbUrl turns TLS off for the CLI unless the URL already says", () => {
  assert.equal(
    cliDbUrl("postgresql://postgres:postgres@127.0.0.1:54322/postgres"),
    "postgresql://postgres:postgres@127.0.0.1:54322/postgres?sslmode=disable",
  );
  assert.equal(
    cliDbUrl("postgresql://u:p@db.example:5432/app?application_name=x"),
    "postgresql://u:p@db.example:5432/app?application_name=x&sslmode=disable",
  );
  assert.equal(
    cliDbUrl("postgresql://u:p@db.example:5432/app?sslmode=require"),
    "postgresql://u:p@db.example:5432/app?sslmode=require",
  );
});

Deno.test("listMigrations orders by version and ignores other files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (
      const name of [
        "20240102000000_b.sql",
        "20240101000000_a.sql",
        "README.md",
        "x_y.sql",
        "20240103_c.sql",
      ]
    ) {
      await Deno.writeTextFile(`${dir}/${name}`, "select 1;");
    }
    const found = await listMigrations(dir);
    assert.deepEqual(found.map((m) => m.version), ["20240101000000", "20240102000000", "20240103"]);
    assert.deepEqual(found.map((m) => m.name), ["a", "b", "c"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI parses durations and options", () => {
  const cases: [string, number][] = [["5s", 5000], ["1m", 60000], ["900", 900_000], ["0.5", 500], [
    "250ms",
    250,
  ], [
    "1.5s",
    1500,
  ]];
  for (const [text, ms] of cases) assert.equal(parseDuration(text, "--poll-interval"), ms);
  assert.throws(() => parseDuration("soon", "--poll-interval"), UsageError);
  const args = parseArgs([
    "worker",
    "-c",
    "4",
    "--table",
    "a",
    "--table=b",
    "--once",
    "-d",
    "postgresql://x",
  ]);
  assert.equal(args.command, "worker");
  assert.deepEqual(args.options.get("table"), ["a", "b"]);
  assert.deepEqual(args.options.get("concurrency"), ["4"]);
  assert.ok(args.options.has("once"));
  assert.throws(() => parseArgs(["worker", "--bogus"]), UsageError);
  assert.throws(() => parseArgs(["worker", "-c"]), UsageError);
});

Deno.test("progressLine shows done, chunks, backlog, rate and ETA", () => {
  const cases: [Parameters<typeof progressLine>[0], string][] = [
    [{ done: 500, backlog: 1500, elapsedMs: 1000 }, "done 500  backlog 1500  500 rows/s  ETA 3s"],
    [
      { done: 100, backlog: 9000, elapsedMs: 10_000 },
      "done 100  backlog 9000  10 rows/s  ETA 15m00s",
    ],
    [{ done: 3, backlog: 0, elapsedMs: 2000 }, "done 3  backlog 0  1.5 rows/s  idle, listening"],
    [{ done: 0, backlog: null, elapsedMs: 0 }, "done 0  0.0 rows/s"],
    [
      { done: 20, chunks: 400, backlog: 0, elapsedMs: 2000 },
      "done 20  chunks 400 (200/s)  backlog 0  10 rows/s  idle, listening",
    ],
  ];
  for (const [input, want] of cases) assert.equal(progressLine(input), want);
});

Deno.test("chooseDefaultModel: a key in the environment or supabase/functions/.env means the provider's model", () => {
  const key = "sk-test-abc123";
  const cases: {
    env: Record<string, string>;
    dotenv: string | null;
    model: string;
    reason: RegExp;
    baseUrl?: string;
  }[] = [
    {
      env: {},
      dotenv: null,
      model: "local-hash-v1",
      reason:
        /^offline lexical; no OPENAI_API_KEY in the environment or supabase\/functions\/\.env$/,
    },
    {
      env: {},
      dotenv: "# nothing\nOTHER=1\n",
      model: "local-hash-v1",
      reason: /no OPENAI_API_KEY/,
    },
    {
      env: { OPENAI_API_KEY: "  " },
      dotenv: null,
      model: "local-hash-v1",
      reason: /no OPENAI_API_KEY/,
    },
    {
      env: { OPENAI_API_KEY: key },
      dotenv: null,
      model: "text-embedding-3-small",
      reason: /^OPENAI_API_KEY in the environment$/,
    },
    {
      env: {},
      dotenv: `OPENAI_API_KEY="${key}"\n`,
      model: "text-embedding-3-small",
      reason: /^OPENAI_API_KEY in supabase\/functions\/\.env$/,
    },
    {
      env: { OPENAI_API_KEY: "sk-env" },
      dotenv: `export OPENAI_API_KEY=${key}\nOPENAI_BASE_URL=http://127.0.0.1:11434/v1\n`,
      model: "text-embedding-3-small",
      reason:
        /^OPENAI_API_KEY in supabase\/functions\/\.env, OPENAI_BASE_URL in supabase\/functions\/\.env$/,
      baseUrl: "http://127.0.0.1:11434/v1",
    },
    {
      env: { OPENAI_API_KEY: key, OPENAI_BASE_URL: "http://gateway.test/v1" },
      dotenv: "",
      model: "text-embedding-3-small",
      reason: /^OPENAI_API_KEY in the environment, OPENAI_BASE_URL in the environment$/,
      baseUrl: "http://gateway.test/v1",
    },
    {
      // The file's empty value is what the function gets: it overrides the environment.
      env: { OPENAI_API_KEY: key },
      dotenv: "OPENAI_API_KEY=\n",
      model: "local-hash-v1",
      reason: /OPENAI_API_KEY is empty in supabase\/functions\/\.env, which overrides/,
    },
  ];
  for (const c of cases) {
    const choice = chooseDefaultModel(c.env, c.dotenv);
    const label = JSON.stringify({ env: c.env, dotenv: c.dotenv });
    assert.equal(choice.model, c.model, label);
    assert.match(choice.reason, c.reason, label);
    assert.ok(!choice.reason.includes("sk-"), `the reason never shows a key: ${choice.reason}`);
    assert.equal(choice.env("OPENAI_BASE_URL"), c.baseUrl, label);
  }
  assert.equal(
    chooseDefaultModel({ OPENAI_API_KEY: "sk-env" }, `OPENAI_API_KEY=${key}`).env(
      "OPENAI_API_KEY",
    ),
    key,
    "the file's key is the one the demo uses, as the function does",
  );
});

Deno.test("planPushTick: the local stack ticks only the active per-minute fallback of its own database", () => {
  const job = (over: Partial<CronJob>): CronJob => ({
    schedule: "* * * * *",
    command: "select util.process_embeddings()",
    database: "postgres",
    username: "postgres",
    active: true,
    ...over,
  });
  const cases: [CronJob | null, boolean, RegExp][] = [
    [job({}), true, /per minute .* every 10 s$/],
    [job({ schedule: " *  * * * * " }), true, /per minute/],
    [job({ schedule: "10 seconds" }), false, /pg_cron runs process-embeddings every 10 seconds/],
    [job({ schedule: "1 second" }), false, /every 1 second/],
    [job({ active: false }), false, /inactive/],
    [job({ database: "app" }), false, /runs in database app, not postgres/],
    [job({ schedule: "*/5 * * * *" }), false, /its own schedule '\*\/5 \* \* \* \*'/],
    [null, false, /no pg_cron job process-embeddings in database postgres/],
  ];
  for (const [input, tick, reason] of cases) {
    const plan = planPushTick(input, "postgres");
    assert.equal(plan.tick, tick, JSON.stringify(input));
    assert.match(plan.reason, reason, JSON.stringify(input));
  }
});

Deno.test("historyDivergence: a database's history must be a prefix of the repository's", () => {
  const repo = ["20261207000000", "20270101000000", "20270201000000"];
  assert.equal(historyDivergence([], repo), null);
  assert.equal(historyDivergence(["20261207000000"], repo), null);
  assert.equal(historyDivergence([...repo].reverse(), repo), null);
  assert.match(
    historyDivergence(["20261124000100", "20261124000200"], repo)!,
    /records 20261124000100, which this checkout has no migration for/,
  );
  assert.match(
    historyDivergence(["20261207000000", "20270201000000"], repo)!,
    /lacks 20270101000000, which comes before 20270201000000/,
  );
  assert.match(historyDivergence([...repo, "20280101000000"], repo)!, /records 20280101000000/);
});
