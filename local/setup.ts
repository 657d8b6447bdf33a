// Idempotent machine setup for the local stack: installs only what is
// missing (Debian packages, pgvector built from Debian's source package, our
// SQL shims of pgmq/pg_net/Vault) and reports what it did, so a second run is
// a few quick checks and nothing else.
import { join } from "node:path";
import { bootstrapCluster, startCluster } from "./cluster.ts";
import { PG_BIN, ROOT, STACK_DIR } from "./config.ts";
import { capture, CommandError, fileExists, isRoot, readTextIfExists, run } from "./proc.ts";

/**
 * Debian packages the stack needs: PostgreSQL 15, pg_cron, plpgsql_check (for
 * `supabase db lint`) and what builds pgvector.
 */
export const REQUIRED_PACKAGES = [
  "postgresql-15",
  "postgresql-contrib",
  "postgresql-15-cron",
  "postgresql-15-plpgsql-check",
  "postgresql-server-dev-15",
  "build-essential",
  "dpkg-dev",
];

/** Debian suite whose `pgvector` source package we build (Debian 12 has none). */
const PGVECTOR_SOURCE_SUITE = "trixie";

/** Marker in the `comment` of our shim control files; a control file without it is a real extension. */
export const SHIM_MARKER = "autoembed-shim";

export interface SetupReport {
  /** Human-readable steps that changed the machine; empty when everything was in place. */
  actions: string[];
}

type Log = (line: string) => void;

export async function ensureSetup(log: Log = () => {}): Promise<SetupReport> {
  const actions: string[] = [];
  const missing = await missingPackages(REQUIRED_PACKAGES);
  if (missing.length > 0) {
    log(`installing Debian packages: ${missing.join(", ")}`);
    await installPackages(missing);
    actions.push(`apt-get install ${missing.join(" ")}`);
  }
  const extensionDir = join(await pgConfig("--sharedir"), "extension");
  if (!(await fileExists(join(extensionDir, "vector.control")))) {
    log("building pgvector from Debian's source package (once)");
    await buildPgvector();
    actions.push("built and installed pgvector");
  }
  for (const shim of await installShims(extensionDir)) {
    actions.push(`installed shim ${shim}`);
  }
  return { actions };
}

/**
 * Machine setup, then the local cluster up and bootstrapped; what `npm start`,
 * `npm test` and the bench begin with. Returns whether it started the cluster.
 */
export async function prepareStack(log: Log = () => {}): Promise<boolean> {
  const report = await ensureSetup(log);
  if (report.actions.length) log(`setup: ${report.actions.join("; ")}`);
  const started = await startCluster(log);
  await bootstrapCluster();
  return started;
}

export async function pgConfig(flag: string): Promise<string> {
  return (await run(join(PG_BIN, "pg_config"), [flag])).trim();
}

async function missingPackages(names: string[]): Promise<string[]> {
  const missing: string[] = [];
  for (const name of names) {
    const { code, stdout } = await capture("dpkg-query", ["-W", "-f=${Status}", name]);
    if (code !== 0 || !stdout.includes("install ok installed")) missing.push(name);
  }
  return missing;
}

async function installPackages(names: string[]): Promise<void> {
  if (!isRoot()) {
    throw new CommandError(
      `missing Debian packages: ${names.join(" ")}\n` +
        `  install them with: sudo apt-get install -y ${names.join(" ")}`,
    );
  }
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  await run("apt-get", ["update", "-qq"], { env });
  await run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...names], { env });
}

/** The Debian mirror this machine already uses, read from its apt sources (never hard-coded). */
export async function debianMirrorUri(): Promise<string> {
  const candidates: string[] = [];
  const dir = "/etc/apt/sources.list.d";
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.name.endsWith(".sources")) candidates.push(join(dir, entry.name));
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  for (const path of candidates.sort()) {
    const text = (await readTextIfExists(path)) ?? "";
    for (const stanza of text.split(/\n\s*\n/)) {
      const uri = stanza.match(/^URIs:\s*(\S+)/m)?.[1];
      const suites = stanza.match(/^Suites:\s*(.+)$/m)?.[1] ?? "";
      const enabled = !/^Enabled:\s*no/im.test(stanza);
      if (enabled && uri && /\/debian\/?$/.test(uri) && !/security/.test(suites)) return uri;
    }
  }
  const list = (await readTextIfExists("/etc/apt/sources.list")) ?? "";
  for (const line of list.split("\n")) {
    const m = line.match(/^deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?(\S+\/debian\/?)\s+\S+/);
    if (m && !m[1].includes("security")) return m[1];
  }
  throw new CommandError(
    "cannot find a Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources",
  );
}

/**
 * Fetches Debian's `pgvector` source package through a private, source-only
 * apt configuration (the system's apt sources are left untouched, and no
 * binary line for another suite is ever added) and builds it with PGXS.
 */
async function buildPgvector(): Promise<void> {
  if (!isRoot()) {
    throw new CommandError("pgvector is not installed and building it needs root (make install)");
  }
  const base = join(STACK_DIR, "build", "apt");
  const etc = join(base, "etc");
  await Deno.mkdir(join(etc, "sources.list.d"), { recursive: true });
  await Deno.mkdir(join(etc, "preferences.d"), { recursive: true });
  await Deno.mkdir(join(base, "lists", "partial"), { recursive: true });
  await Deno.mkdir(join(base, "cache", "archives", "partial"), { recursive: true });
  const uri = await debianMirrorUri();
  await Deno.writeTextFile(
    join(etc, "sources.list"),
    `deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${uri} ${PGVECTOR_SOURCE_SUITE} main\n`,
  );
  const aptOptions = [
    `-o`,
    `Dir::Etc::SourceList=${join(etc, "sources.list")}`,
    `-o`,
    `Dir::Etc::SourceParts=${join(etc, "sources.list.d")}`,
    `-o`,
    `Dir::Etc::Preferences=${join(etc, "preferences")}`,
    `-o`,
    `Dir::Etc::PreferencesParts=${join(etc, "preferences.d")}`,
    `-o`,
    `Dir::State::Lists=${join(base, "lists")}`,
    `-o`,
    `Dir::Cache=${join(base, "cache")}`,
    `-o`,
    `APT::Sandbox::User=root`,
  ];
  await run("apt-get", [...aptOptions, "update", "-qq"]);
  const src = join(STACK_DIR, "build", "pgvector");
  await Deno.remove(src, { recursive: true }).catch(() => {});
  await Deno.mkdir(src, { recursive: true });
  await run("apt-get", [...aptOptions, "source", "--download-only", "pgvector"], { cwd: src });
  let dsc = "";
  for await (const entry of Deno.readDir(src)) if (entry.name.endsWith(".dsc")) dsc = entry.name;
  if (!dsc) throw new CommandError("apt-get source pgvector downloaded no .dsc file");
  await run("dpkg-source", ["-x", dsc, "tree"], { cwd: src });
  const tree = join(src, "tree");
  const pgConfigPath = join(PG_BIN, "pg_config");
  // OPTFLAGS="" keeps the build portable (no -march=native), as Debian builds it.
  await run("make", ["-j2", `PG_CONFIG=${pgConfigPath}`, "OPTFLAGS="], { cwd: tree });
  await run("make", ["install", `PG_CONFIG=${pgConfigPath}`], { cwd: tree });
}

/**
 * Copies our SQL-only shims of pgmq, pg_net and supabase_vault into the
 * server's extension directory, unless a real extension of that name is
 * installed there. Returns the names it (re)installed.
 */
async function installShims(extensionDir: string): Promise<string[]> {
  const shimsDir = join(ROOT, "local", "shims");
  const installed: string[] = [];
  for await (const entry of Deno.readDir(shimsDir)) {
    if (!entry.isDirectory) continue;
    const name = entry.name;
    const existing = await readTextIfExists(join(extensionDir, `${name}.control`));
    if (existing !== null && !existing.includes(SHIM_MARKER)) continue; // the real extension
    let changed = false;
    for await (const file of Deno.readDir(join(shimsDir, name))) {
      const from = join(shimsDir, name, file.name);
      const to = join(extensionDir, file.name);
      const wanted = await Deno.readTextFile(from);
      if ((await readTextIfExists(to)) === wanted) continue;
      if (!isRoot()) {
        throw new CommandError(`installing the ${name} shim into ${extensionDir} needs root`);
      }
      await Deno.writeTextFile(to, wanted);
      changed = true;
    }
    if (changed) installed.push(name);
  }
  return installed;
}

if (import.meta.main) {
  const report = await ensureSetup((line) => console.log(`setup: ${line}`));
  console.log(
    report.actions.length ? `setup: done (${report.actions.length} steps)` : "setup: nothing to do",
  );
}
