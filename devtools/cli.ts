// Runs the operator CLI (cli/autoembed.ts), or another Deno script, as a real
// subprocess the way users do, with its output captured; and the environment
// that points it at the fake provider.
import { ROOT } from "../local/config.ts";
import { capture, eachLine, type RunResult } from "../local/proc.ts";
import type { FakeOpenAI } from "./fake_openai.ts";

export type CliResult = RunResult;

/**
 * Environment of a worker subprocess (or embed function) talking to the fake
 * provider; with DATABASE_URL when `dbUrl` is given.
 */
export function providerEnv(
  fake: FakeOpenAI,
  dbUrl?: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    ...(dbUrl === undefined ? {} : { DATABASE_URL: dbUrl }),
    OPENAI_API_KEY: "sk-test-key-not-secret",
    OPENAI_BASE_URL: fake.baseURL,
    EMBEDDING_TIMEOUT_MS: "10000",
    ...extra,
  };
}

/** Runs `deno task autoembed <args>` to completion. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return capture(Deno.execPath(), ["run", "-A", "cli/autoembed.ts", ...args], {
    cwd: ROOT,
    env: { NO_COLOR: "1", DATABASE_URL: "", ...env },
  });
}

/** A process started in the background; its output is collected line by line. */
export interface WorkerProcess {
  child: Deno.ChildProcess;
  lines: string[];
  /** Resolves when a stderr/stdout line matches `pattern`. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Sends `signal` and resolves with the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
  status: Promise<Deno.CommandStatus>;
}

/** Runs `deno task autoembed worker <args>` in the background. */
export function spawnWorker(args: string[], env: Record<string, string>): WorkerProcess {
  return spawnScript("cli/autoembed.ts", ["worker", ...args], env);
}

/** Runs `script` (a path from the repository root) with Deno in the background. */
export function spawnScript(
  script: string,
  args: string[],
  env: Record<string, string>,
): WorkerProcess {
  return spawnDeno(["run", "-A", script, ...args], env);
}

/** Runs `deno <args>` (e.g. `task autoembed worker ...`) from the repository root in the background. */
export function spawnDeno(args: string[], env: Record<string, string>): WorkerProcess {
  return spawnProcess(Deno.execPath(), args, env);
}

/** Runs `command <args>` (the npm package's bin, say) in `cwd` in the background. */
export function spawnProcess(
  command: string,
  args: string[],
  env: Record<string, string>,
  cwd: string = ROOT,
): WorkerProcess {
  const child = new Deno.Command(command, {
    args,
    cwd,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  const collect = (stream: ReadableStream<Uint8Array>) =>
    eachLine(stream, (line) => {
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.pattern.test(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    });
  const piping = Promise.all([collect(child.stdout), collect(child.stderr)]);
  const status = child.status.then(async (s) => {
    await piping;
    return s;
  });
  return {
    child,
    lines,
    status,
    waitForLine(pattern, timeoutMs = 30_000) {
      const seen = lines.find((l) => pattern.test(l));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(
              new Error(`no line matching ${pattern} within ${timeoutMs} ms:\n${lines.join("\n")}`),
            ),
          timeoutMs,
        );
        waiters.push({
          pattern,
          resolve: (line) => {
            clearTimeout(timer);
            resolve(line);
          },
        });
      });
    },
    async stop(signal: Deno.Signal = "SIGTERM") {
      try {
        child.kill(signal);
      } catch {
        // already exited
      }
      return (await status).code;
    },
  };
}
