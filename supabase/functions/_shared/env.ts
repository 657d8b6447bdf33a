// Reading settings from the environment: one parser per kind of value, so the
// function, the worker and the local stack accept and refuse the same text.

/** Reads one variable; undefined when it is not set. */
export type Env = (name: string) => string | undefined;

export class SettingsError extends Error {}

/** `text` as a positive whole number (as `Number` reads it), or undefined when it is not one. */
export function parsePositiveInt(text: string): number | undefined {
  const value = Number(text);
  return Number.isInteger(value) && value > 0 ? value : undefined;
}

/** Variable `name` as a positive whole number; `fallback` when unset or empty. */
export function positiveInt(env: Env, name: string, fallback: number): number {
  const raw = env(name);
  if (raw === undefined || raw === "") return fallback;
  const value = parsePositiveInt(raw);
  if (value === undefined) {
    throw new SettingsError(`${name} must be a positive whole number, got "${raw}"`);
  }
  return value;
}

/** Variable `name` as a whole number, 0 or more; `fallback` when unset or empty. */
export function nonNegativeInt(env: Env, name: string, fallback: number): number {
  const raw = env(name);
  if (raw === undefined || raw === "") return fallback;
  if (raw.trim() === "0") return 0;
  const value = parsePositiveInt(raw);
  if (value === undefined) {
    throw new SettingsError(`${name} must be a whole number, 0 or more, got "${raw}"`);
  }
  return value;
}

/** Variable `name` as a boolean: true/1/yes or false/0/no (any case); false when unset. */
export function flag(env: Env, name: string): boolean {
  const raw = (env(name) ?? "").toLowerCase();
  if (raw === "" || raw === "false" || raw === "0" || raw === "no") return false;
  if (raw === "true" || raw === "1" || raw === "yes") return true;
  throw new SettingsError(`${name} must be true or false, got "${raw}"`);
}
