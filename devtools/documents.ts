// Long markdown documents for chunking tests and benchmarks, the same for a
// seed on every run: a title, `##`/`###` sections, prose paragraphs of a few
// sentences, one bullet list and one fenced code block (with a `#` comment
// line that is not a heading).

const NOUNS = (
  "embedding vector table row queue worker model chunk index query trigger function " +
  "batch provider token schema column migration cluster search document paragraph " +
  "heading secret backlog tenant replica cache"
).split(" ");
const VERBS = (
  "keeps updates splits embeds stores reads writes drains checks skips retries " +
  "batches hashes copies replaces indexes returns notices"
).split(" ");
const ADJECTIVES = (
  "fresh stale long short cheap local remote durable atomic lexical semantic " +
  "careful quiet busy empty large small stable new old"
).split(" ");
const OTHERS = (
  "quickly|again|later|once|in order|without a call|for every row|at the next tick|" +
  "under load|by its hash|with backoff|in one statement"
).split("|");

/** A small deterministic PRNG (mulberry32), in [0, 1). */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sentence(next: () => number): string {
  const pick = <T>(list: T[]) => list[Math.floor(next() * list.length)];
  const words: string[] = [];
  const length = 5 + Math.floor(next() * 12);
  for (let i = 0; i < length; i++) {
    const kind = i % 4;
    words.push(
      kind === 0 ? pick(ADJECTIVES) : kind === 1 ? pick(NOUNS) : kind === 2 ? pick(VERBS) : pick(
        next() < 0.5 ? NOUNS : OTHERS,
      ),
    );
  }
  const text = words.join(" ");
  return `${text[0].toUpperCase()}${text.slice(1)}${next() < 0.15 ? "?" : "."}`;
}

function title(next: () => number): string {
  return sentence(next).slice(0, -1).split(" ").slice(0, 2 + Math.floor(next() * 3)).join(" ");
}

function paragraph(next: () => number): string {
  const sentences: string[] = [];
  const count = 2 + Math.floor(next() * 5);
  for (let i = 0; i < count; i++) sentences.push(sentence(next));
  return sentences.join(" ");
}

const CODE_BLOCK = [
  "```ts",
  "# not a heading: this line is inside a code fence",
  'const chunks = splitIntoChunks(text, { splitter: "markdown", chunkSize: 512, chunkOverlap: 64 });',
  "",
  "for (const chunk of chunks) {",
  "  console.log(chunk.start, chunk.end, chunk.tokens);",
  "}",
  "```",
].join("\n");

/**
 * A markdown document of `paragraphs` prose paragraphs under a `#` title,
 * with a `##` section every 6 to 10 paragraphs, some `###` subsections, a
 * bullet list and a fenced code block (which has a blank line inside).
 * Blocks are separated by one blank line.
 */
export function makeDocument(seed: number, paragraphs = 60): string {
  const next = random(seed);
  const blocks = [`# Guide ${seed}`];
  let untilSection = 0;
  const listAt = Math.floor(paragraphs / 3);
  const codeAt = Math.floor((2 * paragraphs) / 3);
  for (let i = 0; i < paragraphs; i++) {
    if (untilSection === 0) {
      blocks.push(`## ${title(next)}`);
      untilSection = 6 + Math.floor(next() * 5);
    } else if (next() < 0.12) {
      blocks.push(`### ${title(next)}`);
    }
    untilSection--;
    blocks.push(paragraph(next));
    if (i === listAt) blocks.push([1, 2, 3].map(() => `- ${sentence(next)}`).join("\n"));
    if (i === codeAt) blocks.push(CODE_BLOCK);
  }
  return blocks.join("\n\n") + "\n";
}

/**
 * `doc` with its `index`-th prose paragraph edited as a writer would: one
 * sentence rewritten (a word replaced, a clause added), so the paragraph's
 * length changes at one place. `where` picks the sentence: the middle one
 * (default), the first or the last.
 */
export function editParagraph(
  doc: string,
  index: number,
  where: "middle" | "first" | "last" = "middle",
): string {
  const trailing = doc.endsWith("\n") ? "\n" : "";
  const blocks = doc.slice(0, doc.length - trailing.length).split("\n\n");
  let seen = -1;
  const at = blocks.findIndex((block) => isProse(block) && ++seen === index);
  if (at < 0) throw new RangeError(`the document has no prose paragraph ${index}`);
  const sentences = blocks[at].split(/(?<=[.?]) /);
  const middle = where === "first"
    ? 0
    : where === "last"
    ? sentences.length - 1
    : Math.floor(sentences.length / 2);
  const words = sentences[middle].slice(0, -1).split(" ");
  const word = Math.floor(words.length / 2);
  words[word] = words[word] === "revised" ? "amended" : "revised";
  sentences[middle] = `${words.join(" ")}, as an edit of paragraph ${index} says${
    sentences[middle].slice(-1)
  }`;
  blocks[at] = sentences.join(" ");
  return blocks.join("\n\n") + trailing;
}

function isProse(block: string): boolean {
  return !/^(#|- |```)/.test(block) && !block.startsWith("const ") &&
    !block.startsWith("for (");
}
