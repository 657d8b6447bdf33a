// Reads a V8 CPU profile (`deno run --cpu-prof`, a .cpuprofile file) into
// self and inclusive milliseconds per function, for the bench's "where the
// worker's time goes".

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface FunctionTime {
  /** `name (file:line)`, the file relative to the repository or the package. */
  name: string;
  selfMs: number;
  /** Samples with the function anywhere on the stack (once per sample). */
  totalMs: number;
}

export interface ProfileSummary {
  /** Sampled time, ms (the process's JS thread, idle included). */
  sampledMs: number;
  idleMs: number;
  functions: FunctionTime[];
}

/**
 * Where a frame's code is, without the machine's paths: `npm:<package>@<version>/<file>` for a
 * package from Deno's npm cache, the path in the repository for ours, `ext:...` as it is.
 */
export function codeLocation(url: string): string {
  const cached = url.match(/\/npm\/[^/]+\/((?:@[^/]+\/)?[^/]+)\/(\d[^/]*)\/(.*)$/);
  if (cached) return `npm:${cached[1]}@${cached[2]}/${cached[3]}`;
  const vendored = url.match(/\/node_modules\/\.deno\/([^/]+)\/node_modules\/(.*)$/);
  if (vendored) return `npm:${vendored[1]}/${vendored[2].split("/").slice(1).join("/")}`;
  const ours = url.match(/\/((?:supabase|cli|local|devtools|bench)\/.*)$/);
  if (ours && url.startsWith("file:")) return ours[1];
  return url.startsWith("file:") ? url.slice(url.lastIndexOf("/") + 1) : url;
}

function frameName(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  if (!url) return functionName || "(anonymous)";
  return `${functionName || "(anonymous)"} (${codeLocation(url)}:${lineNumber + 1})`;
}

export function summarizeProfile(profile: CpuProfile): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  let sampledUs = 0;
  let idleUs = 0;
  profile.samples.forEach((id, i) => {
    // A sample's time is the delta to the next one.
    const us = profile.timeDeltas[i + 1] ?? 0;
    sampledUs += us;
    const leaf = byId.get(id)!;
    const leafName = frameName(leaf);
    if (leaf.callFrame.functionName === "(idle)") idleUs += us;
    self.set(leafName, (self.get(leafName) ?? 0) + us);
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const name = frameName(byId.get(at)!);
      if (seen.has(name)) continue;
      seen.add(name);
      total.set(name, (total.get(name) ?? 0) + us);
    }
  });
  const functions = [...total.entries()].map(([name, us]) => ({
    name,
    selfMs: (self.get(name) ?? 0) / 1000,
    totalMs: us / 1000,
  }));
  return { sampledMs: sampledUs / 1000, idleMs: idleUs / 1000, functions };
}

/** The profile `deno run --cpu-prof --cpu-prof-dir=<dir>` wrote (the only or the largest one). */
export async function readProfile(dir: string): Promise<CpuProfile> {
  let best: { path: string; size: number } | null = null;
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.name.endsWith(".cpuprofile")) continue;
    const path = `${dir}/${entry.name}`;
    const { size } = await Deno.stat(path);
    if (!best || size > best.size) best = { path, size };
  }
  if (!best) throw new Error(`no .cpuprofile in ${dir}`);
  return JSON.parse(await Deno.readTextFile(best.path));
}
