// Small helpers for running system commands with clear failures, reading
// their output line by line, and the stack's own messages.

/** A line of the stack's own, as every `local/main.ts` command prints it. */
export const say = (line: string) => console.log(`autoembed: ${line}`);

export class CommandError extends Error {}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, capturing output; never throws on exit code. */
export async function capture(
  cmd: string,
  args: string[],
  options: Deno.CommandOptions = {},
): Promise<RunResult> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, {
      ...options,
      args,
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    })
      .output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      return { code: 127, stdout: "", stderr: `${cmd}: not found` };
    }
    throw err;
  }
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** Runs a command and throws a CommandError carrying the tail of its output when it fails. */
export async function run(
  cmd: string,
  args: string[],
  options: Deno.CommandOptions = {},
): Promise<string> {
  const result = await capture(cmd, args, options);
  if (result.code !== 0) {
    const tail = (result.stderr || result.stdout).trim().split("\n").slice(-15).join("\n");
    throw new CommandError(`${cmd} ${args.join(" ")} failed (exit ${result.code}):\n${tail}`);
  }
  return result.stdout;
}

export function isRoot(): boolean {
  return Deno.uid() === 0;
}

export async function fileExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

export async function readTextIfExists(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/**
 * Calls `onLine` with each line of `stream` (without its newline), then with
 * the unterminated rest, if any, also when reading fails.
 */
export async function eachLine(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
): Promise<void> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        onLine(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
      }
    }
  } finally {
    if (buffer) onLine(buffer);
  }
}

/** Resolves with the name of the first SIGINT or SIGTERM this process receives. */
export function waitForSignal(): Promise<string> {
  return new Promise((resolve) => {
    for (const name of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(name, () => resolve(name));
    }
  });
}

/** A loopback TCP port nothing listens on right now. */
export function freePort(hostname = "127.0.0.1"): number {
  const listener = Deno.listen({ hostname, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}
