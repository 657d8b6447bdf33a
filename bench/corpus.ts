// The chunking bench's corpus: real markdown that nobody here wrote, the
// `.md` files that pinned npm packages publish (READMEs, docs folders,
// guides). `npm pack` fetches each tarball once into a git-ignored cache
// (.local-stack/corpus/), only its markdown files are kept, and later runs
// read them from there.
//
// What is in it: every `*.md` file of each package, except licence texts
// (LICENSE, THIRD-PARTY-NOTICES: legal boilerplate) and files of bundled
// dependencies (`node_modules/` inside a tarball: other packages' text, some
// of it duplicated). Changelogs (CHANGELOG, CHANGES, HISTORY, release notes)
// are kept but cut to their first CHANGELOG_CHARS characters at a heading
// line, so a few of them cannot outweigh the docs (openai's alone is 440 kB).
// Line ends are made LF (the bench makes CRLF copies itself); documents
// whose text is the same as an earlier one's are dropped. Order: the
// packages' order below, then each package's paths in code-unit order.

/** Pinned `name@version`: the packages the project uses first, then well-known ones with docs. */
export const CORPUS_PACKAGES: readonly string[] = [
  // What autoembed itself installs.
  "openai@7.57.0",
  "@supabase/supabase-js@2.119.1",
  "@supabase/auth-js@2.119.1",
  "@supabase/postgrest-js@2.119.1",
  "@supabase/realtime-js@2.119.1",
  "@supabase/storage-js@2.119.1",
  "@supabase/functions-js@2.119.1",
  "zod@4.6.7",
  "pg@8.23.1",
  "postgres@3.4.9",
  "jose@6.2.18",
  "js-tiktoken@1.0.21",
  // Packages that publish a docs folder.
  "fastify@5.12.8",
  "pino@10.4.0",
  "undici@7.30.3",
  "npm@11.21.3",
  "markdownlint@0.40.0",
  "date-fns@4.4.0",
  "@reduxjs/toolkit@2.16.0",
  "socks@2.8.11",
  "knex@3.3.0",
  "pg-promise@12.7.1",
  "mathjs@15.2.0",
  "@anthropic-ai/sdk@1.17.0",
  "axios@1.21.1",
  "highlight.js@11.12.0",
  "nodemailer@10.6.1",
  "mongoose@9.13.2",
  // Packages whose README is their manual (some long).
  "commander@14.0.3",
  "ws@8.23.1",
  "got@14.6.6",
  "ioredis@6.1.0",
  "mongodb@7.9.1",
  "@sinclair/typebox@0.34.52",
  "dotenv@18.0.10",
  "semver@7.8.6",
  "uuid@14.0.3",
  "winston@3.19.0",
  "jsdom@29.1.1",
  "lru-cache@11.5.4",
  "express@5.3.0",
  "ajv@8.20.0",
  "kysely@0.28.20",
  "bullmq@6.7.6",
  "xstate@5.33.3",
  "eslint-plugin-jsdoc@62.9.0",
  "eslint-plugin-unicorn@65.0.1",
  "eslint-plugin-react@7.37.5",
  "socket.io@4.8.4",
  "pino-pretty@13.2.0",
  "@fastify/cookie@11.1.5",
  "rxjs@7.8.2",
  "dayjs@1.11.23",
  "async@3.2.6",
  "execa@9.6.1",
  "cheerio@1.2.0",
  "msw@2.15.0",
  "yaml@2.9.1",
  "vite@8.4.1",
  "prettier@3.10.2",
];

/** How much of a changelog is kept (cut back to the last heading line before it). */
export const CHANGELOG_CHARS = 12_000;

export interface CorpusDocument {
  /** `name@version/path`, unique in the corpus. */
  id: string;
  /** The document, LF line ends. */
  text: string;
}

const CACHE = new URL("../.local-stack/corpus/", import.meta.url);
/** Written last into a package's folder: its files are all there. */
const COMPLETE = ".complete";

/** Whether a path inside a package's tarball is a document of the corpus (see the module comment). */
export function isCorpusPath(path: string): boolean {
  const name = path.split("/").pop()!;
  return /\.md$/i.test(name) && !path.split("/").includes("node_modules") &&
    !/^(licen[cs]e|third[-_]party[-_]notices)/i.test(name);
}

export function isChangelog(path: string): boolean {
  return /^(changelog|changes|history|release[-_]?notes)/i.test(path.split("/").pop()!);
}

/** A changelog's first `limit` characters, cut at the start of its last heading line in them. */
export function capChangelog(text: string, limit = CHANGELOG_CHARS): string {
  if (text.length <= limit) return text;
  const head = text.slice(0, limit);
  let lastHeading = -1;
  for (const match of head.matchAll(/\n#{1,6} /g)) lastHeading = match.index;
  return lastHeading > 0 ? head.slice(0, lastHeading + 1) : head;
}

/**
 * The corpus, fetching the packages not yet in the cache (`npm pack`, then
 * their markdown files extracted). `packages` defaults to CORPUS_PACKAGES.
 */
export async function loadCorpus(
  log: (line: string) => void,
  packages: readonly string[] = CORPUS_PACKAGES,
): Promise<CorpusDocument[]> {
  await Deno.mkdir(CACHE, { recursive: true });
  const documents: CorpusDocument[] = [];
  const seen = new Set<string>();
  for (const spec of packages) {
    const dir = new URL(`${spec.replaceAll("/", "+")}/`, CACHE);
    let paths: string[];
    try {
      paths = JSON.parse(await Deno.readTextFile(new URL(COMPLETE, dir)));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      paths = await fetchPackage(spec, dir);
      log(`corpus: fetched ${spec} (${paths.length} markdown files)`);
    }
    for (const path of paths.filter(isCorpusPath).sort()) {
      let text = (await Deno.readTextFile(new URL(path, dir))).replaceAll("\r\n", "\n");
      if (isChangelog(path)) text = capChangelog(text);
      if (text.trim() === "" || seen.has(text)) continue;
      seen.add(text);
      documents.push({ id: `${spec}/${path}`, text });
    }
  }
  return documents;
}

/** `npm pack`s `spec` into a scratch folder and keeps its corpus files in `dir`; their paths. */
async function fetchPackage(spec: string, dir: URL): Promise<string[]> {
  const scratch = await Deno.makeTempDir({ prefix: "autoembed-corpus-" });
  try {
    const packed = await new Deno.Command("npm", {
      args: ["pack", spec, "--json", "--ignore-scripts", "--pack-destination", scratch],
      cwd: scratch,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!packed.success) {
      throw new Error(
        `npm pack ${spec} failed: ${new TextDecoder().decode(packed.stderr).trim()}`,
      );
    }
    const [{ filename }] = JSON.parse(new TextDecoder().decode(packed.stdout));
    const tarball = await Deno.open(`${scratch}/${filename.replaceAll("/", "-")}`);
    const tar = new Uint8Array(
      await new Response(tarball.readable.pipeThrough(new DecompressionStream("gzip")))
        .arrayBuffer(),
    );
    const paths: string[] = [];
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    for (const entry of tarEntries(tar)) {
      // npm tarballs hold one top folder (usually `package/`).
      const path = entry.path.split("/").slice(1).join("/");
      if (!path || !isCorpusPath(path) || path.split("/").includes("..")) continue;
      const file = new URL(path, dir);
      await Deno.mkdir(new URL(".", file), { recursive: true });
      await Deno.writeFile(file, entry.data);
      paths.push(path);
    }
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(new URL(COMPLETE, dir), JSON.stringify(paths.sort()));
    return paths;
  } finally {
    await Deno.remove(scratch, { recursive: true });
  }
}

/**
 * The regular files of an (uncompressed) tar archive: ustar headers with
 * their name prefix, and the long names of pax (`x`) and GNU (`L`) records.
 */
export function* tarEntries(tar: Uint8Array): Generator<{ path: string; data: Uint8Array }> {
  const text = (from: number, length: number) => {
    const bytes = tar.subarray(from, from + length);
    const nul = bytes.indexOf(0);
    return new TextDecoder().decode(nul < 0 ? bytes : bytes.subarray(0, nul));
  };
  let longName: string | undefined;
  for (let at = 0; at + 512 <= tar.length;) {
    if (tar.subarray(at, at + 512).every((b) => b === 0)) break;
    const size = Number.parseInt(text(at + 124, 12).trim() || "0", 8);
    const type = String.fromCharCode(tar[at + 156] || 48);
    const prefix = text(at + 257, 6).startsWith("ustar") ? text(at + 345, 155) : "";
    const name = longName ?? (prefix ? `${prefix}/${text(at, 100)}` : text(at, 100));
    const data = tar.subarray(at + 512, at + 512 + size);
    at += 512 + Math.ceil(size / 512) * 512;
    if (type === "x") {
      const record = new TextDecoder().decode(data).match(/(?:^|\n)\d+ path=([^\n]*)\n/);
      longName = record?.[1];
      continue;
    }
    if (type === "L") {
      longName = new TextDecoder().decode(data).replace(/\0+$/, "");
      continue;
    }
    longName = undefined;
    if (type === "0" || type === "7") yield { path: name, data };
  }
}
