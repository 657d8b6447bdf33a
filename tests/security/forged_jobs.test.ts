// Invariant I8 against hostile queue messages, through both shells: forged
// targets, SQL in identifiers, ids that are no key, wrong JSON types and
// missing fields are refused, recorded and dead-lettered without running
// anything, while genuine jobs of the same batches complete.
import assert from "node:assert/strict";
import { runCli } from "../../devtools/cli.ts";
import { withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { drainPush, startPipeline } from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { embeddingProblem } from "../_support/rows.ts";
import { assertHostileOutcome, createHostileFixture, enqueueHostileScenario } from "./_hostile.ts";

Deno.test("I8 push: forged messages in one batch with genuine jobs are refused one by one; the genuine ones complete", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createHostileFixture(sql);
      const forged = await enqueueHostileScenario(sql);
      // One batch holds every message: a single bad one must not fail the rest.
      await drainPush(sql, { batchSize: 100, maxRequests: 1, waitMs: 20_000 });
      await assertHostileOutcome(sql, forged, p.fake.stats.texts);
      // The call reports back (and its lease ends) before its HTTP answer reaches
      // pg_net's dispatcher, which then writes the response: wait for that.
      let responses: { status_code: number; content: string }[] = [];
      await waitFor(async () => {
        responses = await sql`select status_code, content from net._http_response order by id`;
        return responses.length >= 1;
      }, { what: "pg_net to record the call's response" });
      for (const r of responses) assert.equal(r.status_code, 200, r.content);
      assert.equal(p.fake.stats.requests, 1, "one provider call for the seven genuine rows");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I8 worker --once: forged messages are refused, even whole batches of them, and the genuine jobs behind them complete", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      await createHostileFixture(sql);
      const forged = await enqueueHostileScenario(sql);
      // Batches of 4: most hold forgeries only, and genuine jobs come after them.
      const result = await runCli(["worker", "--once", "--batch-size", "4"], {
        DATABASE_URL: url,
        OPENAI_API_KEY: "sk-test-key-not-secret",
        OPENAI_BASE_URL: fake.baseURL,
        EMBEDDING_TIMEOUT_MS: "5000",
      });
      assert.equal(result.code, 0, result.stderr);
      await assertHostileOutcome(sql, forged, fake.stats.texts);
    } finally {
      await fake.close();
    }
  });
});

Deno.test("I8: legitimate keys that JSON numbers cannot hold (bigint beyond 2^53, fractional numeric) embed in both modes", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await sql.unsafe(`
        create table public.big (id bigint primary key, body text not null, embedding halfvec(16));
        create function public.big_input(b public.big) returns text language sql immutable
          as $$ select b.body $$;
        select util.enable_embeddings('public.big', 'big_input', model => 'text-embedding-3-small');
        create table public.price (id numeric primary key, body text not null, embedding halfvec(16));
        create function public.price_input(b public.price) returns text language sql immutable
          as $$ select b.body $$;
        select util.enable_embeddings('public.price', 'price_input', model => 'text-embedding-3-small');
      `).simple();
      const near = "9007199254740993"; // 2^53 + 1: a JS number would read 2^53
      const insert = async (tag: string) => {
        await sql`insert into big values (${near}::bigint, ${"big " + tag}),
                                         (${near}::bigint - 1, ${"big minus one " + tag}),
                                         (9223372036854775807, ${"max " + tag})
                  on conflict (id) do update set body = excluded.body`;
        await sql`insert into price values (1.5, ${"one and a half " + tag}), (2.25, ${
          "two " + tag
        })
                  on conflict (id) do update set body = excluded.body`;
      };
      const assertEmbedded = async (tag: string) => {
        const rows = await sql`
          select b.id::text, b.body, b.embedding::text from big b
          union all select p.id::text, p.body, p.embedding::text from price p`;
        assert.equal(rows.length, 5);
        for (const r of rows) {
          assert.ok(r.body.endsWith(tag), `${r.id}: ${r.body}`);
          assert.equal(embeddingProblem(r.embedding, r.body), null, `${r.id} (${r.body})`);
        }
        const [{ n }] = await sql`select count(*)::int as n from util.embedding_errors`;
        assert.equal(n, 0, "no errors");
      };
      await insert("push");
      await drainPush(sql, { waitMs: 20_000 });
      await assertEmbedded("push");

      await insert("pull");
      const result = await runCli(["worker", "--once"], {
        DATABASE_URL: url,
        OPENAI_API_KEY: "sk-test-key-not-secret",
        OPENAI_BASE_URL: p.fake.baseURL,
      });
      assert.equal(result.code, 0, result.stderr);
      await assertEmbedded("pull");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I8: a genuine target whose every name needs quoting (quotes, spaces, dots, semicolons) embeds in both modes", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await sql.unsafe(`
        create schema "we;ird.Sch""ema";
        create table "we;ird.Sch""ema"."Tab le""; drop table x; --" (
          "i d""" bigint generated always as identity primary key,
          "bo'dy" text not null,
          "emb""ed; x" halfvec(16)
        );
        create function "we;ird.Sch""ema"."in'put ""fn"(r "we;ird.Sch""ema"."Tab le""; drop table x; --")
          returns text language sql immutable as $$ select r."bo'dy" $$;
        select util.enable_embeddings('"we;ird.Sch""ema"."Tab le""; drop table x; --"',
                                      'in''put "fn', 'emb"ed; x', model => 'text-embedding-3-small');
      `).simple();
      const table = `"we;ird.Sch""ema"."Tab le""; drop table x; --"`;
      const check = async (n: number) => {
        const rows = await sql.unsafe(
          `select "bo'dy" as body, "emb""ed; x"::text as e from ${table}`,
        );
        assert.equal(rows.length, n);
        for (const r of rows) assert.equal(embeddingProblem(r.e, r.body), null, r.body);
        const [s] =
          await sql`select missing::int, stale::int, queued::int from util.embedding_status_exact()`;
        assert.deepEqual({ ...s }, { missing: 0, stale: 0, queued: 0 });
        const [{ errors }] = await sql`select count(*)::int as errors from util.embedding_errors`;
        assert.equal(errors, 0);
      };
      await sql.unsafe(`insert into ${table} ("bo'dy") values ('it''s one'), ('"two"; --')`);
      await drainPush(sql, { waitMs: 20_000 });
      await check(2);
      await sql.unsafe(`insert into ${table} ("bo'dy") values ('three')`);
      await sql.unsafe(`update ${table} set "bo'dy" = 'one, edited' where "bo'dy" = 'it''s one'`);
      const result = await runCli(["worker", "--once"], {
        DATABASE_URL: url,
        OPENAI_API_KEY: "sk-test-key-not-secret",
        OPENAI_BASE_URL: p.fake.baseURL,
      });
      assert.equal(result.code, 0, result.stderr);
      await check(3);
    } finally {
      await p.stop();
    }
  });
});
