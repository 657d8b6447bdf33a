// What one call of the embed function may take on: CPU time in the stages
// whose cost grows with the text (splitting into chunks, counting tokens),
// and chunks to embed and write (each one's vector is decoded, formatted and
// sent: CPU and memory that grow with their number). Hosted edge functions
// are stopped after 2 s of CPU per request, mid-write if need be; a batch
// that has used its budget hands the rows it has not started back to the
// queue, and a long text's split stops after its current part and continues
// in the next call, so a call stays well inside that limit whatever the
// batch holds.
//
// The stages are synchronous, so their time on performance.now() is their
// CPU time, or more when the machine is busy: the budget errs on the safe
// side.

export interface CallLimits {
  /** Milliseconds of splitting and counting (default: no limit, as in the pull worker). */
  cpuMs?: number;
  /** Chunks split (default: no limit). */
  chunks?: number;
}

export class CallBudget {
  readonly cpuMs: number;
  readonly chunks: number;
  #spentMs = 0;
  /** When the stage running now began, or null. */
  #since: number | null = null;
  #chunks = 0;

  constructor(limits: CallLimits = {}) {
    this.cpuMs = limits.cpuMs ?? Infinity;
    this.chunks = limits.chunks ?? Infinity;
  }

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

  /** Counts chunks split for this call. */
  addChunks(count: number): void {
    this.#chunks += count;
  }

  /** Time charged so far, the stage running now included. */
  get spentMs(): number {
    return this.#spentMs + (this.#since === null ? 0 : performance.now() - this.#since);
  }

  /**
   * True once the call has used its budget (at once, for a limit of 0):
   * its time, or its chunks with `moreChunks` split now and not yet added.
   */
  spent(moreChunks = 0): boolean {
    return this.spentMs >= this.cpuMs || this.#chunks + moreChunks >= this.chunks;
  }
}
