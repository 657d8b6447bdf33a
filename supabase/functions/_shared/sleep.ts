// How everything waits: one pause, which may end early when its signal
// aborts (a stop must not wait out a backoff), and one jittered backoff step.

/** Resolves after `ms`, or as soon as `signal` aborts; never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (ms <= 0) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done);
  });
}

/**
 * The pause before retry `attempt` (1-based): a step doubling from `minMs` up
 * to `maxMs`, jittered between half and all of it so that peers restarted
 * together do not retry in step.
 */
export function jitteredBackoff(attempt: number, minMs: number, maxMs: number): number {
  const step = Math.min(maxMs, minMs * 2 ** Math.min(attempt - 1, 10));
  return step / 2 + Math.random() * (step / 2);
}
