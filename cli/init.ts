// `autoembed init [DIR]`: a new Supabase project with autoembed in it. Writes
// supabase/config.toml (project_id and the function entries autoembed needs;
// the Supabase CLI fills in every other setting with its defaults, so nothing
// external runs) and supabase/seed.sql (commented examples: the Vault secrets,
// attaching a table), then adds what `install` adds. A folder that already
// has supabase/ is refused: `install --into` is for those.
import { basename, join, resolve } from "node:path";
import { install, InstallError, type Plan } from "./install.ts";

const TEMPLATES = new URL("./templates/", import.meta.url);
export const CONFIG_TEMPLATE = new URL("config.toml", TEMPLATES);
export const SEED_TEMPLATE = new URL("seed.sql", TEMPLATES);

/** A project id as `supabase init` takes it from the folder name, limited to safe characters. */
export function projectIdOf(dir: string): string {
  const id = basename(resolve(dir)).toLowerCase().replace(/[^a-z0-9_-]+/g, "-")
    .replace(/^[-_]+|[-_]+$/g, "");
  return id || "my-project";
}

/** The config.toml template with the project's id. */
export function configToml(template: string, projectId: string): string {
  return template.replace(/^project_id = ".*"$/m, `project_id = "${projectId}"`);
}

export interface InitResult {
  /** The scaffold's own files, project-relative. */
  created: string[];
  /** What install then added. */
  plan: Plan;
}

/** Creates `dir`/supabase/ with the scaffold and autoembed's files; on any failure removes it again. */
export async function init(dir: string): Promise<InitResult> {
  const supabaseDir = join(dir, "supabase");
  try {
    await Deno.mkdir(dir, { recursive: true });
    await Deno.mkdir(supabaseDir);
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) {
      throw new InstallError(
        `${dir} already has a supabase/ folder: add autoembed to it with install --into ${dir}`,
      );
    }
    throw err;
  }
  try {
    const config = configToml(await Deno.readTextFile(CONFIG_TEMPLATE), projectIdOf(dir));
    await Deno.writeTextFile(join(supabaseDir, "config.toml"), config);
    await Deno.copyFile(SEED_TEMPLATE, join(supabaseDir, "seed.sql"));
    const { plan } = await install("install", dir);
    return { created: ["supabase/config.toml", "supabase/seed.sql"], plan };
  } catch (err) {
    await Deno.remove(supabaseDir, { recursive: true });
    throw err;
  }
}

/** The lines init prints: what it wrote, and what comes next. */
export function initReport(result: InitResult): string[] {
  return [
    ...result.created.map((p) => `created  ${p}`),
    ...result.plan.added.map((p) => `added    ${p}`),
    "next: uncomment what you need in supabase/seed.sql; then supabase start (local), or " +
    "supabase link and supabase db push (hosted), then supabase functions deploy embed search " +
    "and set the secrets (README: Install on a Supabase project)",
  ];
}
