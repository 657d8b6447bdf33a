// `deno run -A bench/write_statement.ts [rows] [--reps N] [--hnsw] [--plain]`: section
// 1b of the bench alone (bench/scenarios/write_statement.ts), printed: the
// core's write of a batch timed by its Postgres backend's CPU.
import { parseArgs } from "node:util";
import { stopCluster } from "../local/cluster.ts";
import { printProfile, profileWrite } from "./scenarios/write_statement.ts";
import { buildTemplate, dropBenchDatabases, prepareStack } from "./stack.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  options: {
    reps: { type: "string", default: "3" },
    hnsw: { type: "boolean", default: false },
    // The embedding column stored plain (in the row) rather than halfvec's external.
    plain: { type: "boolean", default: false },
  },
  allowPositionals: true,
});
const rows = Number(positionals[0] ?? 5_000);
const reps = Number(values.reps);
const startedCluster = await prepareStack((line) => console.log(`setup: ${line}`));
try {
  await buildTemplate();
  printProfile(
    (line) => console.log(line),
    await profileWrite(rows, reps, values.hnsw, values.plain ? "plain" : undefined),
    reps,
  );
} finally {
  await dropBenchDatabases();
  if (startedCluster) await stopCluster();
}
