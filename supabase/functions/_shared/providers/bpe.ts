// Exact token counts for tiktoken encodings (cl100k_base, ...), from the rank
// files js-tiktoken ships. js-tiktoken's own `encode` merges each pre-token
// with a scan that is quadratic in its length (a 300-character CJK sentence,
// which is one pre-token, takes half a second; a 10,000-letter word a
// minute), so the merge here is the same algorithm kept in a heap: the same
// tokens, in O(n log n). Tests check it against js-tiktoken's `encode`.
import type { TiktokenBPE } from "js-tiktoken/lite";

/** Counts and cuts text by the tokens of one BPE encoding. */
export interface BpeCounter {
  readonly name: string;
  count(text: string): number;
  truncate(text: string, maxTokens: number): string;
}

/**
 * A counter for `ranks`, built on first use (parsing a rank file takes a
 * few hundred milliseconds; callers cache the counter). Special tokens
 * such as `<|endoftext|>` are counted as ordinary text, as the embeddings
 * API treats its input.
 */
export function createBpeCounter(name: string, ranks: TiktokenBPE): BpeCounter {
  let encoding: Encoding | undefined;
  const get = () => (encoding ??= new Encoding(ranks));
  return {
    name,
    count: (text) => get().count(text),
    truncate: (text, maxTokens) => get().truncate(text, maxTokens),
  };
}

class Encoding {
  /** Token bytes as a "binary string" (one char per byte) → rank. */
  private readonly ranks = new Map<string, number>();
  private readonly pattern: RegExp;
  private readonly utf8 = new TextEncoder();

  constructor(bpe: TiktokenBPE) {
    this.pattern = new RegExp(bpe.pat_str, "gu");
    // Each line of the rank file: a label, the rank of its first token, then
    // base64 tokens with consecutive ranks.
    for (const line of bpe.bpe_ranks.split("\n")) {
      if (!line) continue;
      const fields = line.split(" ");
      const offset = Number.parseInt(fields[1], 10);
      for (let i = 2; i < fields.length; i++) this.ranks.set(atob(fields[i]), offset + i - 2);
    }
  }

  count(text: string): number {
    let tokens = 0;
    for (const match of text.matchAll(this.pattern)) {
      const bytes = this.binary(match[0]);
      tokens += this.ranks.has(bytes) ? 1 : this.merge(bytes).length;
    }
    return tokens;
  }

  /**
   * The prefix of `text` up to the end of its `maxTokens`-th token, moved
   * back to a code point boundary, and further back (one token at a time)
   * in the rare case that the cut text counts more than `maxTokens` alone.
   */
  truncate(text: string, maxTokens: number): string {
    const max = Math.max(0, Math.floor(maxTokens));
    let cut = this.tokenEnd(text, max);
    if (cut === text.length) return text;
    for (let budget = max; budget > 0 && this.count(text.slice(0, cut)) > max;) {
      budget--;
      cut = this.tokenEnd(text, budget);
    }
    return text.slice(0, cut);
  }

  /** UTF-16 offset where the `n`-th token ends (rounded down to a code point), or text.length. */
  private tokenEnd(text: string, n: number): number {
    let tokens = 0;
    for (const match of text.matchAll(this.pattern)) {
      const piece = match[0];
      const bytes = this.binary(piece);
      const ends = this.ranks.has(bytes) ? [bytes.length] : this.merge(bytes);
      if (tokens + ends.length <= n) {
        tokens += ends.length;
        continue;
      }
      const byteEnd = n - tokens === 0 ? 0 : ends[n - tokens - 1];
      return match.index! + utf16Offset(piece, byteEnd);
    }
    return text.length;
  }

  /** UTF-8 bytes of `piece` as a binary string; ASCII is its own encoding. */
  private binary(piece: string): string {
    // deno-lint-ignore no-control-regex
    if (/^[\x00-\x7f]*$/.test(piece)) return piece;
    const bytes = this.utf8.encode(piece);
    let out = "";
    for (let i = 0; i < bytes.length; i += 4096) {
      out += String.fromCharCode(...bytes.subarray(i, i + 4096));
    }
    return out;
  }

  /**
   * Byte-pair merge of one pre-token: repeatedly joins the adjacent pair
   * whose joined bytes have the lowest rank (the leftmost on ties), until no
   * pair is a token. Returns the end offset of each resulting token.
   */
  private merge(bytes: string): number[] {
    const n = bytes.length;
    // Parts are a linked list over their start offsets; `next[i]` is where
    // part i ends. `pairRank[i]` is the rank of part i joined with the next.
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    const pairRank = new Float64Array(n);
    const heap = new MinHeap();
    const rankOf = (start: number): number => {
      const end = next[start];
      if (end >= n) return Infinity;
      return this.ranks.get(bytes.slice(start, next[end])) ?? Infinity;
    };
    for (let i = 0; i < n; i++) {
      next[i] = i + 1;
      prev[i] = i - 1;
    }
    const schedule = (start: number) => {
      pairRank[start] = rankOf(start);
      // Rank and start in one number so the heap orders by rank, then position.
      if (pairRank[start] !== Infinity) heap.push(pairRank[start] * 2 ** 32 + start);
    };
    for (let i = 0; i < n - 1; i++) schedule(i);
    while (heap.size > 0) {
      const key = heap.pop();
      const start = key % 2 ** 32;
      const rank = (key - start) / 2 ** 32;
      if (!alive[start] || pairRank[start] !== rank) continue;
      const gone = next[start];
      alive[gone] = 0;
      next[start] = next[gone];
      if (next[gone] < n) prev[next[gone]] = start;
      schedule(start);
      if (prev[start] >= 0) schedule(prev[start]);
    }
    const ends: number[] = [];
    for (let i = 0; i < n; i = next[i]) ends.push(next[i]);
    return ends;
  }
}

/** UTF-16 offset in `piece` of UTF-8 byte offset `byteOffset`, rounded down to a code point. */
function utf16Offset(piece: string, byteOffset: number): number {
  let bytes = 0;
  for (let i = 0; i < piece.length;) {
    const cp = piece.codePointAt(i)!;
    const size = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (bytes + size > byteOffset) return i;
    bytes += size;
    i += cp > 0xffff ? 2 : 1;
  }
  return piece.length;
}

/** A binary min-heap of numbers. */
class MinHeap {
  private items: number[] = [];

  get size(): number {
    return this.items.length;
  }

  push(value: number): void {
    const items = this.items;
    let i = items.push(value) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (items[parent] <= value) break;
      items[i] = items[parent];
      i = parent;
    }
    items[i] = value;
  }

  pop(): number {
    const items = this.items;
    const top = items[0];
    const last = items.pop()!;
    if (items.length > 0) {
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= items.length) break;
        const right = left + 1;
        const child = right < items.length && items[right] < items[left] ? right : left;
        if (items[child] >= last) break;
        items[i] = items[child];
        i = child;
      }
      items[i] = last;
    }
    return top;
  }
}
