// What `npm start` shows once the stack is up: the seeded demo tables
// embedded, searched the way an application would, edited and re-embedded.
import { createClient } from "@supabase/supabase-js";
import type postgres from "postgres";
import { API_URL } from "./config.ts";
import type { ModelChoice } from "./default_model.ts";
import { localJwt } from "./functions.ts";
import { say } from "./proc.ts";
import { withSql } from "./sql.ts";
import { sleep } from "../supabase/functions/_shared/sleep.ts";

/**
 * The demo table's status row. `next_model` is the model a change in progress
 * builds beside the live column (null when none), read through to_jsonb so
 * that this works whether or not the status view has that column.
 */
async function demoStatus(sql: postgres.Sql) {
  const [s] = await sql`
    select total_rows::int as total, embedded::int as embedded, missing::int as missing,
           stale::int as stale, queued::int as queued, model, last_error,
           to_jsonb(s) ->> 'next_model' as next_model
      from util.embedding_status_exact() s where schema_name = 'public' and table_name = 'documents'`;
  return s as
    | {
      total: number;
      embedded: number;
      missing: number;
      stale: number;
      queued: number;
      model: string;
      last_error: string | null;
      next_model: string | null;
    }
    | undefined;
}

/**
 * Waits until the demo table has no missing or stale embeddings and no model
 * change in progress; returns the status row.
 */
async function waitForDemo(sql: postgres.Sql, what: string) {
  const started = Date.now();
  let nextReport = 10_000;
  for (;;) {
    const s = await demoStatus(sql);
    if (s && s.missing === 0 && s.stale === 0 && s.queued === 0 && s.next_model === null) {
      say(
        `demo: ${what}: ${s.embedded}/${s.total} rows embedded by ${s.model} in ${
          Date.now() - started
        } ms`,
      );
      return s;
    }
    const waited = Date.now() - started;
    if (waited > 180_000) {
      throw new Error(
        `public.documents not embedded after 180 s (last error: ${s?.last_error ?? "none"})`,
      );
    }
    if (waited >= nextReport) {
      nextReport += 10_000;
      // Jobs of calls lost while the stack was down wait out their visibility timeout (2 min).
      const moving = s?.next_model ? `, moving to ${s.next_model}` : "";
      say(
        `demo: waiting: ${s?.queued} jobs queued, ${s?.missing} rows missing, ${s?.stale} stale` +
          moving +
          " (jobs of calls lost while the stack was down come back after their visibility timeout)",
      );
    }
    await sleep(100);
  }
}

/**
 * Searches the way an application would: supabase-js with the anon key calls
 * the search function, which embeds the query with the table's model and
 * searches as the caller. Returns the hits.
 */
async function searchAsAnon<Hit>(
  body: { table: string; query: string; match_count: number },
): Promise<Hit[]> {
  const supabase = createClient(API_URL, await localJwt("anon"), {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const { data, error } = await supabase.functions.invoke("search", { body });
  if (error) throw new Error(`search failed: ${error.message}`);
  return data.results;
}

/** Answers a question on public.documents and prints its hits. */
async function answer(question: string) {
  const hits = await searchAsAnon<{ similarity: number; row: { title: string } }>({
    table: "documents",
    query: question,
    match_count: 3,
  });
  say(`demo: supabase.functions.invoke('search', "${question}") with the anon key:`);
  for (const hit of hits) {
    console.log(`    ${hit.similarity.toFixed(3)}  ${hit.row.title}`);
  }
}

/**
 * Shows the pipeline working on the seeded demo table: moves it to the
 * configured default model if it has another, starts a drain (the tick would,
 * within 10 s), waits until every document is embedded, answers a search,
 * edits a row and waits for its re-embedding.
 */
export async function showDemo(dbUrl: string, choice: ModelChoice): Promise<void> {
  await withSql(dbUrl, async (sql) => {
    const [demo] = await sql`select to_regclass('public.documents') is not null as present`;
    if (!demo.present) return;
    const status = await demoStatus(sql);
    const target = status?.next_model ?? status?.model;
    if (status && target !== choice.model) {
      const [{ n }] = await sql`
        select util.reembed('public.documents', 'embedding', ${choice.model}, 1536) as n`;
      say(`demo: public.documents moves from ${target} to ${choice.model}: ${n} rows queued`);
    }
    await sql`select util.process_embeddings()`;
    await waitForDemo(sql, "initial embedding");
    await answer("run SQL on a schedule");
    await sql`
      update public.documents
         set content = 'pg_cron runs SQL on a schedule inside the database, e.g. every minute ' ||
                       '(edited ' || to_char(now(), 'HH24:MI:SS') || ').'
       where title = 'Scheduling jobs'`;
    say("demo: edited 'Scheduling jobs'; the update trigger queued it");
    await sql`select util.process_embeddings()`;
    await waitForDemo(sql, "after the edit");
    await answer("run SQL every minute");
    await showChunkedDemo(sql);
    say(
      "demo: try it yourself in psql: insert or update public.documents, then " +
        "select * from util.embedding_status;",
    );
  });
}

/**
 * The chunked demo table: waits until every article's sections are embedded,
 * then asks a question whose answer is one section of one article; the search
 * function on public.articles answers each article with its best section.
 */
async function showChunkedDemo(sql: postgres.Sql): Promise<void> {
  const status = async () => {
    const [s] = await sql`
      select model, total_rows::int, embedded::int, stale::int, queued::int, chunks::int
        from util.embedding_status_exact() where embedding_column = 'article_sections'`;
    return s;
  };
  let s = await status();
  if (!s) return;
  const deadline = Date.now() + 60_000;
  while (s.embedded < s.total_rows || s.stale > 0 || s.queued > 0) {
    if (Date.now() > deadline) {
      say(`demo: articles still embedding (${s.embedded}/${s.total_rows} rows); search skipped`);
      return;
    }
    await sql`select util.process_embeddings()`;
    await sleep(200);
    s = await status();
  }
  say(
    `demo: public.articles: ${s.total_rows} articles in ${s.chunks} sections (public.article_sections)`,
  );
  const question = "how do I rotate the secret of the embed function";
  const hits = await searchAsAnon<{ similarity: number; chunk: { text: unknown } }>({
    table: "articles",
    query: question,
    match_count: 3,
  });
  say(`demo: supabase.functions.invoke('search', {table: 'articles', query: "${question}"}):`);
  for (const hit of hits) {
    // The section's heading path (the markdown splitter keeps it in each chunk).
    const headings = String(hit.chunk.text).split("\n").filter((l) => l.startsWith("#"));
    console.log(`    ${hit.similarity.toFixed(3)}  ${headings.join(" > ").slice(0, 90)}`);
  }
}
