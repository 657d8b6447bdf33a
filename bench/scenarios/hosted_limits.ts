// Inside the hosted limits: what one invocation of the `embed` and `search`
// functions costs in CPU time, peak memory and wall time, against what
// Supabase's hosted Edge Functions allow (2 s of CPU, 256 MB, 150 s wall on
// the free plan). Each function runs alone in a process of its own
// (bench/function_instance.ts), measured from outside: CPU is the process's
// utime + stime (/proc/<pid>/stat) across the request, peak memory its
// VmHWM (/proc/<pid>/status), reset before each request by writing 5 to
// /proc/<pid>/clear_refs, and the V8 heap the instance sampled itself.
//
// `embed` gets its batches the way push mode sends them: util.process_embeddings
// queues a call in pg_net's request table, and this scenario sends it, one at
// a time, to the instance (in place of pg_net's worker), until the queue is
// empty; the function's own continuation (util._embedding_request_done)
// queues the next call when rows were handed back.
import { LOCAL_JWT_SECRET } from "../../local/config.ts";
import { localJwt } from "../../local/functions.ts";
import { spawnDeno, type WorkerProcess } from "../../devtools/cli.ts";
import { makeDocument } from "../../devtools/documents.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import {
  DEFAULT_CPU_BUDGET_MS,
  DEFAULT_MAX_CHUNKS_PER_CALL,
  DEFAULT_TIME_BUDGET_MS,
} from "../../supabase/functions/_shared/settings.ts";
import { HEAP_HEADER, type HeapPeak } from "../function_instance.ts";
import { fmt, median, Section } from "../report.ts";
import { drainOnce } from "./drain.ts";
import { insertVocabularyRows, queryText } from "./search.ts";
import {
  attach,
  type BenchContext,
  type BenchDb,
  cloneDb,
  counts,
  DIMENSIONS,
  insertRows,
  MODEL,
  processCpuSeconds,
  PROVIDER_LATENCY_MS,
  providerEnv,
  type Sql,
  statusKb,
} from "../stack.ts";

/** Half of each hosted limit: what an invocation should stay under. */
export const HALF_LIMITS = { cpuMs: 1000, memoryMb: 128, wallMs: 120_000 };

const EMBED_SECRET = "autoembed-bench-secret";

/** The call's budget turned off, for the comparison rows: far more than any call takes. */
const NO_BUDGET = { EMBED_CPU_BUDGET_MS: "1000000", EMBED_MAX_CHUNKS_PER_CALL: "1000000" };
const UNBOUNDED = " — without the call's budget, as before";

/**
 * V8's heap capped at half the hosted memory limit, as a memory-limited
 * isolate is: V8 then collects garbage before it grows past the cap instead
 * of letting it pile up, and a call that needed more live heap would fail.
 * The comparison rows run without it (what the function took before).
 */
const HEAP_CAP_FLAGS = `--v8-flags=--max-old-space-size=${HALF_LIMITS.memoryMb}`;

/** Tokens of a long whole-row text: just under text-embedding-3-small's 8,191-token input limit. */
const LONG_TOKENS = 8_000;
/** Tokens of the chunked document. */
const DOCUMENT_TOKENS = 200_000;

/** One request to an instance, as measured from outside (and the heap from inside). */
export interface Invocation {
  status: number;
  body: string;
  cpuMs: number;
  /** VmHWM over the request, MB: the whole process, the runtime included. */
  peakRssMb: number;
  /** V8 heap committed plus memory held outside it (array buffers), peak sampled, MB. */
  heapMb: number;
  /** Of it, in use (live objects and garbage not yet collected), peak sampled, MB. */
  heapUsedMb: number;
  wallMs: number;
}

/** A function alone in its own process, measured per request. */
class Instance {
  /** Resets of VmHWM done, and of those that left it above VmRSS (the reset did not work). */
  static hwmResets = 0;
  static hwmKept = 0;

  private constructor(
    readonly name: string,
    private readonly process: WorkerProcess,
    readonly origin: string,
    /** CPU, peak memory and wall time from spawn to listening (module loading). */
    readonly boot: Invocation,
  ) {}

  static async start(
    name: "embed" | "search",
    env: Record<string, string>,
    heapCap = true,
  ): Promise<Instance> {
    const started = performance.now();
    const process = spawnDeno(
      ["run", "-A", ...(heapCap ? [HEAP_CAP_FLAGS] : []), "bench/function_instance.ts", name],
      env,
    );
    const line = await process.waitForLine(/"event":"listening"/, 60_000);
    const wallMs = performance.now() - started;
    const pid = process.child.pid;
    const port = JSON.parse(line).port;
    const boot: Invocation = {
      status: 0,
      body: "",
      cpuMs: processCpuSeconds(pid) * 1000,
      peakRssMb: statusKb(pid, "VmHWM") / 1024,
      heapMb: NaN,
      heapUsedMb: NaN,
      wallMs,
    };
    return new Instance(name, process, `http://127.0.0.1:${port}`, boot);
  }

  /** One request; `path` with its query string. */
  async call(path: string, init: RequestInit): Promise<Invocation> {
    const pid = this.process.child.pid;
    // Resets VmHWM to the current RSS (Linux 4.0+), so the peak is this request's.
    await Deno.writeTextFile(`/proc/${pid}/clear_refs`, "5");
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const kb = (field: string) =>
      Number(status.match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"))![1]);
    if (kb("VmHWM") > kb("VmRSS")) Instance.hwmKept++;
    Instance.hwmResets++;
    const cpu = processCpuSeconds(pid);
    const started = performance.now();
    const res = await fetch(`${this.origin}${path}`, init);
    const body = await res.text();
    const wallMs = performance.now() - started;
    const cpuMs = (processCpuSeconds(pid) - cpu) * 1000;
    const heap = JSON.parse(res.headers.get(HEAP_HEADER) ?? "null") as HeapPeak | null;
    return {
      status: res.status,
      body,
      cpuMs,
      peakRssMb: statusKb(pid, "VmHWM") / 1024,
      heapMb: heap ? (heap.heapTotal + heap.external) / 2 ** 20 : NaN,
      heapUsedMb: heap ? (heap.heapUsed + heap.external) / 2 ** 20 : NaN,
      wallMs,
    };
  }

  async stop(): Promise<void> {
    await this.process.stop();
  }
}

/** What one kind of invocation cost, over every call measured. */
export interface LimitRow {
  fn: "embed" | "search";
  label: string;
  calls: Invocation[];
  /** How the work was spread over calls, e.g. "2 calls per batch". */
  spread?: string;
  /** Measured in Postgres, not in the function (wall only). */
  sqlOnly?: boolean;
  /** The function with its CPU budget turned off, for comparison (not as it ships). */
  unbounded?: boolean;
}

export interface HostedLimitsFigures {
  rows: LimitRow[];
  /** Every function invocation under half of each limit (memory: the V8 heap in use). */
  withinHalf: boolean;
  /** The worst invocation of any kind: CPU ms, peak RSS MB, heap MB (in use, committed), wall ms. */
  worst: {
    cpuMs: number;
    peakRssMb: number;
    heapUsedMb: number;
    heapMb: number;
    wallMs: number;
  };
  section: Section;
}

/** A text of exactly `tokens` tokens of the model's tokenizer, distinct per seed. */
function textOfTokens(seed: number, tokens: number): string {
  const counter = tokenCounterFor(MODEL);
  for (let paragraphs = Math.ceil(tokens / 45);; paragraphs = Math.ceil(paragraphs * 1.2)) {
    const text = makeDocument(seed, paragraphs);
    if (counter.count(text) >= tokens) return counter.truncate(text, tokens);
  }
}

/** Push mode's next call to the function: the oldest request queued in pg_net, taken off the queue. */
async function takeCall(sql: Sql): Promise<{ path: string; init: RequestInit } | null> {
  const [request] = await sql<{ url: string; headers: Record<string, string>; body: string }[]>`
    delete from net.http_request_queue
     where id = (select min(id) from net.http_request_queue)
    returning url, headers, convert_from(body, 'utf8') as body`;
  if (!request) return null;
  const url = new URL(request.url);
  return {
    path: url.pathname + url.search,
    init: { method: "POST", headers: request.headers, body: request.body },
  };
}

/**
 * Sends the queued jobs to `instance` as push mode does, one call at a
 * time, until the queue is empty: a tick's call, then each continuation the
 * function asks for. Returns every call.
 */
async function drainThrough(sql: Sql, instance: Instance): Promise<Invocation[]> {
  const calls: Invocation[] = [];
  for (;;) {
    let next = await takeCall(sql);
    if (!next) {
      await sql`select util.process_embeddings(batch_size => 100, max_requests => 1)`;
      next = await takeCall(sql);
      if (!next) return calls;
    }
    const call = await instance.call(next.path, next.init);
    if (call.status !== 200) throw new Error(`embed answered ${call.status}: ${call.body}`);
    calls.push(call);
    if (calls.length > 100) throw new Error("the queue did not drain in 100 calls");
  }
}

/** A clone with push mode's secrets and no kick on change (this scenario sends every call). */
async function pushDb(label: string): Promise<BenchDb> {
  const db = await cloneDb(label);
  // The origin is replaced by the instance's: only the path and query are used.
  await db.sql`select vault.create_secret('http://function.invalid', 'project_url')`;
  await db.sql`select vault.create_secret(${EMBED_SECRET}, 'embed_secret')`;
  await db.sql`update util.settings set value = 'off' where name = 'kick_on_change'`;
  return db;
}

function embedEnv(ctx: BenchContext, db: BenchDb, extra: Record<string, string> = {}) {
  return { SUPABASE_DB_URL: db.url, EMBED_SECRET, ...providerEnv(ctx.fake), ...extra };
}

/** Inserts `count` rows whose text is about `tokens` tokens (title and body). */
async function insertLongRows(sql: Sql, count: number, tokens: number, seed: number) {
  const rows = Array.from({ length: count }, (_, i) => ({
    title: `document ${seed}-${i}`,
    body: textOfTokens(seed * 1000 + i, tokens - 10),
  }));
  await sql`insert into public.bench_docs ${sql(rows, "title", "body")}`;
}

async function assertDrained(sql: Sql, what: string) {
  const { embedded, queued } = await counts(sql);
  const [{ total }] = await sql`select count(*)::int as total from public.bench_docs`;
  if (queued !== 0 || embedded !== total) {
    throw new Error(`${what}: ${embedded}/${total} rows embedded, ${queued} queued`);
  }
}

/** embed: boot, cold start, and whole-row batches of short and of 8,000-token texts. */
async function wholeRowBatches(ctx: BenchContext, rows: LimitRow[]) {
  const db = await pushDb("limits_rows");
  const boot: LimitRow = {
    fn: "embed",
    label: "boot: module loading, before any request",
    calls: [],
  };
  const cold: LimitRow = {
    fn: "embed",
    label: "cold start: a new instance's first call, 100 rows of 1,000 tokens (the tokenizer's " +
      "rank table is parsed in it)",
    calls: [],
  };
  const short: LimitRow = {
    fn: "embed",
    label: "100 rows of short text (about 450 characters)",
    calls: [],
  };
  const long: LimitRow = {
    fn: "embed",
    label: `100 rows of ${LONG_TOKENS.toLocaleString("en-US")} tokens (whole-row target)`,
    calls: [],
  };
  let instance: Instance | undefined;
  try {
    await attach(db.sql, false);
    const coldRuns = ctx.quick ? 2 : 3;
    for (let i = 0; i < coldRuns; i++) {
      await instance?.stop();
      instance = await Instance.start("embed", embedEnv(ctx, db));
      boot.calls.push(instance.boot);
      await insertLongRows(db.sql, 100, 1_000, 100 + i);
      const calls = await drainThrough(db.sql, instance);
      cold.calls.push(calls[0]);
      await assertDrained(db.sql, "cold start");
    }
    const shortRuns = ctx.quick ? 2 : 5;
    for (let i = 0; i < shortRuns; i++) {
      await insertRows(db.sql, 100, `limits ${i}`, 1_000 * i);
      short.calls.push(...await drainThrough(db.sql, instance!));
      await assertDrained(db.sql, "short rows");
    }
    const longRuns = ctx.quick ? 1 : 3;
    let longCalls = 0;
    for (let i = 0; i < longRuns; i++) {
      await insertLongRows(db.sql, 100, LONG_TOKENS, 200 + i);
      const calls = await drainThrough(db.sql, instance!);
      longCalls += calls.length;
      long.calls.push(...calls);
      await assertDrained(db.sql, "long rows");
    }
    long.spread = `${fmt(longCalls / longRuns)} calls per 100 rows`;
    ctx.log(`bench: hosted limits: long rows in ${longCalls} calls over ${longRuns} batches`);

    await instance!.stop();
    instance = await Instance.start("embed", embedEnv(ctx, db, NO_BUDGET), false);
    await insertRows(db.sql, 100, "warm", 100_000); // not measured: the pools opened
    await drainThrough(db.sql, instance);
    // The rank table parsed (not measured), as for the runs above.
    await insertLongRows(db.sql, 1, 1_000, 99);
    await drainThrough(db.sql, instance);
    const before: LimitRow = {
      fn: "embed",
      label: long.label + UNBOUNDED,
      calls: [],
      unbounded: true,
    };
    for (let i = 0; i < (ctx.quick ? 1 : 2); i++) {
      await insertLongRows(db.sql, 100, LONG_TOKENS, 250 + i);
      before.calls.push(...await drainThrough(db.sql, instance));
      await assertDrained(db.sql, "long rows without the budget");
    }
    rows.push(boot, cold, short, long, before);
  } finally {
    await instance?.stop();
    await db.drop();
  }
}

/**
 * embed: one document of DOCUMENT_TOKENS tokens on a chunked target, per
 * splitter; with `extraEnv` NO_BUDGET, the comparison rows.
 */
async function chunkedDocument(
  ctx: BenchContext,
  rows: LimitRow[],
  extraEnv: Record<string, string> = {},
) {
  const unbounded = extraEnv === NO_BUDGET;
  const db = await pushDb("limits_chunked");
  let instance: Instance | undefined;
  try {
    const splitters = ["recursive", "markdown"] as const;
    for (const splitter of splitters) {
      await db.sql.unsafe(`
        create table public.articles_${splitter} (id bigint primary key, body text not null);
        create function public.article_text(a public.articles_${splitter}) returns text
          language sql immutable as $$ select a.body $$;
      `).simple();
      await db.sql`
        select util.enable_embeddings(${`public.articles_${splitter}`}, 'article_text',
          destination => ${`public.article_chunks_${splitter}`}, model => ${MODEL},
          dimensions => ${DIMENSIONS}, splitter => ${splitter})`;
    }
    instance = await Instance.start("embed", embedEnv(ctx, db, extraEnv), !unbounded);
    // Warm (not measured): the rank table parsed and the pools open, as for
    // every call after a cold start.
    await db.sql`insert into public.articles_recursive values (0, ${textOfTokens(1, 2_000)})`;
    await drainThrough(db.sql, instance);
    const runs = ctx.quick || unbounded ? 1 : 3;
    for (const splitter of splitters) {
      const row: LimitRow = {
        fn: "embed",
        label: `chunked target, one document of ${
          DOCUMENT_TOKENS.toLocaleString("en-US")
        } tokens, ${splitter} splitter (chunk_size 512, chunk_overlap 64)${
          unbounded ? UNBOUNDED : ""
        }`,
        calls: [],
        unbounded,
      };
      let chunks = 0;
      for (let i = 0; i < runs; i++) {
        const id = i + 1;
        const body = textOfTokens(
          300 + 10 * i + (splitter === "markdown" ? 1 : 0),
          DOCUMENT_TOKENS,
        );
        await db.sql.unsafe(`insert into public.articles_${splitter} values ($1, $2)`, [id, body]);
        row.calls.push(...await drainThrough(db.sql, instance));
        const [done] = await db.sql.unsafe(
          `select count(*)::int as n from public.article_chunks_${splitter} where source_id = $1`,
          [id],
        );
        if (done.n === 0) throw new Error(`${splitter}: the document has no chunks`);
        chunks = done.n;
      }
      row.spread = `${fmt(row.calls.length / runs)} calls per document (${chunks} chunks)`;
      rows.push(row);
    }
  } finally {
    await instance?.stop();
    await db.drop();
  }
}

/**
 * embed: a model change of a 20,000-row table: util.reembed (SQL, its first
 * sweep step), then the kick that runs the next step (util.process_embeddings
 * in the function), then the function's batches for the new model.
 */
async function modelChange(ctx: BenchContext, rows: LimitRow[]) {
  const total = ctx.quick ? 12_000 : 20_000;
  const db = await pushDb("limits_model");
  const reembed: LimitRow = {
    fn: "embed",
    label: `model change: util.reembed on ${
      total.toLocaleString("en-US")
    } rows (SQL, its first sweep step of 10,000 rows)`,
    calls: [],
    sqlOnly: true,
  };
  const kick: LimitRow = {
    fn: "embed",
    label: "model change: the tick's step, a kick call (util.process_embeddings: a sweep step " +
      "of 10,000 rows, then 4 calls queued)",
    calls: [],
  };
  const batch: LimitRow = {
    fn: "embed",
    label: "model change: a 100-row batch for the new model (the live column is fresh)",
    calls: [],
  };
  let instance: Instance | undefined;
  try {
    await attach(db.sql, false);
    await insertRows(db.sql, total, "model");
    await drainOnce(ctx, db.url);
    await assertDrained(db.sql, "model change table");
    instance = await Instance.start("embed", embedEnv(ctx, db));
    const runs = ctx.quick ? 1 : 3;
    for (let i = 0; i < runs; i++) {
      const model = i % 2 === 0 ? "text-embedding-3-large" : "text-embedding-ada-002";
      const started = performance.now();
      await db.sql`select util.reembed('public.bench_docs', model => ${model}, dimensions => 1536)`;
      reembed.calls.push({
        status: 200,
        body: "",
        cpuMs: NaN,
        peakRssMb: NaN,
        heapMb: NaN,
        heapUsedMb: NaN,
        wallMs: performance.now() - started,
      });
      // The first slice's jobs are dropped so that the tick's step runs now
      // (a sweep advances only while the queue is short).
      await db.sql`select pgmq.purge_queue('embedding_jobs')`;
      await db.sql`delete from util.embedding_requests`;
      await db.sql`delete from net.http_request_queue`;
      const call = await instance.call("/functions/v1/embed?kick=1", {
        method: "POST",
        headers: { authorization: `Bearer ${EMBED_SECRET}`, "content-type": "application/json" },
        body: "[]",
      });
      if (call.status !== 200) throw new Error(`kick answered ${call.status}: ${call.body}`);
      const [{ checked }] = await db.sql`
        select sweep_checked::int as checked from util.embedding_targets where shadow_of is not null`;
      if (checked < 20_000 && total >= 20_000) {
        throw new Error(`the kick's sweep step did not run: ${checked} rows checked`);
      }
      kick.calls.push(call);
      for (let k = 0; k < 2; k++) {
        const next = await takeCall(db.sql);
        if (!next) throw new Error("the kick queued no call");
        const done = await instance.call(next.path, next.init);
        if (done.status !== 200) throw new Error(`embed answered ${done.status}: ${done.body}`);
        batch.calls.push(done);
      }
    }
  } finally {
    await instance?.stop();
    await db.drop();
  }
  rows.push(reembed, kick, batch);
}

/** search: boot, cold start, vector and hybrid queries on 10,000 rows with an HNSW index. */
async function searches(ctx: BenchContext, rows: LimitRow[]) {
  const total = 10_000;
  const db = await cloneDb("limits_search");
  const boot: LimitRow = {
    fn: "search",
    label: "boot: module loading, before any request",
    calls: [],
  };
  const cold: LimitRow = {
    fn: "search",
    label: "cold start: a new instance's first search (vector, JWT verified, query embedded)",
    calls: [],
  };
  const vector: LimitRow = { fn: "search", label: "vector, match_count 10", calls: [] };
  const wide: LimitRow = { fn: "search", label: "vector, match_count 100", calls: [] };
  const hybrid: LimitRow = {
    fn: "search",
    label: `hybrid, match_count 10 (no full-text index: every row's tsvector computed)`,
    calls: [],
  };
  let instance: Instance | undefined;
  try {
    await attach(db.sql, false);
    await insertVocabularyRows(db.sql, total);
    await drainOnce(ctx, db.url);
    await assertDrained(db.sql, "search table");
    await db
      .sql`create index on public.bench_docs using hnsw (embedding extensions.halfvec_cosine_ops)`;
    await db.sql`vacuum analyze public.bench_docs`;
    const env = {
      SUPABASE_DB_URL: db.url,
      SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
      ...providerEnv(ctx.fake),
    };
    const anonKey = await localJwt("anon");
    let query = 0;
    const search = async (into: LimitRow, body: Record<string, unknown>) => {
      const call = await instance!.call("/functions/v1/search", {
        method: "POST",
        headers: { authorization: `Bearer ${anonKey}`, "content-type": "application/json" },
        body: JSON.stringify({ table: "bench_docs", query: queryText(query++), ...body }),
      });
      if (call.status !== 200) throw new Error(`search answered ${call.status}: ${call.body}`);
      const { results } = JSON.parse(call.body);
      if (results.length !== (body.match_count ?? 10)) {
        throw new Error(`search found ${results.length} rows`);
      }
      into.calls.push(call);
    };
    const coldRuns = ctx.quick ? 2 : 3;
    for (let i = 0; i < coldRuns; i++) {
      await instance?.stop();
      instance = await Instance.start("search", env);
      boot.calls.push(instance.boot);
      await search(cold, { match_count: 10 });
    }
    const runs = ctx.quick ? 3 : 10;
    for (let i = 0; i < runs; i++) await search(vector, { match_count: 10 });
    for (let i = 0; i < runs / 2; i++) await search(wide, { match_count: 100 });
    for (let i = 0; i < runs / 2; i++) await search(hybrid, { match_count: 10, mode: "hybrid" });
  } finally {
    await instance?.stop();
    await db.drop();
  }
  rows.push(boot, cold, vector, wide, hybrid);
}

function cpuModel(): string {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  return cpuinfo.match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "unknown";
}

/** "median (max)" of a figure over the calls. */
function medianMax(values: number[], digits?: number): string {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return "—";
  if (finite.length === 1) return fmt(finite[0], digits);
  return `${fmt(median(finite), digits)} (${fmt(Math.max(...finite), digits)})`;
}

export async function hostedLimitsScenario(ctx: BenchContext): Promise<HostedLimitsFigures> {
  ctx.log("hosted limits: embed and search, one process each");
  const rows: LimitRow[] = [];
  await wholeRowBatches(ctx, rows);
  await chunkedDocument(ctx, rows);
  await chunkedDocument(ctx, rows, NO_BUDGET);
  await modelChange(ctx, rows);
  await searches(ctx, rows);
  const calls = rows.filter((r) => !r.sqlOnly && !r.unbounded && !r.label.startsWith("boot"))
    .flatMap((r) => r.calls);
  const worst = {
    cpuMs: Math.max(...calls.map((c) => c.cpuMs)),
    peakRssMb: Math.max(...calls.map((c) => c.peakRssMb)),
    heapUsedMb: Math.max(...calls.map((c) => c.heapUsedMb)),
    heapMb: Math.max(...calls.map((c) => c.heapMb)),
    wallMs: Math.max(...calls.map((c) => c.wallMs)),
  };
  const embedRow = (prefix: string) =>
    rows.find((r) => r.fn === "embed" && r.label.startsWith(prefix))!.calls.map((c) => c.cpuMs);
  const bootMs = median(embedRow("boot"));
  const coldMs = median(embedRow("cold start"));
  const unbounded = rows.filter((r) => r.unbounded).flatMap((r) => r.calls);
  const unboundedWorst = {
    cpuMs: Math.max(...unbounded.map((c) => c.cpuMs)),
    heapUsedMb: Math.max(...unbounded.map((c) => c.heapUsedMb)),
  };
  const withinHalf = worst.cpuMs < HALF_LIMITS.cpuMs &&
    worst.heapUsedMb < HALF_LIMITS.memoryMb && worst.wallMs < HALF_LIMITS.wallMs;
  for (const r of rows) {
    ctx.log(JSON.stringify({
      scenario: "hosted-limits",
      fn: r.fn,
      label: r.label,
      calls: r.calls.length,
      cpuMs: medianMax(r.calls.map((c) => c.cpuMs)),
      peakRssMb: medianMax(r.calls.map((c) => c.peakRssMb)),
      heapUsedMb: medianMax(r.calls.map((c) => c.heapUsedMb)),
      heapMb: medianMax(r.calls.map((c) => c.heapMb)),
      wallMs: medianMax(r.calls.map((c) => c.wallMs)),
      spread: r.spread,
      each: r.calls.map((
        c,
      ) => [Math.round(c.cpuMs), Math.round(c.heapUsedMb), Math.round(c.wallMs)]),
    }));
  }
  const section = new Section("Hosted limits: CPU, memory and wall time per invocation");
  section.text(`Supabase's hosted Edge Functions give a request 2 s of CPU time (I/O waits not
counted) and 256 MB of memory; the wall clock is 150 s on the free plan and 400 s on paid plans, and a
request is cut after 150 s without an answer. The local stack runs the functions under plain Deno,
with none of these limits, so this measures each invocation against half of each: ${HALF_LIMITS.cpuMs} ms
of CPU, ${HALF_LIMITS.memoryMb} MB, ${HALF_LIMITS.wallMs / 1000} s.

How: each function runs alone in a Deno process of its own (bench/function_instance.ts, serving the
real handler with a deployed function's environment), with V8's old space capped at
${HALF_LIMITS.memoryMb} MB (\`--max-old-space-size\`), so V8 collects as a memory-limited isolate must
and a call that needed more live heap would fail; the rows "without the call's budget" run uncapped.
\`embed\` gets its calls as push mode sends them: \`util.process_embeddings(batch_size => 100,
max_requests => 1)\` queues a call in pg_net's request table and the bench sends it (in place of
pg_net's worker), one at a time, then each call the function's continuation queues (rows handed
back), until the queue is empty. The provider is devtools/fake_openai.ts on loopback
(${PROVIDER_LATENCY_MS} ms a request), model ${MODEL}, \`halfvec(${DIMENSIONS})\`. Per call:
**CPU** is the delta of the process's utime + stime (/proc/<pid>/stat, 10 ms ticks) across the
request: the whole process, V8's collector threads, the runtime's I/O threads and the heap
sampling below included, so an upper bound of what the platform counts for the request. **Peak RSS** is VmHWM
(/proc/<pid>/status), reset before each call by writing 5 to /proc/<pid>/clear_refs: on this
kernel (${Deno.osRelease()}) the write did reset VmHWM to the current RSS (${
    Instance.hwmResets - Instance.hwmKept
  } of ${Instance.hwmResets} resets checked). The reset goes down to the current RSS, not to the
boot's: what V8 keeps from earlier calls stays in it, and so does the runtime's own memory (about
78 MB at boot, before any request: Deno, V8 and the loaded modules), so RSS is an upper bound.
**V8 heap** is the instance's own (V8's heap statistics, as \`Deno.memoryUsage()\` reports
them), sampled every 50 ms while the call runs and at its end: in use (live objects and garbage not yet collected) / committed, each with memory held
outside the heap (array buffers). **Wall** is the request's latency. Figures are medians over the
calls, the largest in brackets. The machine (${navigator.hardwareConcurrency} cores, ${cpuModel()}) is
shared with other work (see the stamp's load average): walls are noisy; CPU time is the robust
figure.

The embed function bounds each call itself (supabase/functions/_shared/call_budget.ts):
\`EMBED_CPU_BUDGET_MS\` (${DEFAULT_CPU_BUDGET_MS} ms) of splitting texts and counting tokens, and
\`EMBED_MAX_CHUNKS_PER_CALL\` (${DEFAULT_MAX_CHUNKS_PER_CALL}) chunks. Once either is used, rows not started go back to the
queue at once, without spending an attempt, and a long document's split stops after its current
segment: its chunks so far, with their vectors, go to the row's draft (\`util.chunk_set_drafts\`)
and the next call continues; the last one writes the whole chunk set in one transaction.
\`EMBED_TIME_BUDGET_MS\` (${
    DEFAULT_TIME_BUDGET_MS / 1000
  } s) stops new provider requests, so a call ends within about 115 s.`);
  section.table(
    [
      "function",
      "invocation",
      "calls",
      "CPU ms",
      "peak RSS MB",
      "V8 heap in use MB",
      "V8 heap committed MB",
      "wall ms",
    ],
    rows.map((r) => [
      r.fn,
      r.label + (r.spread ? `; ${r.spread}` : ""),
      r.calls.length,
      medianMax(r.calls.map((c) => c.cpuMs)),
      medianMax(r.calls.map((c) => c.peakRssMb)),
      medianMax(r.calls.map((c) => c.heapUsedMb)),
      medianMax(r.calls.map((c) => c.heapMb)),
      medianMax(r.calls.map((c) => c.wallMs)),
    ]),
  );
  section.text(`What the figures say, and what is left:

- With the call's budget, the worst call took ${fmt(worst.cpuMs)} ms of CPU. Without it, one call
  with a 200,000-token document took up to ${fmt(unboundedWorst.cpuMs)} ms (the hosted runtime
  stops a call at 2,000) and ${fmt(unboundedWorst.heapUsedMb)} MB of heap; with it, the document
  takes several calls of a few hundred milliseconds each.
- A new instance first loads its modules (boot: ${fmt(bootMs)} ms of CPU, before the first request
  is read), then its first call parses the tokenizer's rank table and runs every code path for the
  first time (${fmt(coldMs)} ms; a call that counts tokens is handed back work once the parse has
  used the CPU budget). Whether the platform charges the boot to that first request cannot be seen
  from here; together they come to ${fmt(bootMs + coldMs)} ms, ${
    bootMs + coldMs < HALF_LIMITS.cpuMs ? "under" : "over"
  } half the limit${bootMs + coldMs < 2000 ? " and under the 2 s" : ""}.
- Memory: the V8 heap in use stays well under ${HALF_LIMITS.memoryMb} MB, and every call ran with
  the old space capped there. The process RSS does not: about 78 MB of it is there at boot (Deno,
  V8, the modules), and V8 keeps what it once took; it is an upper bound of what the platform
  counts, not a measure of it.
- Wall: the last call of a long document writes its whole chunk set, every chunk into the
  destination's HNSW index, in one transaction: seconds for 1,000 to 1,500 chunks here. That time
  is Postgres's (the function waits), but it grows with the document: a document of millions of
  tokens would bring that one call near the wall limits.
- A text is split across calls only between segments, which end at blank lines: a long text
  without paragraph breaks, or one attached with \`splitter => 'none'\`, is split in one call.
- CPU is the whole process's, V8's collector and the runtime's threads included: an upper bound of
  the isolate's own.`);
  return { rows, withinHalf, worst, section };
}
