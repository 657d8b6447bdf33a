// `npm pack`'s prepack step: writes deno.package.lock, the Deno lockfile the
// npm package runs with. It is deno.lock without what package.json brings
// (Deno itself, the Supabase CLI): the package's launcher hides package.json
// from Deno (DENO_NO_PACKAGE_JSON), or Deno would fetch both into its cache,
// hundreds of MB, on a user's first run. Every entry left is deno.lock's.
import { isDeepStrictEqual } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
export const PACKAGE_LOCK = join(ROOT, "deno.package.lock");

type Lock = { specifiers?: Record<string, unknown>; npm?: Record<string, unknown> };

/** Entries of `lock` that `source` lacks or holds otherwise; none means `lock` resolved nothing anew. */
export function entriesNotIn(lock: Lock, source: Lock): string[] {
  const differing: string[] = [];
  for (const section of ["specifiers", "npm"] as const) {
    for (const [key, value] of Object.entries(lock[section] ?? {})) {
      if (!isDeepStrictEqual(source[section]?.[key], value)) differing.push(`${section}: ${key}`);
    }
  }
  return differing;
}

async function main(): Promise<number> {
  const source = join(ROOT, "deno.lock");
  const draft = `${PACKAGE_LOCK}.draft`;
  await Deno.copyFile(source, draft);
  try {
    // Deno drops from the draft what only package.json needed.
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "cache",
        "--quiet",
        "--config",
        join(ROOT, "deno.json"),
        "--lock",
        draft,
        "cli/autoembed.ts",
      ],
      cwd: ROOT,
      env: { DENO_NO_PACKAGE_JSON: "1" },
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (out.code !== 0) {
      console.error("package_lock: deno cache failed");
      return 1;
    }
    const text = await Deno.readTextFile(draft);
    const differing = entriesNotIn(JSON.parse(text), JSON.parse(await Deno.readTextFile(source)));
    if (differing.length) {
      console.error(
        `package_lock: deno.lock is out of date (${differing.join(", ")}): run deno install`,
      );
      return 1;
    }
    await Deno.writeTextFile(PACKAGE_LOCK, text);
    return 0;
  } finally {
    await Deno.remove(draft).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main());
