// The analysis behind bench/RESULTS.md: what the profiles show, what was
// changed, and what limits the goals still missed. Static text with no
// figures of its own (one hand measurement, labelled): every figure it explains
// is in a section above, written by the bench run stamped on it.

export const FINDINGS = `
## Findings: where the time goes, what was changed, what limits the rest

This text has no figures of its own (but for one measurement by hand, labelled so): it points at the
sections above, which the bench writes. A section's stamp gives its run's date and load average; on
this 2-core machine shared with other sessions, "Postgres" CPU (the machine's busy time minus the
processes the bench names) includes their work whenever the load average is above about 2, so
compare rows of one section, not sections of different runs.

### The drain (goals 1 and 4)

What one batch of 100 rows costs, in order: the worker claims it (\`util._read_jobs\`: one packed
message of 100 row ids after a bulk statement or a backfill slice), reads the targets, reads the
rows (text, hash, fingerprint), calls the provider, decodes its base64 answer into
\`Float32Array\`s, encodes the vectors as one binary \`halfvec[]\`, and sends one write statement
(embeddings and fingerprints, compare-and-set on the content hash; one round trip) and one delete.
"Profile: Postgres time per statement" shows where Postgres's time goes per statement; section 1b
splits the write by its backend's CPU.

Changed in round four (issue 12), after round three's binary vectors:

- **Packed queue messages** (the triggers' and sweeps' inserts, \`util._read_jobs\`, \`util._record_failures\`,
  the core's \`jobsOf\` and acknowledgement): a statement's rows (and a backfill slice's) share
  one queue message per 100 row ids, \`{"ids": [...]}\`. For the drain this means a claim updates
  one queue row instead of 100 (each a non-HOT update, since \`vt\` is indexed), and the
  acknowledgement deletes one; the worker parses one message instead of 100. Claims are sized by
  rows (a larger message is cut, its rest re-queued), and a message is settled row by row in one
  statement: done rows leave it, failed rows stay under their backoff, dead rows leave as dead
  letters of their own (tests/pipeline/packed.test.ts). The claim's cursor locks one message at a
  time as it takes it: the first form locked its whole candidate slice, so concurrent \`--once\`
  slots found the queue empty while one claim held more than it took, and ended early (a 10,000-row
  drain took 3.4 s instead of 1.8 s, measured by hand with the worker's batch events before and
  after).
- **The write in one round trip** (\`sql/write.ts\`): \`autoembed.applying\` is set inside the
  write statement (a materialized CTE read by the UPDATE's first one-time filter, so it is on before
  any row trigger fires and ends with the statement's implicit transaction) instead of
  \`begin; set_config\` … \`commit\` around it: one round trip instead of three, the same
  backend CPU (tests/pipeline/write_applying.test.ts proves our write enqueues nothing and the
  setting does not outlive it on a pooled connection). The text path is prepared, so it too is one
  round trip where the client prepares statements (the worker).

Changed in round three, each measured A/B back to back ("Binary vectors" has the figures):

Round two's changes (the write's text parameters split by \`string_to_array\`, the formatting into
one ASCII buffer) remain the text path. Tried and left out: binary halfvecs through
\`COPY ... (format binary)\` into a temporary table (the extra statements cost more than the parse
they saved), and \`set storage plain\` on the embedding column ("Binary vectors": the write's
backend saves a little, but a later text-only UPDATE costs about 2.5× as much, since it copies the
vector in the row, and the table grows by half).

**Goal 1 is met** (section 1), and the CPU per 1,000 rows of the pipeline and Postgres together is
below half of issue 12's (section 1's CPU table). At these rates two cores have about 300 ms of CPU
per 1,000 rows for the worker, Postgres and the fake provider together, and the machine is about
two thirds busy: the rest is latency (the provider's 20 ms per request, the statements' round
trips), so \`-c 4\` is what keeps the provider and the database busy at once. Postgres's share is
now mostly the write (the row update with its TOASTed vector and WAL, and the fingerprints) and the
rows' read (the content function and sha256 per row); the claim and the delete, which were about a
sixth of its statement time with a job row per row (the previous round's profile), are small (the Profile section). The worker's
share is its collector, the socket writes of the write's 300 KB parameter, and the provider
answer's decoding. The provider bound (18,000 rows/s) is not what stops it: with a slow provider the
worker reaches the share of its bound shown in section 1.

**HNSW**: with an index on the column every write also inserts each vector into the graph
(pgvector's defaults, m 16, ef_construction 64), which costs many times the rest of the write
(section 1b, HNSW column; section 1, the HNSW row): with a real index the drain is bounded by
Postgres's index inserts, not by anything in the pipeline.

**The worker's CPU and its heap limits**: the push rows of section 1 run the same core in the
\`embed\` function with V8's default heap limits, and the provider-bound check runs the worker with
\`deno run\` (default limits too); both spend less CPU per 1,000 rows than the worker under
deno.json's limits (\`--max-old-space-size=96,--max-semi-space-size=4\`), which buy its lower
peak memory (section 5) with collector time. That trade is goal 4 against goal 1 on this machine.
The settings tried to win the CPU back (a larger semi-space, with the old space at 96 or 64 MB,
and \`--single-threaded-gc\`) gave back CPU only with more peak memory than goal 4 allows:
section "Worker heap settings" has the runs, measured with \`bench/drain_pull.ts\` and repeated
\`--v8-flags\`. deno.json keeps its limits.

**Push mode** adds per batch a pg_net request, the dispatcher, the gateway and a continuation call;
its rate next to pull -c 4 is in section 1's ratio table.

### Worker memory (goal 4)

Section 5 shows the worker's peak as users run it, and where its memory is at the peak: V8's heap,
the ArrayBuffers V8 accounts for outside it (response bodies, postgres.js's message buffers, the
\`Float32Array\`s of batches in flight), and the rest, which is the runtime itself (compare the
idle worker). What is ours is the batches in flight: -c 4 slots, each holding at most one batch's
provider answer, vectors and write text (a few MB), and the garbage they leave until V8 collects
it; the heap limits in deno.json bound that headroom. Lowering them further was tried with
\`bench/drain_pull.ts --memory --v8-flags ...\` (old space 48 MB): the peak moved by less than the
run-to-run spread, because the runtime's share does not move; glibc's \`MALLOC_ARENA_MAX=2\` and a
fixed \`MALLOC_MMAP_THRESHOLD_\` did not move it beyond the spread either. Section 5's
100,000-row drain runs at goal 1's throughput, so goal 4 is shown at that rate for the worker
process; the task runner in front of it (\`deno task\`) adds its own 20 MB or so, which the
second column shows.

### Write path (goal 3)

Section 4 runs every configuration side by side in one run, on a durable cluster and on the
fsync-off one, and profiles one extra insert run per configuration with \`track_functions = all\`.
What changed in round three: \`util.enable_embeddings\` now writes each target its own insert/update
trigger function (\`util._create_queue_function\`, \`util._queue_embeddings_<table oid>_<hash>\`),
with the key column and the content function in static SQL (the migration moves tables attached
before). plpgsql plans its statements once per session, where the generic \`util.queue_embeddings\`
planned its dynamic INSERT (and, on UPDATE, the comparison of old and new text) on every statement
and called \`util._target_for_trigger\` to read the target. Deletes still go through
\`util.queue_embeddings\` (the fingerprints of the live and shadow targets), and the guide-style row
trigger reads its target inline, calling \`util._target_for_trigger\` only to register it.
\`util._kick_embeddings\`, once per transaction in push mode, reads its setting, the calls in flight
and its clock and records its decision in one statement instead of four. Section 4's row "autoembed
before" is the former form (\`enable_embeddings\`' triggers through the generic function) measured
in the same run: the A/B of the change, both in push mode. The profile rows are the steadiest
evidence (pgbench's durable medians swing with the other sessions' disk and CPU use, see their
min–max): per single-row insert, the generated function with the kick it calls costs about half
of what the generic function did, and less than the guide's trigger with its two \`pgmq.send\`
levels; the guide-style row trigger, which no longer calls \`util._target_for_trigger\`, also costs
less than the guide's. Single-row updates gain the most, since the generic trigger planned the
old/new text comparison per statement. Bulk statements are unchanged by this (the same one set-based
INSERT; the two rows' bulk figures differ within their spread).

What is left per single-row statement is intrinsic to the design. A statement-level trigger with a
transition table costs a little more for one row than a row-level trigger does (the transition
table is built whatever its size); it is what keeps a bulk statement at one queue insert. On UPDATE
ours calls the content function for the old and the new row, which is what keeps no-op updates free
(the guide enqueues, and clears, on every update of the columns, changed or not). Each change that
needs an embedding is, by design, a job row: a second heap insert with two btree entries (msg_id,
vt) and its WAL, for our triggers as for the guide's. In a pull-only install each transaction also
sends a NOTIFY for listening workers, and Postgres commits notifying transactions one at a time (a
lock held until the commit record is flushed), so with fsync on they lose group commit: the
pull-only row of section 4. Push mode (\`kick_on_change\`, set where pg_cron runs
\`process-embeddings\`) sends no NOTIFY. The durable medians move a lot between runs on this
shared machine (see their min–max); compare rows of one run.

Bulk insert (goal ≤ 2×), met in round four by packing. Before it, the trigger inserted one job row
per inserted row, which cost about as much as inserting the rows themselves; taken apart by hand
on the fsync-off cluster (100,000 rows of section 4's shape, best of three, load average about 2.5,
the earlier AMD machine): the insert alone 0.31 s; with a statement trigger that only builds the
transition table 0.36 s; inserting 100,000 queue rows whose message is an empty \`{}\` 0.57 s
(1.8×); with the real message 0.71 s (2.3×). Now the statement's rows share one message per 100 row
ids, so a 100,000-row statement inserts 1,000 queue rows: what is left over the bare insert is the
transition table and the grouping of its ids (section 4's bulk rows). The single-row form is
unchanged (\`{"id": ...}\`), and its packing is inline SQL: as a call of a small SQL function it
cost 22 µs of a single-row insert's trigger (a SQL function with a pinned \`search_path\` is never
inlined; measured with \`track_functions\` in a run of this round, then removed). Bulk updates
(3× here) are not the goal's: their cost is the content function run on the old and the new row of
each changed row, which is what keeps no-op updates free.

Single-row inserts against the guide's trigger (goal 3, first part): in the function profile, the
steadiest evidence, a single-row insert's trigger work costs less than the guide's two
\`pgmq.send\` levels for both our forms (section 4's profile rows: total µs per call, the kick
included). pgbench's durable medians put \`enable_embeddings\` at parity with the guide and the
guide-style row trigger a few per cent below it, inside each other's min–max spreads: on this shared
machine the durable runs (fsync on every commit) swing by more than the difference.

The guide-style row triggers' bulk update (section 4) is slow for another reason:
\`util.queue_embeddings\` and \`util.clear_column\` at row level each compare old and new text
through dynamic SQL inside an exception block, i.e. two subtransactions per row. Single-row writes
hardly notice; a 100,000-row update does. \`enable_embeddings\` is the bulk path.

### Push freshness (goal 2)

Section 3. How the kick works (\`util._kick_embeddings\`): the first time in a transaction that
\`util.queue_embeddings\` enqueues a job, it looks at \`util.embedding_requests\`. If a call to the
\`embed\` function is in flight it does nothing more: each finishing call already asks for the next
slice (\`util._embedding_request_done\`), so the change rides that chain. If none is, and no kick
was sent in the last second without being served yet (a sequence, \`util.embedding_kick_clock\`,
which \`util.process_embeddings\` sets back to 0 before it reads the queue), it queues one
\`net.http_post\` to \`embed?kick=1\`, which makes the function run \`util.process_embeddings()\`
at once. Inside the user's transaction this is safe: pg_net's queue is a table, so the request
exists only once the transaction commits (a rolled-back write sends nothing, and the kick never
runs before its jobs are visible); the sequence is not transactional and takes no lock held to
commit; the look at \`util.embedding_requests\` is a plain read; a missing pg_net or Vault secret is
caught, so the write never fails (the change then waits for the tick, whose AE004 error is where
the misconfiguration shows). Known edge: a transaction that enqueued while calls were in flight but
commits after the last of them read the queue waits for the tick; the same after a kick whose
transaction rolled back, for one second.

Why it holds with real pg_net: its background worker (\`src/worker.c\` in supabase/pg_net) does not
poll on a timer when idle: \`net.http_post\` registers a commit callback that sets the worker's
latch, and the worker then sends the queued requests at once (up to \`pg_net.batch_size\`) through
curl's multi interface; between batches it waits at most one second, cut short when a commit sets
the latch. So a change found idle costs two HTTP round trips to the edge function (the kick, then
the batch) plus one provider call, as measured here with the shim's LISTEN-driven dispatcher (the
same "send on commit"). Older pg_net releases polled their queue once a second instead, which would
add up to a second twice (kick, then batch): still inside the goal. On Supabase an edge function's
cold start adds to the first call after idle.

### Not a problem

- \`pgmq.read\` and \`pgmq.delete\` on a large queue: the shim has upstream's \`(vt)\` index (see
  "Profile: Postgres time per statement").
- The UPDATE trigger fired by the core's own writes (\`autoembed.applying\` on) returns at once.
- \`util._record_failures\` and its temp table are not on the happy path (no failures here).
- Crash safety is unchanged by round two: write and fingerprints in one transaction, the delete
  after its commit.
`;
