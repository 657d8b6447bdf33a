// `npm test`: the stack up, the test template rebuilt from the migrations,
// then `deno test` with its figures summed up in one closing line for CI.
import { stopCluster } from "./cluster.ts";
import { databaseUrl, ROOT, TEST_TEMPLATE } from "./config.ts";
import { applyMigrations } from "./migrate.ts";
import { eachLine } from "./proc.ts";
import { prepareStack } from "./setup.ts";
import { withSql } from "./sql.ts";

/** Recreates the test template: template1 (bootstrapped) plus every migration. */
async function buildTestTemplate(): Promise<void> {
  await withSql(databaseUrl("postgres"), async (admin) => {
    const [existing] = await admin`select 1 from pg_database where datname = ${TEST_TEMPLATE}`;
    if (existing) await admin.unsafe(`alter database ${TEST_TEMPLATE} is_template false`);
    await admin.unsafe(`drop database if exists ${TEST_TEMPLATE} with (force)`);
    await admin.unsafe(`create database ${TEST_TEMPLATE} template template1`);
  });
  await applyMigrations(databaseUrl(TEST_TEMPLATE));
  await withSql(
    databaseUrl("postgres"),
    (admin) => admin.unsafe(`alter database ${TEST_TEMPLATE} is_template true`),
  );
}

/** Runs `deno test`, echoing its output, and returns its exit code and summary figures. */
async function runDenoTests(
  args: string[],
): Promise<{ code: number; passed: number; failed: number; ignored: number }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--parallel", ...args],
    cwd: ROOT,
    env: {
      AUTOEMBED_ADMIN_URL: databaseUrl("postgres"),
      AUTOEMBED_TEST_TEMPLATE: TEST_TEMPLATE,
      NO_COLOR: "1",
    },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let summary = { passed: 0, failed: 0, ignored: 0 };
  await eachLine(child.stdout, (line) => {
    console.log(line);
    const m = line.match(
      /^(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed(?: \(\d+ steps?\))?(?: \| (\d+) ignored)?/,
    );
    if (m) summary = { passed: Number(m[1]), failed: Number(m[2]), ignored: Number(m[3] ?? 0) };
  });
  const { code } = await child.status;
  return { code, ...summary };
}

/** `test [deno test args]`: every test under tests/ unless told which. Returns the exit code. */
export async function test(args: string[], log: (line: string) => void): Promise<number> {
  const startedCluster = await prepareStack(log);
  try {
    await buildTestTemplate();
    const result = await runDenoTests(args.length ? args : ["tests/"]);
    // The plain closing line CI reads; ignored tests are reported, never counted as passed.
    const skipped = result.ignored ? `, ${result.ignored} skipped` : "";
    console.log(`\ntests: ${result.passed} passed, ${result.failed} failed${skipped}`);
    return result.code;
  } finally {
    if (startedCluster) await stopCluster();
  }
}
