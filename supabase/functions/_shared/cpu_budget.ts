// How much of a call's CPU time its heavy stages may take: splitting texts
// into chunks and counting tokens, whose cost grows with the batch's text.
// Hosted edge functions are stopped after 2 s of CPU per request, mid-write
// if need be; a batch whose stages have spent the budget hands the rows it
// has not started back to the queue (and a long text continues in the next
// call), so a call stays well inside that limit whatever the batch holds.
//
// The stages are synchronous, so their time on performance.now() is their
// CPU time, or more when the machine is busy: the budget errs on the safe
// side.

export class CpuBudget {
  #spentMs = 0;
  /** When the stage running now began, or null. */
  #since: number | null = null;

  /** `limitMs` undefined: no limit (the pull worker, which no platform stops). */
  constructor(readonly limitMs: number = Infinity) {}

  /** Runs the synchronous `stage`, charging its time (a stage inside another is charged once). */
  charge<T>(stage: () => T): T {
    if (this.#since !== null) return stage();
    this.#since = performance.now();
    try {
      return stage();
    } finally {
      this.#spentMs += performance.now() - this.#since;
      this.#since = null;
    }
  }

  /** Time charged so far, the stage running now included. */
  get spentMs(): number {
    return this.#spentMs + (this.#since === null ? 0 : performance.now() - this.#since);
  }

  /** True once the stages have taken the whole budget (at once, for a budget of 0). */
  get exhausted(): boolean {
    return this.spentMs >= this.limitMs;
  }
}
