// `deno task autoembed install|upgrade --into <Supabase project>`: copies the
// migrations (same file names, so `supabase db push` records the same
// versions), the `embed` and `search` functions with the `_shared` core, an
// import map for each, and the `[functions.embed]` entry of config.toml into a
// user's project. Nothing that differs is ever overwritten silently: install
// refuses any file that differs; upgrade also replaces function files that
// still hold exactly what autoembed installed (recorded in a manifest), and
// refuses the rest. Every check runs before the first write.
import { createHash } from "node:crypto";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

export class InstallError extends Error {}

/** Where install records what it wrote (path -> sha256), so upgrade can tell a user's edits. */
export const MANIFEST = "supabase/.autoembed-install.json";
/** The import map Supabase deploys the function with (one deno.json per function). */
/** The edge functions autoembed ships: `embed` (the pipeline) and `search` (search by text). */
export const SHIPPED_FUNCTIONS = ["embed", "search"] as const;
/** The import map Supabase deploys a shipped function with. */
export const functionImportMap = (name: string) => `supabase/functions/${name}/deno.json`;
export const FUNCTION_IMPORT_MAP = functionImportMap("embed");
export const CONFIG_TOML = "supabase/config.toml";

export type Mode = "install" | "upgrade";

export interface PlanInput {
  mode: Mode;
  /** Files autoembed ships, by project-relative path. */
  source: Map<string, string>;
  /** The same paths in the target project: their content, or null when absent. */
  target: Map<string, string | null>;
  /** The target's manifest from an earlier install (path -> sha256), if any. */
  manifest: Map<string, string> | null;
  /** The target's supabase/config.toml, or null when it has none. */
  configToml: string | null;
  /** The `[functions.embed]` table to add, with its comment. */
  embedBlock: string;
}

export interface Plan {
  /** Files to write (new or replaced), by path. */
  writes: Map<string, string>;
  added: string[];
  updated: string[];
  unchanged: string[];
  /** Paths that differ and may not be overwritten, with why; any makes the whole run refuse. */
  conflicts: { path: string; reason: string }[];
  /** Things the user has to do by hand (e.g. a config.toml entry). */
  notes: string[];
}

export function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

const isMigration = (path: string) => path.startsWith("supabase/migrations/");

/** What install or upgrade would do; pure, so every case is a unit test. */
export function planInstall(input: PlanInput): Plan {
  const plan: Plan = {
    writes: new Map(),
    added: [],
    updated: [],
    unchanged: [],
    conflicts: [],
    notes: [],
  };
  for (const [path, content] of [...input.source].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const current = input.target.get(path) ?? null;
    if (current === null) {
      plan.writes.set(path, content);
      plan.added.push(path);
    } else if (current === content) {
      plan.unchanged.push(path);
    } else if (isMigration(path)) {
      plan.conflicts.push({
        path,
        reason: "a migration of that name with other content (landed migrations never change: " +
          "restore the file from the database's history, or rename yours)",
      });
    } else if (input.mode === "upgrade" && input.manifest?.get(path) === sha256(current)) {
      plan.writes.set(path, content); // exactly what autoembed installed: safe to replace
      plan.updated.push(path);
    } else {
      plan.conflicts.push({
        path,
        reason: input.mode === "upgrade"
          ? "differs from what autoembed installed (your edits?): move your copy aside, then upgrade again"
          : "exists with other content: move it aside, or use upgrade if autoembed installed it",
      });
    }
  }

  const config = planConfig(input.configToml, input.embedBlock);
  if (config.conflict) plan.conflicts.push({ path: CONFIG_TOML, reason: config.conflict });
  else if (config.text !== null) {
    plan.writes.set(CONFIG_TOML, config.text);
    plan.updated.push(CONFIG_TOML);
  } else if (input.configToml === null) {
    plan.notes.push(
      `no ${CONFIG_TOML} here (supabase init creates one); add to it:\n\n${input.embedBlock}`,
    );
  } else {
    plan.unchanged.push(CONFIG_TOML);
  }

  if (plan.writes.size > 0 || input.manifest === null) {
    const manifest = new Map(input.manifest ?? []);
    for (const [path, content] of plan.writes) {
      if (path !== CONFIG_TOML) manifest.set(path, sha256(content));
    }
    for (const path of plan.unchanged) {
      if (input.source.has(path)) manifest.set(path, sha256(input.source.get(path)!));
    }
    const sorted = Object.fromEntries([...manifest].sort(([a], [b]) => (a < b ? -1 : 1)));
    plan.writes.set(MANIFEST, JSON.stringify({ files: sorted }, null, 2) + "\n");
  }
  return plan;
}

/**
 * The config.toml with `[functions.embed] verify_jwt = false`: unchanged text
 * -> null; a table that sets verify_jwt otherwise -> a conflict.
 */
export function planConfig(
  toml: string | null,
  embedBlock: string,
): { text: string | null; conflict?: string } {
  if (toml === null) return { text: null };
  const table = tomlTable(toml, "functions.embed");
  if (table === null) {
    return { text: `${toml.replace(/\s*$/, "")}\n\n${embedBlock.trimEnd()}\n` };
  }
  const setting = table.match(/^\s*verify_jwt\s*=\s*(\w+)/m);
  if (setting?.[1] === "false") return { text: null };
  return {
    text: null,
    conflict:
      `[functions.embed] ${
        setting ? `sets verify_jwt = ${setting[1]}` : "leaves verify_jwt at its default (true)"
      }: the embed function checks its own bearer secret (pg_net sends no JWT), so set ` +
      "verify_jwt = false there",
  };
}

/** The body of TOML table `[name]` (up to the next table header), or null. */
export function tomlTable(toml: string, name: string): string | null {
  const lines = toml.split("\n");
  const start = lines.findIndex((l) => l.trim().replace(/\s*#.*$/, "") === `[${name}]`);
  if (start < 0) return null;
  const end = lines.findIndex((l, i) => i > start && /^\s*\[/.test(l));
  return lines.slice(start + 1, end < 0 ? undefined : end).join("\n");
}

/** The `[functions.embed]` table of a config.toml with the comment lines right above it. */
export function embedBlockOf(toml: string): string | null {
  const lines = toml.split("\n");
  const start = lines.findIndex((l) => l.trim() === "[functions.embed]");
  if (start < 0) return null;
  let first = start;
  while (first > 0 && lines[first - 1].trimStart().startsWith("#")) first--;
  let end = start + 1;
  while (end < lines.length && lines[end].trim() !== "" && !/^\s*\[/.test(lines[end])) end++;
  return lines.slice(first, end).join("\n") + "\n";
}

/**
 * The import map the installed function needs: the entries of `imports`
 * whose bare specifier the shipped sources import (`from "postgres"`,
 * `from "openai/resources"`).
 */
export function importMapFor(
  sources: Iterable<string>,
  imports: Record<string, string>,
): Record<string, string> {
  const used = new Set<string>();
  for (const text of sources) {
    for (const m of text.matchAll(/\bfrom\s+["']([^"'./][^"']*)["']/g)) used.add(m[1]);
    for (const m of text.matchAll(/\bimport\s*\(\s*["']([^"'./][^"']*)["']\s*\)/g)) used.add(m[1]);
  }
  const picked: Record<string, string> = {};
  for (const spec of used) {
    if (/^(npm|jsr|node|https?):/.test(spec)) continue;
    const key = Object.keys(imports).find((k) => spec === k || spec.startsWith(`${k}/`));
    if (!key) {
      throw new InstallError(`the function imports "${spec}", which deno.json does not map`);
    }
    picked[key] = imports[key];
  }
  return Object.fromEntries(Object.entries(picked).sort(([a], [b]) => (a < b ? -1 : 1)));
}

const DEFAULT_EMBED_BLOCK =
  `# The embed function checks its own bearer secret (EMBED_SECRET, kept in Vault
# as \`embed_secret\` for pg_net's calls), so the gateway's JWT check is off.
[functions.embed]
verify_jwt = false
`;

async function filesUnder(dir: string, root: string): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) found.push(...await filesUnder(path, root));
    else if (entry.isFile && !entry.name.startsWith(".")) found.push(relative(root, path));
  }
  return found;
}

async function readIfExists(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/** What autoembed ships, read from this repository. */
export async function shippedFiles(root = ROOT): Promise<{
  source: Map<string, string>;
  embedBlock: string;
}> {
  const source = new Map<string, string>();
  const paths = [
    ...(await filesUnder(join(root, "supabase", "migrations"), root))
      .filter((p) => /\/\d+_[^/]+\.sql$/.test(p)),
    ...(await Promise.all(
      SHIPPED_FUNCTIONS.map((name) => filesUnder(join(root, "supabase", "functions", name), root)),
    )).flat(),
    ...await filesUnder(join(root, "supabase", "functions", "_shared"), root),
  ];
  for (const path of paths) source.set(path, await Deno.readTextFile(join(root, path)));
  const functionSources = [...source].filter(([p]) => p.startsWith("supabase/functions/"));
  const denoJson = JSON.parse(await Deno.readTextFile(join(root, "deno.json")));
  // One map for both functions: they share _shared/, which holds nearly every import.
  const imports = importMapFor(functionSources.map(([, text]) => text), denoJson.imports ?? {});
  for (const name of SHIPPED_FUNCTIONS) {
    const path = functionImportMap(name);
    if (!source.has(path)) source.set(path, JSON.stringify({ imports }, null, 2) + "\n");
  }
  const config = await readIfExists(join(root, "supabase", "config.toml"));
  return { source, embedBlock: (config && embedBlockOf(config)) ?? DEFAULT_EMBED_BLOCK };
}

/** The project folder that holds `supabase/`: the path given, or its parent when given `supabase/`. */
export async function projectRoot(into: string): Promise<string> {
  const isDir = (path: string) =>
    Deno.stat(path).then((s) => s.isDirectory, (err) => {
      if (err instanceof Deno.errors.NotFound) return false;
      throw err;
    });
  if (await isDir(join(into, "supabase"))) return into;
  const trimmed = into.replace(/\/+$/, "");
  if (trimmed.endsWith("supabase") && await isDir(trimmed)) return dirname(trimmed);
  throw new InstallError(
    `${into} is not a Supabase project (no supabase/ folder): run \`supabase init\` there first`,
  );
}

export interface InstallResult {
  plan: Plan;
  root: string;
}

/** Plans, refuses on any conflict (writing nothing), or writes every file. */
export async function install(mode: Mode, into: string): Promise<InstallResult> {
  const root = await projectRoot(into);
  const { source, embedBlock } = await shippedFiles();
  const target = new Map<string, string | null>();
  for (const path of source.keys()) target.set(path, await readIfExists(join(root, path)));
  const manifestText = await readIfExists(join(root, MANIFEST));
  let manifest: Map<string, string> | null = null;
  if (manifestText !== null) {
    try {
      manifest = new Map(Object.entries(JSON.parse(manifestText).files ?? {}));
    } catch {
      throw new InstallError(`${MANIFEST} is not valid JSON: restore it or delete it`);
    }
  }
  const plan = planInstall({
    mode,
    source,
    target,
    manifest,
    configToml: await readIfExists(join(root, CONFIG_TOML)),
    embedBlock,
  });
  if (plan.conflicts.length) {
    throw new InstallError(
      `${mode} refused, nothing written: ${plan.conflicts.length} file(s) differ\n` +
        plan.conflicts.map((c) => `  ${c.path}: ${c.reason}`).join("\n"),
    );
  }
  await writeAll(root, plan.writes);
  return { plan, root };
}

/** Writes every file beside its target first, then renames them into place. */
async function writeAll(root: string, writes: Map<string, string>): Promise<void> {
  const staged: [string, string][] = [];
  try {
    for (const [path, content] of writes) {
      const final = join(root, path);
      await Deno.mkdir(dirname(final), { recursive: true });
      const temp = `${final}.autoembed-new`;
      await Deno.writeTextFile(temp, content);
      staged.push([temp, final]);
    }
  } catch (err) {
    for (const [temp] of staged) await Deno.remove(temp).catch(() => {});
    throw err;
  }
  for (const [temp, final] of staged) await Deno.rename(temp, final);
}

/** The lines install/upgrade print: what changed, and what is left to do. */
export function report(mode: Mode, plan: Plan): string[] {
  const lines = [
    ...plan.added.map((p) => `added    ${p}`),
    ...plan.updated.map((p) => `updated  ${p}`),
    `${plan.unchanged.length} file(s) already up to date`,
    ...plan.notes.map((n) => `note: ${n}`),
  ];
  const migrations = plan.added.filter(isMigration).length;
  if (plan.added.length + plan.updated.length === 0) {
    lines.push(`${mode}: nothing to do`);
  } else {
    lines.push(
      "next: " + [
        migrations ? "supabase db push" : "",
        "supabase functions deploy embed search",
        mode === "install" ? "set the secrets (README: Install on a Supabase project)" : "",
      ].filter(Boolean).join(", then "),
    );
  }
  return lines;
}
