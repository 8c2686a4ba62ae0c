//! Structure-first chunking, bounded by the embedding model's token window.
//!
//! Why this shape: a chunk is the unit that is embedded, keyword-indexed and returned by search,
//! so it must (a) fit all-MiniLM-L6-v2's 256-token window *including* `[CLS]`/`[SEP]` (anything
//! beyond is silently truncated by the model and would be invisible to semantic search), and
//! (b) be a readable span of the original document, so that context assembly can quote and merge
//! chunks by byte offset.
//!
//! Algorithm:
//! 1. The document is split into **blocks** by Markdown structure: ATX headings (`#`…`######`),
//!    fenced code blocks (```` ``` ```` / `~~~`, kept whole), and paragraphs (separated by blank
//!    lines). Every block remembers the heading path in force (`["Guide", "Install"]`).
//! 2. Blocks of one section are packed greedily into a chunk while the chunk still fits the
//!    budget. A new heading always starts a new chunk, except that a chunk holding only headings
//!    continues into the next section (so `# A` directly followed by `## B` is not a lone chunk).
//! 3. A block larger than the budget (a long paragraph or code block) is cut into token windows
//!    with an overlap of [`OVERLAP_TOKENS`] model tokens; the cut prefers a line break, then a
//!    sentence end, then any whitespace, within the last quarter of the window.
//! 4. Every chunk is embedded as `"{title} > {heading path}\n{text}"` (the *context prefix* gives
//!    the model the section it belongs to); the budget is `256 - 2 - prefix tokens`, and each
//!    chunk's final embedding text is re-counted exactly and shrunk if needed.
//!
//! Token counting uses the embedding model's own tokenizer when it is loaded. When the model is
//! absent, [`TokenCounter::Approx`] stands in: every run of letters/digits counts one token per
//! started 4 characters (`ceil(len/4)`), every other non-space character counts one token. For
//! English WordPiece this over-counts (most words are one token), so approximate chunks are a bit
//! smaller than necessary but stay inside the window once the model is back.

use tokenizers::Tokenizer;

/// all-MiniLM-L6-v2's window, special tokens included.
pub const MODEL_MAX_TOKENS: usize = 256;
/// `[CLS]` and `[SEP]`.
pub const SPECIAL_TOKENS: usize = 2;
/// Overlap, in model tokens, between consecutive windows of one over-long block (≈12% of a window).
pub const OVERLAP_TOKENS: usize = 32;
/// The context prefix (title + heading path) gets at most this many tokens; longer prefixes are
/// shortened (heading path first, then title) so the text keeps most of the window.
pub const MAX_PREFIX_TOKENS: usize = 48;

/// Counts tokens the way the embedding model will (or approximates it, see module docs).
pub enum TokenCounter {
    /// The model tokenizer, with truncation and padding disabled.
    Model(Box<Tokenizer>),
    /// Documented approximation used when the model is absent.
    Approx,
}

impl TokenCounter {
    /// Builds a counter from the embedding service's tokenizer, if there is one. The tokenizer is
    /// cloned once with truncation/padding switched off (the service's copy truncates at 256,
    /// which would hide the length of long blocks). Build it once and share it.
    pub fn new(tokenizer: Option<&Tokenizer>) -> Self {
        match tokenizer {
            Some(t) => {
                let mut t = t.clone();
                if t.with_truncation(None).is_err() {
                    return TokenCounter::Approx;
                }
                t.with_padding(None);
                TokenCounter::Model(Box::new(t))
            }
            None => TokenCounter::Approx,
        }
    }

    /// Name of the counting method, for documentation in responses and logs.
    pub fn method(&self) -> &'static str {
        match self {
            TokenCounter::Model(_) => "model-wordpiece",
            TokenCounter::Approx => "approx-4-chars",
        }
    }

    /// Byte spans `(start, end)` of the tokens of `text`, without special tokens. Spans never
    /// cross whitespace and always fall on char boundaries.
    pub fn spans(&self, text: &str) -> Vec<(usize, usize)> {
        if let TokenCounter::Model(t) = self {
            if let Ok(enc) = t.encode(text, false) {
                let mut out: Vec<(usize, usize)> = Vec::with_capacity(enc.len());
                for &(s, e) in enc.get_offsets() {
                    if s < e && e <= text.len() && text.is_char_boundary(s) && text.is_char_boundary(e) {
                        out.push((s, e));
                    } else if let Some(last) = out.last_mut() {
                        // Zero-width or odd offsets (rare normaliser artefacts): still a token.
                        let e = last.1;
                        out.push((e, e));
                    } else {
                        out.push((0, 0));
                    }
                }
                return out;
            }
        }
        approx_spans(text)
    }

    /// Number of tokens of `text` without special tokens.
    pub fn count(&self, text: &str) -> usize {
        if let TokenCounter::Model(t) = self {
            if let Ok(enc) = t.encode_fast(text, false) {
                return enc.len();
            }
        }
        approx_spans(text).len()
    }
}

fn approx_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut run_start: Option<usize> = None;
    let mut run_chars = 0usize;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() && (c.is_ascii() || !is_cjk(c)) {
            if run_start.is_none() {
                run_start = Some(i);
                run_chars = 0;
            }
            if run_chars == 4 {
                if let Some(s) = run_start {
                    out.push((s, i));
                }
                run_start = Some(i);
                run_chars = 0;
            }
            run_chars += 1;
            continue;
        }
        if let Some(s) = run_start.take() {
            out.push((s, i));
        }
        if !c.is_whitespace() {
            out.push((i, i + c.len_utf8()));
        }
    }
    if let Some(s) = run_start {
        out.push((s, text.len()));
    }
    out
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF)
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPlan {
    /// Position in the document, from 0.
    pub ord: usize,
    /// Byte offsets into the original document: `text == &content[start..end]`.
    pub start: usize,
    pub end: usize,
    /// Headings in force, outermost first.
    pub heading_path: Vec<String>,
    /// The context prefix embedded and indexed before the text (may be empty).
    pub prefix: String,
    /// Model tokens of the embedding text, special tokens included (≤ [`MODEL_MAX_TOKENS`]).
    pub model_tokens: usize,
}

impl ChunkPlan {
    /// The text handed to the embedding model and to the keyword index.
    pub fn embed_text(&self, content: &str) -> String {
        embed_text(&self.prefix, content.get(self.start..self.end).unwrap_or(""))
    }
}

/// Joins a context prefix and a chunk text the way chunks are embedded and indexed.
pub fn embed_text(prefix: &str, text: &str) -> String {
    if prefix.is_empty() {
        text.to_string()
    } else {
        format!("{prefix}\n{text}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BlockKind {
    Heading,
    Paragraph,
    Code,
}

#[derive(Debug, Clone)]
struct Block {
    start: usize,
    end: usize,
    kind: BlockKind,
    /// Index into the list of heading paths.
    path: usize,
}

/// Splits Markdown-ish text into blocks. Never fails; any text is a sequence of paragraphs.
fn blocks(content: &str) -> (Vec<Block>, Vec<Vec<String>>) {
    let mut paths: Vec<Vec<String>> = vec![Vec::new()];
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::new();
    let mut para: Option<(usize, usize)> = None;
    // (fence char, fence len, block start)
    let mut fence: Option<(char, usize, usize)> = None;
    let mut pos = 0usize;
    for raw in content.split_inclusive('\n') {
        let line_start = pos;
        pos += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let line_end = line_start + line.len();
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((fc, flen, fstart)) = fence {
            let t = trimmed.trim_end();
            if indent < 4 && t.len() >= flen && t.chars().all(|c| c == fc) {
                out.push(Block { start: fstart, end: line_end, kind: BlockKind::Code, path: paths.len() - 1 });
                fence = None;
            }
            continue;
        }
        let flush = |para: &mut Option<(usize, usize)>, out: &mut Vec<Block>, path: usize| {
            if let Some((s, e)) = para.take() {
                out.push(Block { start: s, end: e, kind: BlockKind::Paragraph, path });
            }
        };
        if indent < 4 {
            if let Some(fc) = trimmed.chars().next().filter(|c| *c == '`' || *c == '~') {
                let flen = trimmed.chars().take_while(|c| *c == fc).count();
                if flen >= 3 {
                    flush(&mut para, &mut out, paths.len() - 1);
                    fence = Some((fc, flen, line_start + indent));
                    continue;
                }
            }
            let hashes = trimmed.bytes().take_while(|b| *b == b'#').count();
            if (1..=6).contains(&hashes) && trimmed[hashes..].chars().next().is_none_or(|c| c == ' ' || c == '\t') {
                flush(&mut para, &mut out, paths.len() - 1);
                let title = trimmed[hashes..].trim().trim_end_matches('#').trim().to_string();
                while stack.last().is_some_and(|(lvl, _)| *lvl >= hashes) {
                    stack.pop();
                }
                stack.push((hashes, title));
                paths.push(stack.iter().map(|(_, t)| t.clone()).collect());
                out.push(Block { start: line_start + indent, end: line_end, kind: BlockKind::Heading, path: paths.len() - 1 });
                continue;
            }
        }
        if trimmed.trim_end().is_empty() {
            flush(&mut para, &mut out, paths.len() - 1);
            continue;
        }
        match &mut para {
            Some((_, e)) => *e = line_end,
            None => para = Some((line_start + indent, line_end)),
        }
    }
    if let Some((_, _, fstart)) = fence {
        // Unclosed fence: the rest of the document is code.
        let end = content.trim_end_matches(['\n', '\r']).len().max(fstart);
        out.push(Block { start: fstart, end, kind: BlockKind::Code, path: paths.len() - 1 });
    }
    if let Some((s, e)) = para {
        out.push(Block { start: s, end: e, kind: BlockKind::Paragraph, path: paths.len() - 1 });
    }
    (out, paths)
}

/// Builds the context prefix for a chunk, shortened to [`MAX_PREFIX_TOKENS`].
fn make_prefix(counter: &TokenCounter, title: Option<&str>, path: &[String]) -> (String, usize) {
    let title = title.map(str::trim).filter(|t| !t.is_empty());
    let mut parts: Vec<&str> = title.into_iter().collect();
    parts.extend(path.iter().map(String::as_str).filter(|s| !s.is_empty()));
    // Drop the outermost headings (after the title) until the prefix fits, then the title.
    loop {
        if parts.is_empty() {
            return (String::new(), 0);
        }
        let p = parts.join(" > ");
        let n = counter.count(&p);
        if n <= MAX_PREFIX_TOKENS {
            return (p, n);
        }
        let drop_at = if title.is_some() && parts.len() > 1 { 1 } else { 0 };
        parts.remove(drop_at);
    }
}

/// Chunks `content`. Returns chunks in document order; empty or whitespace-only text yields none.
pub fn chunk(counter: &TokenCounter, content: &str, title: Option<&str>) -> Vec<ChunkPlan> {
    let (blocks, paths) = blocks(content);
    let mut out: Vec<ChunkPlan> = Vec::new();
    // Pending chunk: (start, end, path index, tokens, only headings so far)
    let mut cur: Option<(usize, usize, usize, usize, bool)> = None;
    let mut prefixes: Vec<Option<(String, usize)>> = vec![None; paths.len()];
    let mut prefix_for = |pi: usize| -> (String, usize) {
        if let Some(p) = &prefixes[pi] {
            return p.clone();
        }
        let p = make_prefix(counter, title, &paths[pi]);
        prefixes[pi] = Some(p.clone());
        p
    };

    let emit = |out: &mut Vec<ChunkPlan>, start: usize, end: usize, pi: usize, prefix: &(String, usize)| {
        split_to_fit(counter, content, start, end, &paths[pi], prefix, out);
    };

    // The last block of the pending chunk: (start, tokens, a lead-in that introduces what follows),
    // and where the block before it ended.
    let mut last: Option<(usize, usize, bool)> = None;
    let mut before_last_end = 0usize;
    for b in &blocks {
        let (prefix, ptoks) = prefix_for(b.path);
        let budget = MODEL_MAX_TOKENS - SPECIAL_TOKENS - ptoks;
        let btoks = counter.count(&content[b.start..b.end]);
        let lead_in = b.kind == BlockKind::Paragraph && is_lead_in(&content[b.start..b.end]);
        if let Some((s, e, pi, toks, only_headings)) = cur {
            let same_section = pi == b.path || only_headings;
            let fits = toks + btoks <= budget;
            if same_section && fits && (b.kind != BlockKind::Heading || only_headings) {
                let np = if only_headings { b.path } else { pi };
                cur = Some((s, b.end, np, toks + btoks, only_headings && b.kind == BlockKind::Heading));
                before_last_end = e;
                last = Some((b.start, btoks, lead_in));
                continue;
            }
            // A list item or a sentence ending in ':' stays with the code block it introduces when the
            // two fit together: the chunk ends before the lead-in, which starts the next chunk.
            if let Some((ls, ltoks, true)) = last {
                if same_section && b.kind == BlockKind::Code && ls > s && ltoks + btoks <= budget {
                    let pre = prefix_for(pi);
                    emit(&mut out, s, before_last_end, pi, &pre);
                    cur = Some((ls, b.end, b.path, ltoks + btoks, false));
                    before_last_end = e;
                    last = Some((b.start, btoks, false));
                    continue;
                }
            }
            let pre = prefix_for(pi);
            emit(&mut out, s, e, pi, &pre);
            cur = None;
        }
        if btoks <= budget {
            cur = Some((b.start, b.end, b.path, btoks, b.kind == BlockKind::Heading));
            last = Some((b.start, btoks, lead_in));
        } else {
            emit(&mut out, b.start, b.end, b.path, &(prefix, ptoks));
            last = None;
        }
    }
    if let Some((s, e, pi, _, _)) = cur {
        let pre = prefix_for(pi);
        emit(&mut out, s, e, pi, &pre);
    }
    for (i, c) in out.iter_mut().enumerate() {
        c.ord = i;
    }
    out
}

/// Whether a paragraph introduces what follows: its last line is a list item (`- `, `* `, `+ `,
/// `1. `, `1) `), or it ends with a colon.
fn is_lead_in(text: &str) -> bool {
    let text = text.trim_end();
    if text.ends_with(':') {
        return true;
    }
    let last = text.lines().last().unwrap_or("").trim_start();
    if ["- ", "* ", "+ "].iter().any(|m| last.starts_with(m)) {
        return true;
    }
    let digits = last.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && (last[digits..].starts_with(". ") || last[digits..].starts_with(") "))
}

/// Emits `content[start..end]` as one chunk if its exact embedding text fits, else as overlapping
/// token windows.
fn split_to_fit(
    counter: &TokenCounter,
    content: &str,
    start: usize,
    end: usize,
    path: &[String],
    prefix: &(String, usize),
    out: &mut Vec<ChunkPlan>,
) {
    let text = &content[start..end];
    if text.trim().is_empty() {
        return;
    }
    let make =
        |s: usize, e: usize, n: usize| ChunkPlan { ord: 0, start: s, end: e, heading_path: path.to_vec(), prefix: prefix.0.clone(), model_tokens: n };
    let exact = |s: usize, e: usize| counter.count(&embed_text(&prefix.0, &content[s..e])) + SPECIAL_TOKENS;
    let n = exact(start, end);
    if n <= MODEL_MAX_TOKENS {
        out.push(make(start, end, n));
        return;
    }
    let spans: Vec<(usize, usize)> = counter.spans(text).into_iter().map(|(s, e)| (s + start, e + start)).collect();
    if spans.is_empty() {
        return;
    }
    let budget = (MODEL_MAX_TOKENS - SPECIAL_TOKENS).saturating_sub(prefix.1).max(8);
    let mut first = 0usize;
    while first < spans.len() {
        let mut window = budget.min(spans.len() - first);
        loop {
            let mut last = first + window; // exclusive
            if last < spans.len() {
                last = best_cut(content, &spans, first, last);
            }
            let s = spans[first].0;
            let e = spans[last - 1].1;
            let n = exact(s, e);
            if n <= MODEL_MAX_TOKENS || window <= 1 {
                if e > s {
                    out.push(make(s, e, n.min(MODEL_MAX_TOKENS)));
                }
                if last >= spans.len() {
                    return;
                }
                // Overlap: step back OVERLAP_TOKENS, then forward to a word start; always progress.
                let mut next = last.saturating_sub(OVERLAP_TOKENS).max(first + 1);
                while next < last && next > first + 1 && spans[next].0 == spans[next - 1].1 {
                    next += 1;
                }
                first = next;
                break;
            }
            // Re-tokenising the slice produced more tokens than the window (word cut): shrink.
            window = (window * 9 / 10).max(1).min(window - 1);
        }
    }
}

/// Chooses where to end a window that would end before token `last`: prefers, within the last
/// quarter of the window, a line break, then a sentence end, then any whitespace gap.
fn best_cut(content: &str, spans: &[(usize, usize)], first: usize, last: usize) -> usize {
    let min = first + ((last - first) * 3 / 4).max(1);
    let gap = |i: usize| &content[spans[i - 1].1..spans[i].0];
    let mut best: Option<(u8, usize)> = None;
    for i in (min.max(first + 1)..=last).rev() {
        let g = gap(i);
        let score = if g.contains('\n') {
            3
        } else if !g.is_empty() && content[spans[i - 1].0..spans[i - 1].1].ends_with(['.', '!', '?', ';']) {
            2
        } else if !g.is_empty() {
            1
        } else {
            0
        };
        if score == 3 {
            return i;
        }
        if score > 0 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i).unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn model_counter() -> Option<TokenCounter> {
        let dirs = [
            std::env::var("WARREN_MODEL_DIR").unwrap_or_default(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/models/all-MiniLM-L6-v2").to_string(),
            "/tmp/minilm".to_string(),
        ];
        dirs.iter()
            .filter(|d| !d.is_empty())
            .find_map(|d| Tokenizer::from_file(std::path::Path::new(d).join("tokenizer.json")).ok())
            .map(|t| TokenCounter::new(Some(&t)))
    }

    fn check(counter: &TokenCounter, content: &str, title: Option<&str>) -> Vec<ChunkPlan> {
        let chunks = chunk(counter, content, title);
        let mut prev_start = 0;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.ord, i);
            assert!(c.start < c.end && c.end <= content.len(), "bad range {c:?}");
            assert!(content.is_char_boundary(c.start) && content.is_char_boundary(c.end));
            assert!(c.start >= prev_start, "chunks out of order");
            prev_start = c.start;
            let et = c.embed_text(content);
            let n = counter.count(&et) + SPECIAL_TOKENS;
            assert!(n <= MODEL_MAX_TOKENS, "chunk {i} has {n} tokens");
            assert_eq!(n, c.model_tokens);
        }
        // Every non-whitespace byte is covered by some chunk.
        let mut covered = vec![false; content.len()];
        for c in &chunks {
            covered[c.start..c.end].iter_mut().for_each(|b| *b = true);
        }
        for (i, ch) in content.char_indices() {
            if !ch.is_whitespace() {
                assert!(covered[i], "byte {i} ({ch:?}) not covered");
            }
        }
        chunks
    }

    #[test]
    fn headings_paths_and_code_blocks() {
        let doc = "# Guide\n\nIntro text.\n\n## Install\n\nRun this:\n\n```sh\ncargo build\n\ncargo test\n```\n\n## Use\nCall it.\n";
        let c = check(&TokenCounter::Approx, doc, Some("T"));
        assert!(c.len() >= 3, "{c:?}");
        assert_eq!(c[0].heading_path, vec!["Guide"]);
        let code = c.iter().find(|c| doc[c.start..c.end].contains("cargo build")).unwrap();
        assert!(doc[code.start..code.end].contains("cargo test"), "code block split");
        assert_eq!(code.heading_path, vec!["Guide", "Install"]);
        assert_eq!(code.prefix, "T > Guide > Install");
        let last = c.last().unwrap();
        assert_eq!(last.heading_path, vec!["Guide", "Use"]);
        assert_eq!(&doc[last.start..last.end], "## Use\nCall it.");
        // Hashes inside a code block are not headings.
        let c = check(&TokenCounter::Approx, "```\n# not a heading\n```\ntext", None);
        assert!(c.iter().all(|c| c.heading_path.is_empty()));
    }

    #[test]
    fn a_lead_in_stays_with_the_code_block_it_introduces() {
        // A section that nearly fills a chunk, then a list item introducing a code block: without the
        // rule, the item ends one chunk and its commands start the next.
        let filler: String = (0..190).map(|i| format!("w{} ", i % 9)).collect();
        let code = format!("```sh\n{}```", (0..12).map(|i| format!("warren restore acme --txid {i}\n")).collect::<String>());
        for lead in ["1. Restore a tenant from its replica", "- Restore a tenant from its replica", "To restore a tenant, run:"] {
            let doc = format!("# Ops\n\n{filler}\n\n{lead}\n\n{code}\n\nAfter that, check it.\n");
            let c = check(&TokenCounter::Approx, &doc, None);
            let with_code = c.iter().find(|c| doc[c.start..c.end].contains("--txid 0")).expect("a chunk holds the code");
            assert!(doc[with_code.start..with_code.end].contains(lead), "{lead:?} was separated from its code: {c:?}");
            assert!(c.iter().filter(|c| doc[c.start..c.end].contains(lead)).count() == 1, "the lead-in is in one chunk only");
        }
        // A plain paragraph (no list item, no colon) is packed as before.
        let doc = format!("# Ops\n\n{filler}\n\nSome closing words\n\n{code}\n");
        let c = check(&TokenCounter::Approx, &doc, None);
        let with_words = c.iter().find(|c| doc[c.start..c.end].contains("Some closing words")).unwrap();
        assert!(!doc[with_words.start..with_words.end].contains("--txid 0"), "{c:?}");
        assert!(is_lead_in("Run this:") && is_lead_in("a\n12) step") && !is_lead_in("plain words") && !is_lead_in("1.5 is a number"));
    }

    #[test]
    fn long_paragraph_is_windowed_with_overlap() {
        let para: String = (0..900).map(|i| format!("word{} ", i % 37)).collect();
        let c = check(&TokenCounter::Approx, &para, None);
        assert!(c.len() > 3);
        for w in c.windows(2) {
            assert!(w[1].start < w[0].end, "no overlap between windows");
            assert!(w[1].start > w[0].start);
        }
    }

    #[test]
    fn model_tokenizer_bounds() {
        let Some(counter) = model_counter() else {
            eprintln!("model tokenizer absent; skipping");
            return;
        };
        let para: String = (0..2000).map(|i| format!("antidisestablishment{} é 漢字. ", i % 13)).collect();
        let doc = format!("# Title\n\n{para}\n\n```rust\nfn main() {{}}\n```\n");
        let c = check(&counter, &doc, Some("A long title"));
        assert!(c.len() > 5);
    }

    #[test]
    fn degenerate_inputs() {
        for s in ["", "   \n\n", "#", "```", "\u{0}\u{1}", "a", "#######", "~~~\n~~", "# \n##\n"] {
            check(&TokenCounter::Approx, s, None);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunks_are_bounded_and_cover(s in "(# [a-z ]{0,12}\n|```\n|[a-zé漢 .,\n]{0,80}|\n\n){0,60}", title in proptest::option::of("[a-z ]{0,300}")) {
            check(&TokenCounter::Approx, &s, title.as_deref());
        }
    }
}
