// `deno run -A bench/storage.ts [sizes...]`: the storage section of the bench
// alone (bench/scenarios/storage.ts), printed as JSON lines and a Markdown
// table; 20,000 and 100,000 rows by default. Also runs against older trees,
// to compare before and after a change.
import { stopCluster } from "../local/cluster.ts";
import { table } from "./report.ts";
import { measureStorage, type StorageRun, storageTable } from "./scenarios/storage.ts";
import { buildTemplate, dropBenchDatabases, prepareStack, startProvider } from "./stack.ts";

const sizes = Deno.args.length ? Deno.args.map(Number) : [20_000, 100_000];
const log = (line: string) => console.log(line);
const startedCluster = await prepareStack((line) => log(`setup: ${line}`));
const fake = await startProvider();
const runs: StorageRun[] = [];
try {
  await buildTemplate();
  for (const rows of sizes) runs.push(await measureStorage({ fake, log, quick: false }, rows));
} finally {
  await fake.close();
  await dropBenchDatabases();
  if (startedCluster) await stopCluster();
}
console.log(`\n${table(...storageTable(runs))}`);
