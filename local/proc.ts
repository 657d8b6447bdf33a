// Small helpers for running system commands with clear failures.

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
