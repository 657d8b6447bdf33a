// I9, second half: no secret and no embedded text leaves through logs,
// worker output, function responses (stored by pg_net) or recorded errors,
// even when the provider's error answers echo the input and the key back.
// Distinctive canaries stand in for the row text, the API key and the
// bearer secret; everything observable is scanned for them.
import assert from "node:assert/strict";
import { runCli } from "../../devtools/cli.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { type FakeOpenAI, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, drainPush, startPipeline } from "../../devtools/pipeline.ts";
import { embeddedCount } from "../_support/rows.ts";
import { CANARY_BEARER, CANARY_KEY, CANARY_TEXT } from "./_hostile.ts";

/** Rows whose text carries the canary, tagged by `phase`. */
async function insertCanaryRows(sql: Sql, phase: string, n = 3) {
  await sql`
    insert into documents (title, content)
    select ${CANARY_TEXT} || ' ' || ${phase} || ' ' || g,
           'private notes ' || ${CANARY_TEXT} || ' of row ' || g
      from generate_series(1, ${n}) g`;
}

/** An error answer that echoes the input and the key back, as careless gateways do. */
function echoingBody(status: number): string {
  const text = `${CANARY_TEXT} phase: private notes ${CANARY_TEXT} of row 1`;
  return JSON.stringify({
    error: {
      message: `Invalid input '${text}' for key ${CANARY_KEY} (status ${status})`,
      type: CANARY_TEXT,
      param: text,
      code: CANARY_TEXT,
    },
  });
}

/** Faults, one phase each: rejected (400), bad key (401), rate limited, server error, garbage. */
async function runPhases(
  sql: Sql,
  fake: FakeOpenAI,
  drain: () => Promise<void>,
): Promise<void> {
  await sql`update util.settings set value = '0' where name = 'backoff_base_seconds'`;
  const phases: [string, Parameters<FakeOpenAI["setFault"]>[0]][] = [
    ["rejected", { kind: "status", status: 400, body: echoingBody(400) }],
    ["bad key", {
      kind: "status",
      status: 401,
      body: JSON.stringify({
        error: {
          message: `Incorrect API key provided: ${CANARY_KEY}.`,
          type: "invalid_request_error",
          code: "invalid_api_key",
        },
      }),
    }],
    ["rate limited", {
      kind: "status",
      status: 429,
      retryAfter: "0",
      times: 1,
      body: echoingBody(429),
    }],
    ["server error", { kind: "status", status: 500, times: 1, body: echoingBody(500) }],
    ["malformed", { kind: "malformed", times: 1 }],
  ];
  for (const [phase, fault] of phases) {
    fake.setFault(fault);
    await insertCanaryRows(sql, phase);
    await drain();
    fake.setFault(null);
  }
  await insertCanaryRows(sql, "healthy");
  await drain();
  // The content function fails for a row: with an error of Postgres that
  // quotes the row's text (kept in util.embedding_errors, the user's own
  // diagnosis, but in no log or response), then with a message of its own.
  await sql.unsafe(`
    create or replace function public.documents_input(d public.documents) returns text
    language plpgsql as $$
    begin
      if d.title like '%castfail%' then return d.content::int::text; end if;
      if d.title like '%poison%' then raise exception 'no text for row %', d.id; end if;
      return d.title || ': ' || d.content;
    end $$`);
  await insertCanaryRows(sql, "castfail", 1);
  await drain();
  await insertCanaryRows(sql, "poison", 1);
  await drain();
}

/** Everything the database keeps that a user or an operator can read about the runs. */
async function recorded(sql: Sql) {
  const errors = await sql`
    select error, table_name, row_id from util.embedding_errors
     where error not like 'the content function failed: invalid input syntax%'`;
  const responses = await sql`select content, error_msg from net._http_response`;
  const [status] = await sql`select last_error from util.embedding_status`;
  return { errors, responses, status };
}

function assertClean(where: string, text: string) {
  for (const canary of [CANARY_TEXT, CANARY_KEY, CANARY_BEARER, "private notes"]) {
    assert.ok(!text.includes(canary), `${where} contains ${canary}:\n${text.slice(0, 2000)}`);
  }
}

Deno.test("I9 push: handler and dispatcher logs, responses and recorded errors hold no text, key or secret", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, {
      env: { EMBED_SECRET: CANARY_BEARER, OPENAI_API_KEY: CANARY_KEY },
    });
    try {
      await sql`select vault.update_secret(s.id, ${CANARY_BEARER})
                  from vault.decrypted_secrets s where s.name = 'embed_secret'`;
      await createDocuments(sql);
      await runPhases(sql, p.fake, () => drainPush(sql, { batchSize: 10, waitMs: 20_000 }));

      // The runs happened as intended: failures recorded, the healthy rows embedded.
      const { errors, responses, status } = await recorded(sql);
      assert.ok(errors.some((e) => /rejected the request \(400/.test(e.error)), "400 recorded");
      assert.ok(errors.some((e) => /refused the credentials \(401/.test(e.error)), "401 recorded");
      assert.ok(errors.some((e) => /no text for row/.test(e.error)), "content error recorded");
      const [{ quoting }] = await sql`
        select count(*)::int as quoting from util.embedding_errors
         where error like ${"%invalid input syntax%" + CANARY_TEXT + "%"}`;
      assert.ok(quoting >= 1, "an error of Postgres quoting the row's text was recorded");
      // 12: the rate limited, server error, malformed and healthy rows; 6 more:
      // the rows the 400 and 401 phases left without an embedding, rechecked
      // and embedded when the content function was redefined (I10).
      assert.equal(await embeddedCount(sql), 18, "every row with text embeds in the end");
      assert.ok(p.fake.stats.texts.some((t) => t.includes(CANARY_TEXT)), "the provider saw text");
      assert.ok(responses.length >= 6);

      assertClean("util.embedding_errors", JSON.stringify(errors));
      assertClean("util.embedding_status", JSON.stringify(status));
      assertClean("net._http_response", JSON.stringify(responses));
      assertClean("the function's and dispatcher's logs", p.logs.join("\n"));
      assert.ok(p.logs.some((l) => l.includes('"event":"batch"')), "the handler did log batches");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I9 worker: stdout, stderr and recorded errors hold no text or key, whatever the provider echoes", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      await createDocuments(sql);
      const outputs: string[] = [];
      await runPhases(sql, fake, async () => {
        const r = await runCli(["worker", "--once", "--batch-size", "10"], {
          DATABASE_URL: url,
          OPENAI_API_KEY: CANARY_KEY,
          OPENAI_BASE_URL: fake.baseURL,
          EMBEDDING_TIMEOUT_MS: "5000",
        });
        assert.equal(r.code, 0, r.stderr);
        outputs.push(r.stdout, r.stderr);
      });
      const { errors, status } = await recorded(sql);
      assert.ok(errors.some((e) => /rejected the request \(400/.test(e.error)), "400 recorded");
      assert.equal(
        await embeddedCount(sql),
        18,
        "as in push mode: the redefinition rechecks the failed rows",
      );
      assert.ok(outputs.join("").includes('"event":"batch"'), "the worker did report batches");
      assertClean("util.embedding_errors", JSON.stringify(errors));
      assertClean("util.embedding_status", JSON.stringify(status));
      assertClean("the worker's output", outputs.join("\n"));
    } finally {
      await fake.close();
    }
  });
});
