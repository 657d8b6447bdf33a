// Chunked targets: the drain rate of a backfill of long markdown documents
// (rows/s and chunks/s, `worker --once -c 4`), and what a one-paragraph edit
// of a 100-chunk document costs the provider, against re-embedding every
// chunk of the document (what pgai's vectorizer does on any change).
import { fmt, Section } from "../report.ts";
import { BATCH_SIZE, drainOnce } from "./drain.ts";
import { type BenchContext, cloneDb, DIMENSIONS, MODEL, providerCost, type Sql } from "../stack.ts";
import { editParagraph, makeDocument } from "../../devtools/documents.ts";
import { splitIntoChunks } from "../../supabase/functions/_shared/chunking/split.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";

const SETTINGS = { splitter: "markdown" as const, chunkSize: 256, chunkOverlap: 32 };

export interface ChunkedFigures {
  documents: number;
  paragraphs: number;
  chunks: number;
  drainSeconds: number;
  rowsPerSecond: number;
  chunksPerSecond: number;
  editChunks: number;
  editInputs: number;
  editRequests: number;
  /** The drained chunks copied into a table without index, and an HNSW index built on it in bulk. */
  plainSeconds: number;
  bulkIndexSeconds: number;
  section: Section;
}

async function attachArticles(sql: Sql): Promise<void> {
  await sql.unsafe(`
    create table public.articles (id bigint primary key, title text not null, body text not null);
    create function public.article_text(a public.articles) returns text language sql immutable
      as $$ select a.body $$;
  `).simple();
  await sql`
    select util.enable_embeddings('public.articles', 'article_text', destination => 'public.article_chunks',
      model => ${MODEL}, dimensions => ${DIMENSIONS}, chunk_size => ${SETTINGS.chunkSize},
      chunk_overlap => ${SETTINGS.chunkOverlap}, splitter => ${SETTINGS.splitter})`;
}

/** A document of about `chunks` chunks with the bench's settings. */
function documentOfChunks(seed: number, chunks: number): { text: string; chunks: number } {
  const counter = tokenCounterFor(MODEL);
  for (let paragraphs = 20;; paragraphs += 10) {
    const text = makeDocument(seed, paragraphs);
    const n = splitIntoChunks(text, SETTINGS, counter).length;
    if (n >= chunks) return { text, chunks: n };
  }
}

export async function chunkedScenario(ctx: BenchContext): Promise<ChunkedFigures> {
  const documents = ctx.quick ? 40 : 200;
  const paragraphs = 60;
  const db = await cloneDb("chunked");
  try {
    await attachArticles(db.sql);
    for (let i = 1; i <= documents; i += 50) {
      const rows = Array.from(
        { length: Math.min(50, documents - i + 1) },
        (_, k) => ({ id: i + k, title: `doc ${i + k}`, body: makeDocument(i + k, paragraphs) }),
      );
      await db.sql`insert into articles ${db.sql(rows)}`;
    }
    const drainSeconds = await drainOnce(ctx, db.url);
    const [{ chunks }] = await db.sql`select count(*)::int as chunks from article_chunks`;
    ctx.log(JSON.stringify({ scenario: "chunked", documents, chunks, drainSeconds }));
    // Where the drain's time goes: the same rows written without the HNSW
    // index, and the index then built in bulk.
    let t = performance.now();
    await db.sql`create table chunks_copy as select * from article_chunks`;
    const plainSeconds = (performance.now() - t) / 1000;
    t = performance.now();
    await db.sql`create index on chunks_copy using hnsw (embedding extensions.halfvec_cosine_ops)`;
    const bulkIndexSeconds = (performance.now() - t) / 1000;

    // The edit: a document of about 100 chunks, embedded, then one paragraph changed.
    const big = documentOfChunks(10_000, 100);
    await db.sql`insert into articles values (0, 'big', ${big.text})`;
    await drainOnce(ctx, db.url);
    const edit = await providerCost(ctx.fake, async () => {
      await db.sql`update articles set body = ${editParagraph(big.text, 40)} where id = 0`;
      await drainOnce(ctx, db.url);
    });
    const figures = {
      documents,
      paragraphs,
      chunks,
      drainSeconds: Number(drainSeconds.toFixed(2)),
      rowsPerSecond: documents / drainSeconds,
      chunksPerSecond: chunks / drainSeconds,
      editChunks: big.chunks,
      editInputs: edit.inputs,
      editRequests: edit.requests,
      plainSeconds: Number(plainSeconds.toFixed(2)),
      bulkIndexSeconds: Number(bulkIndexSeconds.toFixed(2)),
    };
    ctx.log(JSON.stringify({ scenario: "chunked", ...figures }));
    const section = new Section("Chunked targets");
    section.text(`\`util.enable_embeddings(..., destination => 'public.article_chunks', splitter =>
'${SETTINGS.splitter}', chunk_size => ${SETTINGS.chunkSize}, chunk_overlap => ${SETTINGS.chunkOverlap})\`
on a table of ${documents} markdown documents of ${paragraphs} paragraphs
(devtools/documents.ts makeDocument), drained by \`worker --once -c 4 --batch-size ${BATCH_SIZE}\`
(each job is one document; its chunks are embedded in provider batches across the documents of
the batch). Then one paragraph of a ${big.chunks}-chunk document is edited and drained again.`);
    section.table(
      ["documents", "chunks", "drain s", "rows/s", "chunks/s"],
      [[
        documents,
        chunks,
        fmt(figures.drainSeconds),
        fmt(figures.rowsPerSecond),
        fmt(figures.chunksPerSecond),
      ]],
    );
    section.text(`Where the drain's time goes: copying the same ${chunks} rows into a table without
an index took ${fmt(figures.plainSeconds)} s, and building an HNSW index on that copy in bulk
${
      fmt(figures.bulkIndexSeconds)
    } s. The HNSW index is where the drain's time goes: the rows alone write in seconds, the index
built over them in bulk takes far longer, and inserting vectors into it one at a time, as a
drain does, costs more still (pgvector advises building HNSW indexes after a load). For a large first
backfill, drop the destination's \`<destination>_embedding_idx\` and create it again once the
backfill is done.`);
    section.table(
      [
        "one-paragraph edit of a document of",
        "provider inputs (autoembed)",
        "requests",
        "re-embedding every chunk (pgai)",
      ],
      [[`${big.chunks} chunks`, edit.inputs, edit.requests, big.chunks]],
    );
    return { ...figures, section };
  } finally {
    await db.drop();
  }
}
