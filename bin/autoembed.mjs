#!/usr/bin/env node
// `autoembed` as npm installs it: runs cli/autoembed.ts on the Deno binary of
// the npm package `deno` (a dependency, pinned), with this package's deno.json
// and deno.package.lock (written by prepack), so the npm: imports resolve to
// the versions tested together, checked against their hashes, and the user's
// own Deno config, if any, plays no part. Deno keeps the modules in its own
// cache (DENO_DIR, by default ~/.cache/deno), as for any Deno program.
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const config = join(root, "deno.json");
const lock = join(root, "deno.package.lock");

/**
 * The worker's V8 heap limits are those of deno.json's `autoembed` task, the
 * one place they are set (the benchmarks measure them, a test keeps them).
 */
function v8Flags() {
  const task = JSON.parse(readFileSync(config, "utf8")).tasks?.autoembed ?? "";
  const flags = task.match(/(?:^|\s)(--v8-flags=\S+)/)?.[1];
  if (!flags) throw new Error(`autoembed: no --v8-flags in the autoembed task of ${config}`);
  return flags;
}

/**
 * The binary of the npm package `deno`: its own resolver finds it beside the
 * package, or in its platform package when its install script did not run.
 */
function denoBinary() {
  try {
    return createRequire(import.meta.url)("deno/install_api.cjs").runInstall();
  } catch (err) {
    // e.g. a platform Deno publishes no binary for (musl), or a partial install
    console.error(`autoembed: no Deno binary from the npm package deno: ${err.message}`);
    process.exit(1);
  }
}

if (!existsSync(lock)) {
  console.error(
    "autoembed: deno.package.lock is missing (npm pack writes it): in a clone, run deno task autoembed",
  );
  process.exit(2);
}

// Package.json is hidden from Deno: it names Deno itself and the Supabase CLI,
// which Deno would fetch into its cache (hundreds of MB) and never use.
const env = { ...process.env, DENO_NO_PACKAGE_JSON: "1", DENO_NO_UPDATE_CHECK: "1" };
// Deno reads the registry from NPM_CONFIG_REGISTRY; npx passes npm's own as npm_config_registry.
if (!env.NPM_CONFIG_REGISTRY && env.npm_config_registry) {
  env.NPM_CONFIG_REGISTRY = env.npm_config_registry;
}

const child = spawn(
  denoBinary(),
  [
    "run",
    "--allow-all",
    v8Flags(),
    "--config",
    config,
    "--lock",
    lock,
    "--frozen",
    join(root, "cli", "autoembed.ts"),
    ...process.argv.slice(2),
  ],
  { stdio: "inherit", env },
);

// The worker stops gracefully on SIGINT/SIGTERM: pass them on, and exit once it has.
const forward = (signal) => child.kill(signal);
const signals = ["SIGINT", "SIGTERM", "SIGHUP"];
for (const signal of signals) process.on(signal, forward);
child.on("error", (err) => {
  console.error(`autoembed: cannot start Deno: ${err.message}`);
  process.exit(1);
});
child.on("exit", (code, signal) => {
  for (const s of signals) process.off(s, forward);
  if (signal) process.kill(process.pid, signal);
  else process.exit(code ?? 1);
});
