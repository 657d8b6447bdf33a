// Figures and their presentation: medians with ranges, percentiles, and the
// Markdown that bench/RESULTS.md is made of.

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const rank = Math.min(s.length, Math.max(1, Math.ceil((p / 100) * s.length)));
  return s[rank - 1];
}

/** A number with sensible precision: 3 significant digits below 100, whole above. */
export function fmt(value: number, digits?: number): string {
  if (!Number.isFinite(value)) return "n/a";
  if (digits !== undefined) return value.toFixed(digits);
  const abs = Math.abs(value);
  if (abs >= 100) return Math.round(value).toLocaleString("en-US");
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toPrecision(2);
}

/** "median (min–max)" of repeated measurements, or the one value. */
export function spread(values: number[], digits?: number): string {
  if (values.length === 1) return fmt(values[0], digits);
  return `${fmt(median(values), digits)} (${fmt(Math.min(...values), digits)}–${
    fmt(Math.max(...values), digits)
  })`;
}

export function table(headers: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.map(String).join(" | ")} |`;
  return [line(headers), line(headers.map(() => "---")), ...rows.map(line)].join("\n");
}

/** One scenario's part of RESULTS.md, built up as the scenario runs. */
export class Section {
  readonly parts: string[] = [];
  constructor(readonly title: string) {}

  text(markdown: string): this {
    this.parts.push(markdown.trim());
    return this;
  }

  table(headers: string[], rows: (string | number)[][]): this {
    this.parts.push(table(headers, rows));
    return this;
  }

  markdown(): string {
    return [`## ${this.title}`, ...this.parts].join("\n\n");
  }
}

export function goal(met: boolean): string {
  return met ? "met" : "**missed**";
}
