// `deno run -A bench/batch_lost_release.ts`: the batch lane's lost release,
// step by step (item 6 of the batch-lane section of RESULTS.md). The core's
// statements for one claimed batch-lane job and the batch tick's for the
// batch that holds its texts, interleaved as two workers (or a worker's
// slot and its tick) can interleave them: the job's texts are staged, the
// batch is taken, ends and releases the target's parked jobs, and only then
// is the job settled as parked. It prints whether the job is left hidden for
// batch_park_seconds with no batch open to release it (exit code 1 if so).
// With --in-order, the control: the job is settled before the batch ends.
import { stopCluster } from "../local/cluster.ts";
import {
  buildTemplate,
  cloneDb,
  DIMENSIONS,
  dropBenchDatabases,
  insertRows,
  MODEL,
  prepareStack,
} from "./stack.ts";

const ROWS = 10;
const inOrder = Deno.args.includes("--in-order");

const startedCluster = await prepareStack((line) => console.log(`setup: ${line}`));
let stranded = false;
try {
  await buildTemplate();
  const db = await cloneDb("lost_release");
  const sql = db.sql;
  try {
    await insertRows(sql, ROWS, "lost");
    // A batch-lane backfill: one packed message of ROWS row ids.
    await sql`
      select util.enable_embeddings('public.bench_docs', 'bench_docs_input', model => ${MODEL},
                                    lane => 'batch')`;
    const [{ target }] = await sql`select id as target from util.embedding_targets`;
    const [job] = await sql`select msg_id, message from pgmq.q_embedding_jobs`;
    const ids = job.message.ids as (string | number)[];

    // Worker slot: claims the message (hidden for its visibility timeout) ...
    await sql`
      update pgmq.q_embedding_jobs set vt = now() + interval '120 seconds', read_ct = read_ct + 1
       where msg_id = ${job.msg_id}`;
    // ... and stages its texts into the target's staging batch (core: resolveBatchLane).
    const inputs = ids.map((id) => ({ custom_id: `text-${id}`, input: `text ${id}`, tokens: 2 }));
    await sql`select util._stage_batch_inputs(${target}, ${JSON.stringify(inputs)}::text::jsonb)`;
    const [{ batch }] = await sql`select id::text as batch from util.embedding_batches`;

    // The tick, meanwhile: takes the batch, which completes; applies its output, ends it and
    // releases the target's parked jobs (util._finish_batch): this one is not parked yet.
    const tick = async () => {
      await sql`
        select count(*) from util._take_batch_inputs(${batch}::bigint, 50000, 180000000, null)`;
      await sql`
        update util.embedding_batch_inputs
           set vector = decode(repeat('00', ${DIMENSIONS * 4}), 'hex')
         where batch_id = ${batch}::bigint`;
      await sql`
        select util._finish_batch(${batch}::bigint, 'applied', 'completed', ${ROWS}, 0,
                                  'resubmit', '')`;
    };
    // Worker slot: settles the job as its lookup found it, parked (core: outcome.park).
    const outcomes = ids.map((id) => ({
      job_id: Number(job.msg_id),
      row_id: String(id),
      kind: "parked",
      target_id: target,
      table_name: "public.bench_docs",
    }));
    const settle = () =>
      sql`select count(*) from util._settle_jobs(array[]::bigint[], ${
        JSON.stringify(outcomes)
      }::text::jsonb)`;
    if (inOrder) {
      await settle();
      await tick();
    } else {
      await tick();
      await settle();
    }

    const [state] = await sql`
      select count(*)::int as messages,
             count(*) filter (where message ? 'parked')::int as parked,
             coalesce(sum(util._job_rows(message)) filter (where message ? 'parked'), 0)::int
               as parked_rows,
             round(extract(epoch from min(vt) - now()))::int as hidden_for_seconds,
             (select count(*) from util.embedding_batches
               where state in ('staging', 'submitting', 'submitted'))::int as open_batches,
             (select value from util.settings where name = 'batch_park_seconds') as park_seconds
        from pgmq.q_embedding_jobs`;
    stranded = state.parked > 0 && state.open_batches === 0;
    console.log(
      `${inOrder ? "settled, then the batch ended" : "the batch ended, then the job was settled"}` +
        `: ${state.parked_rows} of ${ROWS} rows parked in ${state.parked} message(s), hidden ` +
        `for ${state.hidden_for_seconds} s (batch_park_seconds ${state.park_seconds}), ` +
        `visible ${state.messages - state.parked} message(s), open ` +
        `batches ${state.open_batches}: ${
          stranded ? "STRANDED (nothing releases it before then)" : "not stranded"
        }`,
    );
  } finally {
    await db.drop();
  }
} finally {
  await dropBenchDatabases();
  if (startedCluster) await stopCluster();
}
Deno.exit(stranded ? 1 : 0);
