// Pure checks of what both shells do to a message before any SQL: exact ids,
// per-job refusal with reasons that never quote the message, and the few
// faults that reject a whole request body.
import assert from "node:assert/strict";
import {
  checkJobMessage,
  parseJobBatch,
  parseJobJson,
} from "../../supabase/functions/_shared/jobs.ts";
import { CANARY_TEXT } from "./_hostile.ts";

const MESSAGE = {
  id: 1,
  schema: "public",
  table: "documents",
  contentFunction: "documents_input",
  embeddingColumn: "embedding",
};

Deno.test("parseJobJson keeps ids exact that a JS number cannot hold, and only ids", () => {
  const cases: [string, unknown][] = [
    ['{"id": 9007199254740993}', "9007199254740993"],
    ['{"id": -9223372036854775808}', "-9223372036854775808"],
    ['{"id": 1.50}', "1.50"],
    ['{"id": 1e400}', "1e400"],
    ['{"id": 9007199254740991}', 9007199254740991],
    ['{"id": 42}', 42],
    ['{"id": "text"}', "text"],
  ];
  for (const [json, id] of cases) assert.deepEqual(parseJobJson(json), { id }, json);
  assert.deepEqual(parseJobJson('[{"jobId": 1.5, "attempt": 9007199254740993}]'), [
    { jobId: 1.5, attempt: 9007199254740992 },
  ]);
});

Deno.test("checkJobMessage names the field and the rule, never the content", () => {
  const cases: [unknown, RegExp][] = [
    [null, /malformed job message \(.*expected object/],
    [[MESSAGE], /expected object/],
    [{ ...MESSAGE, id: undefined }, /\(id: /],
    [{ ...MESSAGE, id: [CANARY_TEXT] }, /\(id: /],
    [{ ...MESSAGE, schema: CANARY_TEXT.repeat(10) }, /\(schema: Too big/],
    [
      { ...MESSAGE, table: `${CANARY_TEXT}\u0000` },
      /\(table: contains NUL or an unpaired surrogate/,
    ],
    [{ ...MESSAGE, contentFunction: { [CANARY_TEXT]: 1 } }, /\(contentFunction: /],
    [{ ...MESSAGE, embeddingColumn: `\ud800${CANARY_TEXT}` }, /\(embeddingColumn: contains NUL/],
    [{ ...MESSAGE, id: `${CANARY_TEXT}\u0000` }, /\(id: /],
  ];
  for (const [message, reason] of cases) {
    const checked = checkJobMessage(message);
    assert.ok("error" in checked, JSON.stringify(message));
    assert.match(checked.error, /^refused: malformed job message \(/);
    assert.match(checked.error, reason);
    assert.ok(!checked.error.includes(CANARY_TEXT), checked.error);
  }
  assert.deepEqual(checkJobMessage({ ...MESSAGE, extra: CANARY_TEXT }), { job: MESSAGE });
});

Deno.test("parseJobBatch takes integer and text ids, and refuses each job whose fields break a rule", () => {
  const ok = { ...MESSAGE, jobId: 1, id: 5, table: "t" };
  assert.deepEqual(parseJobBatch([ok, { ...ok, jobId: 2, id: "a-uuid-or-text" }]), {
    jobs: [{ ...ok, attempt: undefined }, {
      ...ok,
      jobId: 2,
      id: "a-uuid-or-text",
      attempt: undefined,
    }],
    refused: [],
  });
  const bad = [
    { ...ok, id: 1.5 },
    { ...ok, id: 2 ** 60 },
    { ...ok, schema: "" },
    { ...ok, table: "x".repeat(64) },
    { ...ok, embeddingColumn: "a\u0000b" },
    { ...ok, contentFunction: undefined },
  ];
  for (const job of bad) {
    const batch = parseJobBatch([job]);
    assert.ok("jobs" in batch, JSON.stringify(job));
    assert.deepEqual(batch.jobs, [], JSON.stringify(job));
    assert.equal(batch.refused.length, 1, JSON.stringify(job));
    assert.match(batch.refused[0].error, /^refused: malformed job message/);
  }
});

Deno.test("parseJobBatch refuses bad jobs one by one; only a body that is no batch fails whole", () => {
  const job = { ...MESSAGE, jobId: 7, attempt: 1 };
  const batch = parseJobBatch([job, { ...job, jobId: 8, id: null }, { jobId: 9 }]);
  assert.ok("jobs" in batch);
  assert.deepEqual(batch.jobs, [job]);
  assert.deepEqual(batch.refused.map((r) => r.jobId), [8, 9]);
  for (
    const body of [
      {},
      "[]",
      [],
      Array(5001).fill(job),
      [job, null],
      [job, [job]],
      [{ ...job, jobId: "7" }],
      { ...job },
      [{ ...job, jobId: 0 }],
      [{ ...job, jobId: 2 ** 53 }],
      [{ ...job, attempt: -1 }],
      [{ ...job, attempt: "1" }],
    ]
  ) {
    const parsed = parseJobBatch(body);
    assert.ok("error" in parsed, JSON.stringify(body).slice(0, 100));
  }
});

Deno.test("packed messages: exact ids, one job per row under the message's jobId, bad ones refused whole", () => {
  const { id: _, ...target } = MESSAGE;
  assert.deepEqual(parseJobJson('{"ids": [9007199254740993, 7, 1.50, "k"]}'), {
    ids: ["9007199254740993", 7, "1.50", "k"],
  });
  const packed = { ...target, ids: [1, "two"], jobId: 4, attempt: 2 };
  const batch = parseJobBatch([packed, { ...MESSAGE, jobId: 5 }]);
  assert.ok("jobs" in batch);
  assert.deepEqual(batch.jobs, [
    { ...target, id: 1, jobId: 4, attempt: 2, packed: true },
    { ...target, id: "two", jobId: 4, attempt: 2, packed: true },
    { ...MESSAGE, jobId: 5, attempt: undefined },
  ]);
  const cases: [unknown, RegExp][] = [
    [{ ...target, ids: [] }, /\(ids: /],
    [{ ...target, ids: "1,2" }, /\(ids: /],
    [{ ...target, ids: [1, 2.5] }, /\(ids\.1: /],
    [{ ...target, ids: [`${CANARY_TEXT}\u0000`] }, /\(ids\.0: /],
    [{ ...target, ids: Array(1001).fill(1) }, /\(ids: /],
    [{ ...target, ids: [1], schema: undefined }, /\(schema: /],
  ];
  for (const [message, reason] of cases) {
    const checked = checkJobMessage(message);
    assert.ok("error" in checked, JSON.stringify(message).slice(0, 100));
    assert.match(checked.error, reason);
    assert.ok(!checked.error.includes(CANARY_TEXT), checked.error);
  }
  // More rows than a request may carry, packed messages expanded: the body fails whole.
  const many = Array.from({ length: 11 }, (_, i) => ({
    ...target,
    ids: Array.from({ length: 1000 }, (_, j) => j + 1),
    jobId: i + 1,
  }));
  assert.ok("error" in parseJobBatch(many));
});
