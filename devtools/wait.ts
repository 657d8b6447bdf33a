// How tests wait: on a condition they can name, never on a fixed sleep, so
// a test proves its premise before it asserts its claim, and a timeout says
// what never happened.
import { sleep } from "../supabase/functions/_shared/sleep.ts";

export interface WaitOptions {
  /** What is awaited, for the timeout message, e.g. "the queue to drain". */
  what: string;
  /** Give up after this long, ms (default 30 s). */
  timeoutMs?: number;
  /** Pause between checks, ms (default 50). */
  intervalMs?: number;
  /** The state last seen, added to the timeout message. */
  describe?: () => string | Promise<string>;
}

type Truthy<T> = Exclude<T, false | 0 | "" | null | undefined>;

/**
 * Checks `condition` until it returns a truthy value, and returns that value;
 * throws after `timeoutMs` naming `what`. An error thrown by `condition` ends
 * the wait with that error.
 */
export async function waitFor<T>(
  condition: () => T | Promise<T>,
  options: WaitOptions,
): Promise<Truthy<T>> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value as Truthy<T>;
    if (Date.now() >= deadline) break;
    await sleep(options.intervalMs ?? 50);
  }
  const state = options.describe ? `; ${await options.describe()}` : "";
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${options.what}${state}`);
}
