// The analysis behind bench/RESULTS.md: what the profiles showed, what was
// fixed (with the figures measured before and after, during development on
// the same machine) and what limits the goals still missed. Static text: the
// tables above it are re-measured on every run.

export const FINDINGS = `
## Findings: what was profiled, fixed, and what limits the rest

Figures in this section were measured while the fixes were made, on this machine with the same
fake provider (before = the code as it was, after = with the fix alone); the machine is shared,
so single figures move by ±20% from run to run.

### Fixed: the write of a batch (drain rate, Postgres CPU)

pg_stat_statements (see the profile above) showed one statement taking most of Postgres's time:
the core's write of a batch (UPDATE + fingerprints + cache), 52 ms per 100-row batch on a quiet
machine. EXPLAIN ANALYZE split it: sending and parsing the 3.3 MB jsonb parameter (13 + 10 ms),
parsing 100 × 1,536 numbers into halfvec (12 ms), and parsing them a second time for the cache
insert (14 ms). The vectors were sent as full double-precision text (about 33 KB per vector)
and the provider answered JSON floats (\`encoding_format: "float"\`).

- \`supabase/functions/_shared/core.ts\`: for a halfvec column, each value is rounded to float16
  in the core (through float32, as halfvec_in reads it) and written with the fewest digits that
  read back as that float16, from a table of all 65,536: 13 KB per vector instead of 33 KB, and
  the stored halfvecs are identical (checked on 200 random vectors × 1,536 values, including
  subnormals and -0). Other column types get the doubles as before.
- same file: the write parses each vector once, in its input CTE, for the table and the cache.
- \`supabase/functions/_shared/providers/openai.ts\`: no \`encoding_format\`, so the SDK asks for
  base64 and decodes it itself (its default): a quarter of the JSON to parse; endpoints that
  answer floats anyway still work.

| 10,000-row drain | before | after |
| --- | --- | --- |
| write statement per 100-row batch (pg_stat_statements) | 52 ms | 28 ms |
| Postgres CPU per 10,000 rows (machine busy time minus worker and bench) | 6.4 s | 3.5 s |
| worker CPU per 10,000 rows | 3.9 s | 3.0 s |
| fake provider CPU per 10,000 rows | 1.9 s | 1.5 s |
| \`worker --once -c 4\` rows/s | 1,300–1,410 | 1,650–2,200 |
| \`worker --once -c 1\` rows/s | 640–710 | 1,000–1,050 |

### Fixed: the triggers' cost per statement

One session inserting 5,000 rows one statement at a time (the trigger's CPU, without the
contention of the pgbench figures): a row insert costs 3 µs without triggers; the
statement-level trigger added 85–120 µs. Of that, \`pgmq.send_batch\` was 50 µs per call: its
SQL-language overload is planned again on every call, and its INSERT is dynamic SQL (upstream
pgmq is built the same way, so Supabase pays the same). \`util.queue_embeddings\` now makes the
same insert into \`pgmq.q_embedding_jobs (vt, message)\` itself, in one statement over the
transition tables, with the per-table part of the message built once per statement (new
migration \`20261125000300_performance.sql\`).

| per statement (one session) | before | after | floor* |
| --- | --- | --- | --- |
| single-row INSERT, trigger cost | 85–120 µs | 32–47 µs | 8–11 µs |
| single-row UPDATE, trigger cost | 150–205 µs | 85–140 µs | |
| 100,000-row INSERT, whole statement | 0.71–1.1 s | 0.52–0.58 s | 0.59 s |
| pgbench single-row inserts/s, 4 clients (no triggers: 36,000–44,000) | 8,800 | 11,400–15,500 | |

\\* floor: a hand-written statement-level trigger with a static insert of the same jobs and
nothing else (no target lookup, no dynamic SQL).

### Still missed, and why

- **Single-row write overhead (goal ≤ 25%).** Every change that needs an embedding is, by design,
  a job row: a second heap insert with two btree entries (msg_id, vt) and its WAL, which on its
  own makes a one-row INSERT about 3–4 times the work of the bare insert on this table. What is
  left above that floor is the trigger's dynamic SQL, planned per statement because the key
  column and content function are per table, and for UPDATE the content function called for the
  old and the new row plus a subtransaction that keeps a raising content function from failing
  the user's write. Generating a per-table trigger function with static SQL in
  \`enable_embeddings\` would remove most of the planning; the job row itself stays. The guide's
  row-level triggers cost about the same per single-row statement, and 6× more in bulk.
- **Bulk insert (goal ≤ 2×).** Inserting 100,000 job rows into the queue table (0.5 s: the
  jsonb messages, two indexes) costs more than inserting the 100,000 rows themselves (0.2 s
  here: fsync off, one index). The trigger now runs at that floor, so ≤ 2× would need fewer
  queue rows than changed rows (one job per statement chunk), which changes the job contract.
  A bulk UPDATE costs more (about 4×): the content function runs for the old and the new
  version of every row, to enqueue only rows whose text changed (which is what makes no-op
  updates free).
- **Provider bound with a 20 ms provider.** Four batches of 100 in flight allow about 18,000
  rows/s; two cores shared by Postgres, the worker and the fake provider run out first (machine
  90% busy in section 1). With a provider that is the limit (500 ms per request) the worker
  reaches the share of the bound shown in section 1.
- **Worker memory (goal ≤ 200 MB).** The peak is V8's heap headroom, not live data: with V8's
  default limits the worker's old generation grows to several hundred MB before it is collected.
  \`deno task autoembed\` therefore runs the worker with
  \`--v8-flags=--max-old-space-size=96,--max-semi-space-size=4\` (deno.json); measured during
  development on 100,000 rows with \`-c 4\`: 184 MB at 1,719 rows/s, against 458 MB at 1,859
  rows/s without the limits (old space alone at 96 MB: 237 MB). Run the worker with plain
  \`deno run -A cli/autoembed.ts\` for the last few percent of throughput at the cost of memory.

### Not a problem

- pgmq.read and pgmq.delete on a 10,000-message queue: 1.4 ms and 0.3 ms per call; the shim
  has upstream's \`(vt)\` index.
- The UPDATE trigger fired by the core's own writes (\`autoembed.applying\` on): 0.05 ms per
  batch, including its transition tables.
- \`util._record_failures\` and its temp table are not on the happy path (no failures here).
- The push path keeps 4 calls in flight through the continuation alone (0 rescue ticks): at
  100,000 rows it drains at about the pull worker's -c 4 rate; at 10,000 it varies more, as its
  extra processes (dispatcher, gateway, function) compete for the same 2 busy cores.
`;
