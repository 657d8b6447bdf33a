// `deno run -A bench/idle_worker.ts [--rows N] [--seconds S]`: what an idle
// worker costs, before and after its table's life changes (I6). A worker
// (default poll interval) drains an attached table, then its CPU and that of
// the database's backends is read from /proc over S seconds: idle with the
// table attached, then idle after `drop table ... cascade`. Then
// `worker --once` runs after the drop, and after the table is created again
// and attached: how long until it exits, and the CPU it used.
import { parseArgs } from "node:util";
import { stopCluster } from "../local/cluster.ts";
import { sleep } from "../supabase/functions/_shared/sleep.ts";
import { waitFor } from "../devtools/wait.ts";
import {
  attach,
  buildTemplate,
  cloneDb,
  counts,
  insertRows,
  prepareStack,
  processCpuSeconds,
  providerEnv,
  startProvider,
  startWorker,
  TABLE_DDL,
} from "./stack.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rows: { type: "string", default: "1000" },
    seconds: { type: "string", default: "10" },
  },
});
const rows = Number(values.rows);
const seconds = Number(values.seconds);

/** CPU seconds used so far by the backends of database `name` (their process titles name it). */
function backendsCpuSeconds(name: string): number {
  let total = 0;
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
      if (cmdline.startsWith("postgres: ") && cmdline.includes(` ${name} `)) {
        total += processCpuSeconds(Number(entry.name)) || 0;
      }
    } catch {
      // gone
    }
  }
  return total;
}

/** Share of one core used by the worker and by the backends over `seconds`. */
async function idleCpu(pid: number, db: string) {
  const w0 = processCpuSeconds(pid), b0 = backendsCpuSeconds(db);
  await sleep(seconds * 1000);
  const w1 = processCpuSeconds(pid), b1 = backendsCpuSeconds(db);
  return { worker: (w1 - w0) / seconds, backends: (b1 - b0) / seconds };
}

const pct = (x: number) => `${(x * 100).toFixed(2)}%`;

const startedCluster = await prepareStack((l) => console.error(l));
await buildTemplate();
const db = await cloneDb("idle");
const fake = await startProvider();
try {
  await insertRows(db.sql, rows, "idle");
  await attach(db.sql);
  const env = { ...providerEnv(fake), DATABASE_URL: db.url };
  const worker = startWorker([], env);
  await waitFor(async () => (await counts(db.sql)).embedded === rows, {
    what: "the worker to embed the table",
    timeoutMs: 300_000,
  });
  await worker.process.waitForLine(/"event":"idle"/);
  const pid = worker.process.child.pid;
  const attached = await idleCpu(pid, db.name);
  await db.sql`drop table public.bench_docs cascade`;
  const dropped = await idleCpu(pid, db.name);
  await worker.stop();

  // worker --once: its exit, or (stopped after 60 s) the share of a core it
  // and the backends used meanwhile.
  const once = async () => {
    const run = startWorker(["--once"], env);
    const b0 = backendsCpuSeconds(db.name);
    const timeout = sleep(60_000).then(() => null);
    const exited = await Promise.race([run.finished(), timeout]);
    if (exited) return `exit ${exited.code} after ${exited.seconds.toFixed(1)} s`;
    const used = processCpuSeconds(run.process.child.pid) / 60;
    const backends = (backendsCpuSeconds(db.name) - b0) / 60;
    await run.stop();
    return `no exit within 60 s (stopped); meanwhile worker ${pct(used)}, backends ${
      pct(backends)
    }`;
  };
  const afterDrop = await once();
  await db.sql.unsafe(TABLE_DDL).simple();
  await insertRows(db.sql, rows, "again");
  await attach(db.sql);
  const afterRecreate = await once();
  const [{ embedded }] = await db.sql`
    select count(*)::int as embedded from public.bench_docs where embedding is not null`;

  console.log(`idle worker, ${seconds} s each (share of one core; poll interval 5 s):`);
  console.log(
    `  table attached:     worker ${pct(attached.worker)}, backends ${pct(attached.backends)}`,
  );
  console.log(
    `  after drop cascade: worker ${pct(dropped.worker)}, backends ${pct(dropped.backends)}`,
  );
  console.log(`worker --once after the drop:        ${afterDrop}`);
  console.log(
    `worker --once after create + attach: ${afterRecreate} (${embedded}/${rows} embedded)`,
  );
} finally {
  await fake.close();
  await db.drop();
  if (startedCluster) await stopCluster();
}
