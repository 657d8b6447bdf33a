// Entry point of the Docker-free local stack: `start` (npm start), `test`
// (npm test), `setup`, `stop`, `reset`. Each step installs or creates what is
// missing first, so both npm commands work on a fresh clone.
import { removeCluster, stopCluster } from "./cluster.ts";
import { MigrationError } from "./migrate.ts";
import { CommandError, say } from "./proc.ts";
import { prepareStack } from "./setup.ts";
import { start } from "./start.ts";
import { test } from "./test_runner.ts";

async function main(): Promise<number> {
  const [command, ...rest] = Deno.args;
  switch (command) {
    case "start":
      await start();
      return 0;
    case "test":
      return await test(rest, say);
    case "setup":
      await prepareStack(say);
      return 0;
    case "stop":
      await stopCluster();
      return 0;
    case "reset":
      // Like `supabase db reset`: a fresh cluster; the next start applies migrations and seed.
      await removeCluster();
      say("cluster removed; `npm start` recreates it with migrations and seed");
      return 0;
    default:
      console.error(
        "usage: deno run -A local/main.ts start | test [deno test args] | setup | stop | reset",
      );
      return 2;
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (err) {
    if (err instanceof CommandError || err instanceof MigrationError) {
      console.error(`autoembed: ${(err as Error).message}`);
      Deno.exit(1);
    }
    throw err;
  }
}
