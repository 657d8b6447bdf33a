// Primary-key values of jobs, checked before they reach SQL, so a forged id
// is refused alone instead of failing the read of its whole batch.

/** Whether `id` can be a value of a primary key of type `pkType`. */
export function idFitsKeyType(id: string, pkType: string): boolean {
  const ranges: Record<string, bigint> = {
    smallint: 2n ** 15n,
    integer: 2n ** 31n,
    bigint: 2n ** 63n,
  };
  const bound = ranges[pkType];
  if (bound !== undefined) {
    if (!/^-?\d{1,19}$/.test(id)) return false;
    const value = BigInt(id);
    return value >= -bound && value < bound;
  }
  if (pkType === "uuid") return /^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$/i.test(id);
  return id.length <= 1000 && !id.includes("\u0000");
}

/** Key types whose values idFitsKeyType checks exactly, so no id of a job can fail their cast. */
export const EXACTLY_CHECKED_KEY_TYPES = new Set(["smallint", "integer", "bigint", "uuid", "text"]);
