// Local stand-in for the Supabase functions gateway: serves
// supabase/functions/<name>/index.ts at /functions/v1/<name>. Each function
// runs in its own Deno process (its index.ts calls Deno.serve() with no port;
// DENO_SERVE_ADDRESS binds it to a private loopback port) with the
// environment a Supabase function gets; this gateway proxies to it and, as
// the platform does, checks the JWT unless config.toml says verify_jwt = false.
import { join } from "node:path";
import { API_URL, LOCAL_JWT_SECRET, ROOT } from "./config.ts";
import { CommandError, eachLine, fileExists, freePort, readTextIfExists } from "./proc.ts";
import {
  bearerToken,
  createJwtVerifier,
  JwksUnavailableError,
  JwtError,
  type JwtVerifier,
  signJwt,
  verifyJwt,
} from "../supabase/functions/_shared/jwt.ts";
import { sleep } from "../supabase/functions/_shared/sleep.ts";

export const FUNCTIONS_DIR = join(ROOT, "supabase", "functions");

export interface FunctionsOptions {
  port: number;
  hostname?: string;
  /** Extra environment for every function (e.g. SUPABASE_DB_URL). */
  env: Record<string, string>;
  log?: (line: string) => void;
  /** Only these functions (default: every folder with an index.ts, except `_shared`-style ones). */
  only?: string[];
  /** Folder of the functions (default supabase/functions) and the config.toml to read. */
  dir?: string;
  configToml?: string;
  /**
   * A JSON Web Key Set of signing keys (as a hosted project publishes): the
   * gateway then also accepts ES256/RS256 tokens verified against it, and the
   * functions get it as SUPABASE_JWKS_URL. Default: HS256 with the local secret only.
   */
  jwksUrl?: string;
}

export interface FunctionsServer {
  url: string;
  names: string[];
  stop(): Promise<void>;
}

/** Parses `KEY=value` lines of a dotenv file (quotes stripped, `#` comments skipped). */
export function parseDotenv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/);
    if (!m) continue;
    let value = m[2];
    if (/^(['"]).*\1$/.test(value)) value = value.slice(1, -1);
    env[m[1]] = value;
  }
  return env;
}

/** `verify_jwt` per function from supabase/config.toml (`[functions.<name>]` tables). */
export function parseVerifyJwt(toml: string): Map<string, boolean> {
  const result = new Map<string, boolean>();
  let current: string | null = null;
  for (const raw of toml.split("\n")) {
    const line = raw.replace(/#.*$/, "").trim();
    const table = line.match(/^\[functions\.([A-Za-z0-9_-]+)\]$/);
    if (table) {
      current = table[1];
      continue;
    }
    if (line.startsWith("[")) current = null;
    const setting = current && line.match(/^verify_jwt\s*=\s*(true|false)$/);
    if (setting && current) result.set(current, setting[1] === "true");
  }
  return result;
}

/**
 * Claims of the local stack's keys: the Supabase CLI's demo keys (issuer
 * `supabase-demo`, a fixed expiry in 2032), so the same role always gets the
 * same key and a restart of the stack changes no key an app holds.
 */
const LOCAL_KEY_EXPIRES = 1983812996;

/** The local stack's key for `role` (anon or service_role), like `supabase status` prints. */
export async function localJwt(role: string): Promise<string> {
  return await signJwt({ iss: "supabase-demo", role, exp: LOCAL_KEY_EXPIRES }, LOCAL_JWT_SECRET);
}

/** True when `token` is an unexpired HS256 JWT signed with the local secret (the gateway's check). */
export async function verifyLocalJwt(token: string): Promise<boolean> {
  return await gatewayAccepts(token, (t) => verifyJwt(t, LOCAL_JWT_SECRET));
}

async function gatewayAccepts(token: string, verify: (token: string) => Promise<unknown>) {
  try {
    await verify(token);
    return true;
  } catch (err) {
    if (err instanceof JwtError || err instanceof JwksUnavailableError) return false;
    throw err;
  }
}

/** The gateway's check with signing keys too: every token verified, none read on trust. */
function gatewayVerifier(jwksUrl: string): JwtVerifier {
  return createJwtVerifier({
    secret: LOCAL_JWT_SECRET,
    jwksUrl: new URL(jwksUrl),
    keyless: "refuse",
  });
}

async function waitForPort(
  port: number,
  child: Deno.ChildProcess,
  name: string,
  timeoutMs = 60_000,
) {
  let exited = false;
  child.status.then(() => (exited = true));
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited) {
      throw new CommandError(`function ${name} exited during start-up (see its log lines above)`);
    }
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      return;
    } catch {
      await sleep(100);
    }
  }
  throw new CommandError(`function ${name} did not listen within ${timeoutMs / 1000}s`);
}

async function pipeLines(
  stream: ReadableStream<Uint8Array>,
  log: (line: string) => void,
  prefix: string,
) {
  try {
    await eachLine(stream, (line) => log(`${prefix} ${line}`));
  } catch {
    // the process went away; nothing more to read
  }
}

interface Running {
  name: string;
  port: number;
  child: Deno.ChildProcess;
  piping: Promise<unknown>;
}

/** Discovers the functions to serve: folders with an index.ts, skipping `_shared` and similar. */
export async function discoverFunctions(dir = FUNCTIONS_DIR): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (
        entry.isDirectory && !entry.name.startsWith("_") && !entry.name.startsWith(".") &&
        await fileExists(join(dir, entry.name, "index.ts"))
      ) names.push(entry.name);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return names.sort();
}

export async function startFunctions(options: FunctionsOptions): Promise<FunctionsServer> {
  const log = options.log ?? (() => {});
  const hostname = options.hostname ?? "127.0.0.1";
  const dir = options.dir ?? FUNCTIONS_DIR;
  const names = options.only ?? await discoverFunctions(dir);
  const verify = parseVerifyJwt(
    (await readTextIfExists(options.configToml ?? join(ROOT, "supabase", "config.toml"))) ?? "",
  );
  const dotenv = parseDotenv((await readTextIfExists(join(dir, ".env"))) ?? "");
  const baseEnv: Record<string, string> = {
    SUPABASE_URL: API_URL,
    SUPABASE_ANON_KEY: await localJwt("anon"),
    SUPABASE_SERVICE_ROLE_KEY: await localJwt("service_role"),
    // Lets a function check the caller's token again itself (search does).
    SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
    ...(options.jwksUrl ? { SUPABASE_JWKS_URL: options.jwksUrl } : {}),
    ...options.env,
    ...dotenv,
  };
  const gateway = options.jwksUrl ? gatewayVerifier(options.jwksUrl) : undefined;
  const accepts = (token: string) =>
    gateway ? gatewayAccepts(token, gateway.verify) : verifyLocalJwt(token);
  const deno = Deno.execPath();
  const running = new Map<string, Running>();

  async function spawn(name: string): Promise<Running> {
    const port = freePort();
    const child = new Deno.Command(deno, {
      args: ["run", "-A", "--no-prompt", join(dir, name, "index.ts")],
      cwd: ROOT,
      env: { ...baseEnv, DENO_SERVE_ADDRESS: `tcp:127.0.0.1:${port}`, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const piping = Promise.all([
      pipeLines(child.stdout, log, `[${name}]`),
      pipeLines(child.stderr, log, `[${name}]`),
    ]);
    const entry = { name, port, child, piping };
    try {
      await waitForPort(port, child, name);
    } catch (err) {
      await piping;
      throw err;
    }
    running.set(name, entry);
    child.status.then((status) => {
      if (running.get(name) === entry) {
        running.delete(name);
        if (!stopping) log(`[${name}] exited (code ${status.code}); restarted on the next request`);
      }
    });
    return entry;
  }

  let stopping = false;
  for (const name of names) await spawn(name);

  const handler = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    const m = url.pathname.match(/^\/functions\/v1\/([A-Za-z0-9_-]+)(\/.*)?$/);
    if (!m || !names.includes(m[1])) {
      return Response.json({ msg: "Function not found" }, { status: 404 });
    }
    const name = m[1];
    // Browsers send CORS preflights without credentials; the function answers them.
    if (req.method !== "OPTIONS" && (verify.get(name) ?? true)) {
      if (!(await accepts(bearerToken(req.headers.get("authorization"))))) {
        return Response.json({ msg: "Invalid JWT" }, { status: 401 });
      }
    }
    const target = running.get(name) ?? await spawn(name);
    const forwarded = new URL(`http://127.0.0.1:${target.port}/${name}${m[2] ?? ""}${url.search}`);
    try {
      const res = await fetch(forwarded, {
        method: req.method,
        headers: req.headers,
        body: req.body,
        redirect: "manual",
      });
      return new Response(res.body, { status: res.status, headers: res.headers });
    } catch (err) {
      return Response.json(
        { msg: `function ${name} failed to respond: ${(err as Error).message}` },
        {
          status: 502,
        },
      );
    }
  };

  let server: Deno.HttpServer;
  try {
    server = Deno.serve({ hostname, port: options.port, onListen: () => {} }, handler);
  } catch (err) {
    for (const r of running.values()) r.child.kill("SIGTERM");
    if (err instanceof Deno.errors.AddrInUse) {
      throw new CommandError(
        `port ${options.port} on ${hostname} is taken by another process.\n` +
          `  Stop it, or choose another port with AUTOEMBED_API_PORT=<port>.`,
      );
    }
    throw err;
  }

  return {
    url: `http://${hostname}:${(server.addr as Deno.NetAddr).port}/functions/v1`,
    names,
    async stop() {
      stopping = true;
      await server.shutdown();
      const all = [...running.values()];
      for (const r of all) {
        try {
          r.child.kill("SIGTERM");
        } catch { /* already gone */ }
      }
      await Promise.all(all.map(async (r) => {
        const timer = setTimeout(() => {
          try {
            r.child.kill("SIGKILL");
          } catch { /* already gone */ }
        }, 5000);
        await r.child.status;
        clearTimeout(timer);
        await r.piping;
      }));
      running.clear();
    },
  };
}
