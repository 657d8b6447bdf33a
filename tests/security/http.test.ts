// Invariant I9 and the embed function's HTTP surface under hostile requests:
// wrong or missing bearer, wrong methods, bodies that are not JSON, too big
// (declared or streamed), or not a batch. Each is answered with a clear
// status and message, and nothing is processed: no provider call, no error
// row, the queue exactly as it was.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import {
  createDocuments,
  type Pipeline,
  startPipeline,
  TEST_SECRET,
} from "../../devtools/pipeline.ts";
import { CANARY_TEXT } from "./_hostile.ts";

/** Three genuine jobs, read as process_embeddings would (so hidden), in the function's wire form. */
async function inFlightJobs(sql: Sql): Promise<Record<string, unknown>[]> {
  await createDocuments(sql);
  // A statement each: three single-row messages (one statement's rows share a packed message).
  for (const g of [1, 2, 3]) {
    await sql`insert into documents (title, content) values (${CANARY_TEXT + g}, ${"row " + g})`;
  }
  const rows = await sql`select msg_id, read_ct, message from pgmq.read('embedding_jobs', 300, 10)`;
  return rows.map((r) => ({ ...r.message, jobId: Number(r.msg_id), attempt: r.read_ct }));
}

/** What a request could have changed: the queue, the errors, the embeddings, the provider. */
async function snapshot(sql: Sql, p: Pipeline) {
  const [s] = await sql`
    select (select coalesce(jsonb_agg(jsonb_build_array(msg_id, read_ct, vt, message) order by msg_id), '[]')
              from pgmq.q_embedding_jobs) as queue,
           (select count(*)::int from pgmq.a_embedding_jobs) as archived,
           (select count(*)::int from util.embedding_errors) as errors,
           (select count(*)::int from documents where embedding is not null) as embedded,
           (select count(*)::int from util.embedding_requests) as leases`;
  return { ...s, providerRequests: p.fake.stats.requests };
}

const AUTH = { Authorization: `Bearer ${TEST_SECRET}`, "Content-Type": "application/json" };

Deno.test("I9: every wrong or missing credential gets 401, echoes nothing and processes nothing", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      const body = JSON.stringify(await inFlightJobs(sql));
      const before = await snapshot(sql, p);
      const cases: Record<string, string>[] = [
        {},
        { Authorization: "" },
        { Authorization: "Bearer" },
        { Authorization: "Bearer " },
        { Authorization: "Bearer wrong" },
        { Authorization: `Bearer ${TEST_SECRET}x` },
        { Authorization: `Bearer ${TEST_SECRET.slice(0, -1)}` },
        { Authorization: `Bearer ${TEST_SECRET.toUpperCase()}` },
        { Authorization: `Basic ${btoa(`user:${TEST_SECRET}`)}` },
        { Authorization: TEST_SECRET },
        { Authorization: `Token ${TEST_SECRET}` },
        { apikey: TEST_SECRET },
        { "x-embed-secret": TEST_SECRET },
        { Authorization: `Bearer ${CANARY_TEXT}` },
      ];
      for (const headers of cases) {
        const res = await fetch(p.functionUrl, { method: "POST", headers, body });
        const text = await res.text();
        assert.equal(res.status, 401, `${JSON.stringify(headers)}: ${text}`);
        assert.match(JSON.parse(text).error, /missing or wrong bearer secret/);
        assert.ok(!text.includes(CANARY_TEXT), "the request is not echoed");
      }
      // A maintenance request needs the secret as much as a batch does.
      const maintenance = await fetch(p.functionUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ maintenance: ["indexes"] }),
      });
      assert.equal(maintenance.status, 401);
      await maintenance.body?.cancel();
      // The secret in the query string is no credential either.
      const res = await fetch(`${p.functionUrl}?token=${TEST_SECRET}&apikey=${TEST_SECRET}`, {
        method: "POST",
        body,
      });
      assert.equal(res.status, 401);
      await res.body?.cancel();
      assert.deepEqual(await snapshot(sql, p), before, "nothing processed");
      assert.deepEqual(p.logs, [], "nothing logged");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I9: methods other than POST get 405 with Allow: POST, authenticated or not", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      const body = JSON.stringify(await inFlightJobs(sql));
      const before = await snapshot(sql, p);
      for (const method of ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]) {
        for (const headers of [AUTH, {}]) {
          const res = await fetch(p.functionUrl, {
            method,
            headers,
            body: method === "GET" || method === "HEAD" ? undefined : body,
          });
          assert.equal(res.status, 405, method);
          assert.equal(res.headers.get("allow"), "POST", method);
          if (method !== "HEAD") assert.match((await res.json()).error, /use POST/);
          else await res.body?.cancel();
        }
      }
      assert.deepEqual(await snapshot(sql, p), before, "nothing processed");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I9: bodies that are not a batch get 400 with a clear message, and nothing is processed", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      const jobs = await inFlightJobs(sql);
      const job = jobs[0];
      const before = await snapshot(sql, p);
      const post = (body: BodyInit) =>
        fetch(p.functionUrl, { method: "POST", headers: AUTH, body });
      const cases: { what: string; body: BodyInit; message: RegExp }[] = [
        { what: "empty", body: "", message: /not valid JSON/ },
        { what: "text", body: `hello ${CANARY_TEXT}`, message: /not valid JSON/ },
        {
          what: "truncated JSON",
          body: JSON.stringify(jobs).slice(0, -3),
          message: /not valid JSON/,
        },
        {
          what: "invalid UTF-8",
          body: new Uint8Array([0x5b, 0xff, 0xfe, 0xc3, 0x28, 0x5d]),
          message: /not valid JSON|JSON array/,
        },
        { what: "object", body: JSON.stringify(job), message: /must be a JSON array/ },
        { what: "string", body: JSON.stringify(CANARY_TEXT), message: /must be a JSON array/ },
        { what: "number", body: "42", message: /must be a JSON array/ },
        { what: "null", body: "null", message: /must be a JSON array/ },
        { what: "empty array", body: "[]", message: /1 to 5000 jobs, this one 0/ },
        {
          what: "5001 jobs",
          body: JSON.stringify(Array(5001).fill(job)),
          message: /1 to 5000 jobs, this one 5001/,
        },
        {
          what: "no jobId",
          body: JSON.stringify([{ ...job, jobId: undefined }]),
          message: /jobId/,
        },
        { what: "string jobId", body: JSON.stringify([{ ...job, jobId: "1" }]), message: /jobId/ },
        { what: "zero jobId", body: JSON.stringify([{ ...job, jobId: 0 }]), message: /jobId/ },
        { what: "negative jobId", body: JSON.stringify([{ ...job, jobId: -1 }]), message: /jobId/ },
        {
          what: "fractional jobId",
          body: JSON.stringify([{ ...job, jobId: 1.5 }]),
          message: /jobId/,
        },
        { what: "huge jobId", body: `[{"jobId": 1e400}]`, message: /jobId/ },
        {
          what: "bad attempt",
          body: JSON.stringify([{ ...job, attempt: -1 }]),
          message: /attempt/,
        },
        {
          what: "null job",
          body: JSON.stringify([job, null]),
          message: /job 1 has no valid jobId/,
        },
        { what: "array job", body: JSON.stringify([[job]]), message: /job 0 has no valid jobId/ },
        {
          what: "1 MB of nesting",
          body: "[".repeat(500_000) + "]".repeat(500_000),
          message: /job 0 has no valid jobId|not valid JSON/,
        },
        {
          what: "maintenance, not a list",
          body: JSON.stringify({ maintenance: "indexes" }),
          message: /maintenance must be a non-empty array of task names/,
        },
        {
          what: "maintenance, no task",
          body: JSON.stringify({ maintenance: [] }),
          message: /maintenance must be a non-empty array of task names/,
        },
        {
          what: "maintenance, an unknown task",
          body: JSON.stringify({ maintenance: ["indexes", CANARY_TEXT] }),
          message: /^1 unknown maintenance task\(s\); known: batches, indexes$/,
        },
        {
          what: "maintenance, a task twice",
          body: JSON.stringify({ maintenance: ["indexes", "indexes"] }),
          message: /a maintenance task is named twice/,
        },
        {
          what: "3 MB, with Content-Length",
          body: JSON.stringify([{ ...job, title: "x".repeat(3 * 1024 * 1024) }]),
          message: /request body is \d+ bytes; the limit is 2097152/,
        },
      ];
      for (const c of cases) {
        const res = await post(c.body);
        const text = await res.text();
        assert.equal(res.status, 400, `${c.what}: ${res.status} ${text.slice(0, 200)}`);
        assert.match(JSON.parse(text).error, c.message, c.what);
        assert.ok(!text.includes(CANARY_TEXT), `${c.what}: the body is not echoed`);
        assert.ok(text.length < 300, `${c.what}: a short answer`);
      }

      // Streamed without Content-Length (chunked), and a declared length that
      // is over the limit: refused before the body is read to its end.
      let sent = 0;
      const chunk = new TextEncoder().encode("[" + " ".repeat(64 * 1024 - 1));
      const stream = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (sent >= 8 * 1024 * 1024) return controller.close();
          sent += chunk.length;
          controller.enqueue(chunk);
        },
      });
      let res = await p.handler.fetch(
        new Request(p.functionUrl, { method: "POST", headers: AUTH, body: stream }),
      );
      assert.equal(res.status, 400);
      assert.match((await res.json()).error, /request body exceeds 2097152 bytes/);
      assert.ok(sent < 4 * 1024 * 1024, `stopped reading after ${sent} bytes`);
      res = await p.handler.fetch(
        new Request(p.functionUrl, {
          method: "POST",
          headers: { ...AUTH, "Content-Length": String(1024 ** 3) },
          body: JSON.stringify(jobs),
        }),
      );
      assert.equal(res.status, 400);
      assert.match((await res.json()).error, /request body is 1073741824 bytes/);

      assert.deepEqual(await snapshot(sql, p), before, "nothing processed");
      assert.ok(!p.logs.join("\n").includes(CANARY_TEXT), "no request content in the logs");

      // The same jobs, well formed: processed (so the cases above were refused for their faults).
      res = await post(JSON.stringify(jobs));
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(res.headers.get("x-completed-jobs"), "3");
      await res.body?.cancel();
      // A well-formed maintenance request runs its task (no index is due here).
      res = await post(JSON.stringify({ maintenance: ["indexes"] }));
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), {
        maintenance: { indexes: { built: 0, dropped: 0, failed: 0, busy: false, switched: false } },
      });
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I8 over HTTP: malformed jobs of an authenticated batch (NUL, wrong types) are refused one by one", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      const jobs = await inFlightJobs(sql);
      const [a, b, d] = jobs;
      const c = { ...d, jobId: 999 }; // a third malformed job under an id of its own
      // Messages pgmq could never hold (jsonb has no NUL and no unpaired
      // surrogate), sent straight to the function.
      const res = await fetch(p.functionUrl, {
        method: "POST",
        headers: AUTH,
        body: JSON.stringify([
          { ...a, table: "documents\u0000; drop table documents" },
          { ...b, id: "1\u0000" },
          { ...c, id: "\ud800", schema: "pub\udc00lic" },
          d,
        ]),
      });
      assert.equal(res.status, 200);
      const result = await res.json();
      assert.deepEqual(result.completedJobs, [d.jobId]);
      assert.deepEqual(
        result.failedJobs.map((f: { jobId: number }) => f.jobId).sort(),
        [a.jobId, b.jobId, c.jobId].sort(),
      );
      const errors = await sql`
        select job_id, retryable, dead_lettered, error from util.embedding_errors order by job_id`;
      assert.equal(errors.length, 3);
      for (const e of errors) {
        assert.match(e.error, /^refused: /);
        assert.equal(e.retryable, false);
        assert.equal(e.dead_lettered, true);
      }
      const [{ archived }] = await sql`select count(*)::int as archived from pgmq.a_embedding_jobs`;
      assert.equal(archived, 2);
      const [{ present }] =
        await sql`select to_regclass('public.documents') is not null as present`;
      assert.ok(present);
    } finally {
      await p.stop();
    }
  });
});
