// Round trips are counted, not guessed (STYLE.md habit 3): the statements the
// core sends for a batch, as postgres.js reports them, for one target, for
// two tables, and for a table in the middle of a model change.
import assert from "node:assert/strict";
import postgres from "postgres";
import { processBatch } from "../../supabase/functions/_shared/core.ts";
import type { Job } from "../../supabase/functions/_shared/jobs.ts";
import { claimJobs } from "../../supabase/functions/_shared/sql/queue.ts";
import { coreSettings } from "../../supabase/functions/_shared/settings.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments } from "../../devtools/pipeline.ts";
import { insertRows } from "../_support/rows.ts";

const LOCAL = "local-hash-v1";

/** Reads the queued jobs as the worker does (a packed message is a job per row). */
async function claimAll(sql: Sql): Promise<Job[]> {
  const { jobs, refused } = await claimJobs(sql, { visibilitySeconds: 60, maxRows: 10000 });
  assert.equal(refused.length, 0);
  return jobs;
}

/** The kind of each statement, in order. */
function kindOf(statement: string): string {
  const s = statement.trim().toLowerCase();
  if (s === "begin" || s.startsWith("begin ")) return "begin";
  if (s === "commit") return "commit";
  if (s.includes("from util._target_config")) return "targets";
  if (s.startsWith("with applying as")) return "write";
  if (s.includes("autoembed.applying")) return "applying";
  if (s.includes("util._content_hash(x.content)")) return "rows";
  if (s.includes("util._settle_batch")) return "settle";
  return s.slice(0, 60);
}

async function countBatch(url: string, jobs: Job[]): Promise<string[]> {
  const statements: string[] = [];
  const sql = postgres(url, {
    max: 1,
    onnotice: () => {},
    // The pipeline's clients fetch array types once per connection; not a batch's statement.
    fetch_types: false,
    debug: (_connection, query) => statements.push(kindOf(query)),
  });
  try {
    const result = await processBatch(sql, jobs, {
      providerFor: coreSettings(() => undefined).providerFor,
    });
    assert.equal(result.failedJobs.length, 0);
    assert.equal(result.completedRows, jobs.length);
  } finally {
    await sql.end();
  }
  return statements;
}

/** A target's read (a transaction) and its write (one statement: it sets applying itself). */
const READ = ["begin", "rows", "commit"];
const WRITE = ["write"];
const TARGET = [...READ, ...WRITE];

Deno.test("round trips: a batch of 200 jobs of one table is 6 statements", async () => {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql, { model: LOCAL });
    await insertRows(sql, 200);
    const statements = await countBatch(url, await claimAll(sql));
    assert.deepEqual(statements, ["targets", ...TARGET, "settle"]);
  });
});

Deno.test("round trips: two tables, one read and one write each", async () => {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql, { model: LOCAL });
    await createDocuments(sql, { model: LOCAL, table: "notes" });
    await insertRows(sql, 50);
    await insertRows(sql, 50, { table: "notes", prefix: "note" });
    const statements = await countBatch(url, await claimAll(sql));
    // Every table's rows are read before any provider call; the writes follow.
    assert.deepEqual(statements, ["targets", ...READ, ...READ, ...WRITE, ...WRITE, "settle"]);
  });
});

Deno.test("round trips: during a model change, the shadow adds one read and one write", async () => {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql, { model: LOCAL });
    await insertRows(sql, 50);
    await countBatch(url, await claimAll(sql)); // embedded by the old model
    await sql`select util.reembed('documents', dimensions => 8)`;
    const statements = await countBatch(url, await claimAll(sql));
    // The live rows are fresh: only the shadow writes.
    assert.deepEqual(statements, ["targets", ...READ, ...TARGET, "settle"]);
  });
});
