// Search: latency of the search function on 100,000 rows of halfvec(1536)
// with an HNSW index (halfvec_cosine_ops), vector and hybrid, with the query
// vector from the provider (cache miss) and from the function's query cache
// (hit), and the provider's share of a miss. The rows are embedded by the
// pipeline itself (worker --once -c 4, fake provider), the index built
// afterwards; the handler runs in this process (no gateway hop), called as
// the anon role with the local anon key, and reports its own split of each
// request (embed_ms, query_ms) in its log line.
import { LOCAL_JWT_SECRET } from "../../local/config.ts";
import { localJwt } from "../../local/functions.ts";
import { createSearchHandler } from "../../supabase/functions/search/handler.ts";
import { fmt, percentile, Section } from "../report.ts";
import { drainOnce } from "./drain.ts";
import {
  attach,
  type BenchContext,
  cloneDb,
  counts,
  DIMENSIONS,
  PROVIDER_LATENCY_MS,
  providerEnv,
  type Sql,
} from "../stack.ts";

/** Words the rows and queries are made of: full-text queries match some rows, not all. */
export const VOCABULARY = [
  "postgres",
  "vector",
  "index",
  "queue",
  "trigger",
  "function",
  "schema",
  "table",
  "column",
  "embedding",
  "search",
  "hybrid",
  "policy",
  "role",
  "token",
  "cache",
  "latency",
  "replica",
  "backup",
  "restore",
  "partition",
  "vacuum",
  "analyze",
  "planner",
  "cost",
  "join",
  "merge",
  "hash",
  "btree",
  "gist",
  "gin",
  "brin",
  "lock",
  "deadlock",
  "commit",
  "rollback",
  "savepoint",
  "cursor",
  "sequence",
  "identity",
  "domain",
  "enum",
  "range",
  "array",
  "json",
  "jsonb",
  "text",
  "unicode",
  "collation",
  "extension",
  "cron",
  "queue",
  "worker",
  "batch",
  "stream",
  "socket",
  "pooler",
  "session",
  "transaction",
  "snapshot",
  "isolation",
  "serializable",
  "wal",
  "checkpoint",
  "archive",
  "logical",
  "physical",
  "slot",
  "publication",
  "subscription",
  "trigram",
  "stemming",
  "dictionary",
  "thesaurus",
  "ranking",
  "neighbour",
  "distance",
  "cosine",
  "graph",
  "layer",
];

export interface SearchRun {
  label: string;
  samples: number;
  p50: number;
  p99: number;
  /** Median of the handler's provider time (embed_ms) over the requests, ms. */
  embedP50: number;
  /** Median share of the request spent in the provider call. */
  providerShare: number;
  /** Median of the handler's row query time (query_ms: the transaction as the caller), ms. */
  queryP50: number;
}

export interface SearchFigures {
  rows: number;
  drainSeconds: number;
  indexSeconds: number;
  runs: SearchRun[];
  section: Section;
}

interface Event {
  embed_ms: number;
  query_ms: number;
  total_ms: number;
  results: number;
}

/** Query `i`: three words of the vocabulary, a distinct combination per i (i < 84³). */
export function queryText(i: number): string {
  const n = VOCABULARY.length;
  return [i % n, Math.floor(i / n) % n, Math.floor(i / n / n) % n]
    .map((k) => VOCABULARY[k]).join(" ");
}

/** `rows` rows of about 40 words of the vocabulary each, in one statement (random, so rows differ). */
export async function insertVocabularyRows(sql: Sql, rows: number): Promise<void> {
  const words = `array[${VOCABULARY.map((w) => `'${w}'`).join(",")}]`;
  await sql.unsafe(`
    insert into public.bench_docs (title, body)
    select 'document ' || g,
           (select string_agg((${words})[1 + floor(random() * ${VOCABULARY.length})::int], ' ')
              from generate_series(1, 40 + (g % 2)))
      from generate_series(1, ${rows}) g`);
}

export async function searchScenario(ctx: BenchContext): Promise<SearchFigures> {
  const rows = ctx.quick ? 10_000 : 100_000;
  const vectorQueries = ctx.quick ? 50 : 200;
  // Without a full-text index each hybrid query scans the table: a few are enough.
  const hybridQueries = 5;
  const db = await cloneDb("search");
  const handler = { current: null as ReturnType<typeof createSearchHandler> | null };
  try {
    await attach(db.sql, false);
    await insertVocabularyRows(db.sql, rows);
    const drainSeconds = await drainOnce(ctx, db.url);
    const { embedded } = await counts(db.sql);
    if (embedded !== rows) throw new Error(`${embedded}/${rows} embedded`);
    ctx.log(`bench: search: ${rows} rows embedded in ${drainSeconds.toFixed(1)} s`);

    const indexStarted = performance.now();
    await db.sql.begin(async (tx) => {
      await tx`set local maintenance_work_mem = '2GB'`;
      await tx`create index on public.bench_docs using hnsw (embedding extensions.halfvec_cosine_ops)`;
    });
    await db.sql`vacuum analyze public.bench_docs`;
    const indexSeconds = (performance.now() - indexStarted) / 1000;
    ctx.log(`bench: search: HNSW index built in ${indexSeconds.toFixed(1)} s`);

    const events: Event[] = [];
    const env: Record<string, string> = {
      SUPABASE_DB_URL: db.url,
      SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
      // The function's default (10 s) cuts off a hybrid scan of 100,000 rows on a busy machine.
      SEARCH_STATEMENT_TIMEOUT_MS: "120000",
      ...providerEnv(ctx.fake),
    };
    handler.current = createSearchHandler({
      env: (k) => env[k],
      log: (line) => {
        const e = JSON.parse(line);
        if (e.event === "search") events.push(e);
      },
    });
    const anonKey = await localJwt("anon");
    const search = async (body: Record<string, unknown>): Promise<{ ms: number; e: Event }> => {
      const started = performance.now();
      const res = await handler.current!.fetch(
        new Request("http://bench/search", {
          method: "POST",
          headers: { authorization: `Bearer ${anonKey}`, "content-type": "application/json" },
          body: JSON.stringify(body),
        }),
      );
      const ms = performance.now() - started;
      if (res.status !== 200) throw new Error(`search answered ${res.status}: ${await res.text()}`);
      await res.body?.cancel();
      return { ms, e: events[events.length - 1] };
    };
    // Warm the pool and the index pages once (not measured).
    await search({ table: "bench_docs", query: "warm up", match_count: 10 });

    const runs: SearchRun[] = [];
    const measure = async (label: string, mode: string, count: number, offset: number) => {
      for (const cache of ["miss", "hit"]) {
        const ms: number[] = [];
        const embed: number[] = [];
        const query: number[] = [];
        const share: number[] = [];
        for (let i = 0; i < count; i++) {
          const r = await search({
            table: "bench_docs",
            query: queryText(offset + i),
            match_count: 10,
            mode,
          });
          ms.push(r.ms);
          embed.push(r.e.embed_ms);
          query.push(r.e.query_ms);
          share.push(r.e.embed_ms / Math.max(1, r.e.total_ms));
        }
        const run: SearchRun = {
          label: `${label}, cache ${cache}`,
          samples: count,
          p50: percentile(ms, 50),
          p99: percentile(ms, 99),
          embedP50: percentile(embed, 50),
          providerShare: percentile(share, 50),
          queryP50: percentile(query, 50),
        };
        ctx.log(JSON.stringify(run));
        runs.push(run);
      }
    };
    await measure("vector", "vector", vectorQueries, 0);
    await measure("hybrid, no full-text index", "hybrid", hybridQueries, 100_000);
    // An expression index on exactly what the hybrid query computes (the content
    // function is immutable and inlined): the full-text side stops scanning the table.
    const ftsStarted = performance.now();
    await db.sql.unsafe(`create index bench_docs_fts on public.bench_docs
      using gin (to_tsvector('english'::regconfig, public.bench_docs_input(bench_docs)))`);
    await db.sql`analyze public.bench_docs`;
    const ftsSeconds = (performance.now() - ftsStarted) / 1000;
    ctx.log(`bench: search: full-text GIN index built in ${ftsSeconds.toFixed(1)} s`);
    await measure("hybrid, GIN index", "hybrid", vectorQueries, 200_000);

    const section = new Section(`Search: latency on ${rows.toLocaleString("en-US")} rows`);
    section.text(`${rows.toLocaleString("en-US")} rows of \`halfvec(${DIMENSIONS})\` in
\`bench_docs\` (about 40 words a row from an ${VOCABULARY.length}-word vocabulary), embedded by
\`worker --once -c 4\` in ${fmt(drainSeconds)} s, then an HNSW index (\`halfvec_cosine_ops\`,
default m 16, ef_construction 64; ef_search 40) built in ${fmt(indexSeconds)} s. The search
handler (supabase/functions/search/handler.ts) runs in the bench process and is called with the
local anon key (JWT verified in the function, role anon, no RLS policy on the table), match_count
10. "miss": each query text is new, so the query is embedded by the fake provider
(${PROVIDER_LATENCY_MS} ms a request); "hit": the same texts again, from the function's query cache.
Latency is the handler's whole answer (JWT check, target lookup, embedding, the transaction as the
caller, JSON); the provider share is the median of embed time / total time per request. Hybrid
without an index computes \`to_tsvector\` of the content function for every row at query time
(it scans the table); "GIN index" adds
\`create index ... using gin (to_tsvector('english', bench_docs_input(bench_docs)))\` (built in
${fmt(ftsSeconds)} s), which the hybrid query uses as it is.`);
    section.table(
      [
        "search",
        "requests",
        "p50 ms",
        "p99 ms",
        "row query p50 ms",
        "provider p50 ms",
        "provider share (median)",
      ],
      runs.map((r) => [
        r.label,
        r.samples,
        fmt(r.p50),
        fmt(r.p99),
        fmt(r.queryP50),
        fmt(r.embedP50),
        `${Math.round(r.providerShare * 100)}%`,
      ]),
    );
    return { rows, drainSeconds, indexSeconds, runs, section };
  } finally {
    await handler.current?.close();
    await db.drop();
  }
}
