// Lock order between a model change's bookkeeping and a writer of the table.
// A writer holds the user's table (ROW EXCLUSIVE, its UPDATE) when it inserts
// the fingerprints, whose foreign key takes KEY SHARE on the target's row.
// cancel_reembed, reembed and the switch lock that row first and the table
// second. They must lock it in a mode KEY SHARE does not wait for, or the two
// deadlock and Postgres aborts one of them (the flake this file pins down).
import assert from "node:assert/strict";
import { connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments, TEST_MODEL } from "../../devtools/pipeline.ts";
import { insertRows } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

/** Whether a session running `like` waits for a lock. */
async function waitsForLock(sql: Sql, like: string): Promise<boolean> {
  const [{ waiting }] = await sql`
    select exists (
      select from pg_stat_activity a
       where a.wait_event_type = 'Lock' and a.query like ${like}) as waiting`;
  return waiting;
}

for (const change of ["cancel_reembed", "reembed"] as const) {
  Deno.test(`${change} waiting for the table does not deadlock with a writer's fingerprint insert`, async () => {
    await withTestDb(async (sql, url) => {
      await createDocuments(sql, { model: "local-hash-v1" });
      await insertRows(sql, 3);
      if (change === "cancel_reembed") {
        await sql`select util.reembed('documents', model => ${TEST_MODEL}, dimensions => 24)`;
      }
      const [{ id: targetId }] = await sql`
        select coalesce(s.id, l.id) as id from util.embedding_targets l
          left join util.embedding_targets s on s.shadow_of = l.id
         where l.shadow_of is null`;
      const writer = connect(url, { max: 1 });
      const other = connect(url, { max: 1 });
      try {
        const [{ pid: writerPid }] = await writer`select pg_backend_pid() as pid`;
        let changeDone: Promise<unknown> | undefined;
        await writer.begin(async (tx) => {
          // The writer holds the table, as the core's write does...
          await tx`update documents set embedding = null where id = (select min(id) from documents)`;
          // ...when the model change takes its rows and waits for the table.
          changeDone = change === "cancel_reembed"
            ? other`select util.cancel_reembed('documents')`
            : other`select util.reembed('documents', model => ${TEST_MODEL}, dimensions => 8)`;
          changeDone.catch(() => {}); // awaited below
          await waitFor(() => waitsForLock(sql, `select util.${change}%`), {
            what: `${change} waiting for the table the writer holds`,
          });
          // The premise: the change holds the target's row when the writer needs it.
          const [{ held }] = await sql`
            select exists (select from pg_locks k join pg_stat_activity a using (pid)
                            where a.query like ${`select util.${change}%`}
                              and k.locktype = 'transactionid' and k.granted) as held`;
          assert.ok(held, `${change} has written a lock on the target's row`);
          // The fingerprint's foreign key check: KEY SHARE on that row.
          await tx`
            insert into util.embedding_fingerprints (target_id, row_id, content_hash)
            values (${targetId}, '1', '\\x00')
            on conflict (target_id, row_id) do update set content_hash = excluded.content_hash`;
          const [{ blocked }] = await sql`
            select count(*)::int as blocked from pg_locks where pid = ${writerPid} and not granted`;
          assert.equal(blocked, 0);
        });
        await changeDone; // runs once the writer commits; a deadlock would reject one of them
      } finally {
        await writer.end();
        await other.end();
      }
    });
  });
}
