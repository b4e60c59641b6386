//! Prompts as CLIP reads them: A1111's emphasis syntax (`(word)`, `(word:1.3)`, `[word]`),
//! the CLIP tokenizer, and prompts longer than one 77-token window split into chunks that are
//! encoded separately and joined, so nothing past the 75th token is silently dropped.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// Tokens in one CLIP window, and the prompt tokens that fit between its BOS and EOS.
pub const WINDOW: usize = 77;
pub const CHUNK: usize = WINDOW - 2;
/// At most this many windows (= 600 prompt tokens); beyond it the prompt is refused.
pub const MAX_CHUNKS: usize = 8;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// CLIP's word split (lower-cased contractions, letters, single digits, other symbols).
const CLIP_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Merges CLIP uses from its released BPE file (the rest of the file is never read by CLIP):
/// 49,408 tokens = 256 bytes + 256 word-final bytes + these + BOS + EOS.
const CLIP_MERGES: usize = 49152 - 256 - 2;

/// The byte-to-character table of byte-level BPE (GPT-2's, which CLIP reuses), in the order
/// CLIP lists it in its vocabulary: printable bytes first, then the others, which are given
/// the characters from U+0100 on.
pub fn byte_chars() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let mut next = 256u32;
    for b in (0..=255u8).filter(|&b| !printable(b)) {
        out.push((b, char::from_u32(next).unwrap_or('?')));
        next += 1;
    }
    out
}

/// Builds CLIP's `vocab.json` and `merges.txt` from its released BPE file
/// (`bpe_simple_vocab_16e6.txt`: a header line, then one merge per line), in the order CLIP's
/// own tokenizer numbers them, so ids match every SD text encoder.
pub fn clip_vocab_from_bpe(bpe: &str) -> Result<(String, String)> {
    let merges: Vec<&str> = bpe.lines().skip(1).take(CLIP_MERGES).collect();
    if merges.len() < CLIP_MERGES || merges.iter().any(|m| m.split(' ').count() != 2) {
        return Err(Error::invalid(
            "the CLIP BPE file is not CLIP's: it needs 48,894 merges of two symbols each after its header line",
        ));
    }
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    let mut push = |t: String| {
        let id = vocab.len();
        vocab.insert(t, serde_json::json!(id));
    };
    for (_, c) in &chars {
        push(c.to_string());
    }
    for (_, c) in &chars {
        push(format!("{c}</w>"));
    }
    for m in &merges {
        push(m.replace(' ', ""));
    }
    push(BOS.into());
    push(EOS.into());
    let mut merges_txt = String::from("#version: 0.2\n");
    for m in merges {
        merges_txt.push_str(m);
        merges_txt.push('\n');
    }
    Ok((serde_json::to_string(&vocab)?, merges_txt))
}

/// A piece of prompt text with its emphasis.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub text: String,
    pub weight: f32,
}

/// Parses A1111's emphasis: `(a)` ×1.1, `[a]` ÷1.1, `(a:1.3)` ×1.3, nesting multiplies,
/// `\(` is a literal bracket, an unclosed bracket applies to the rest. `BREAK` is not special.
pub fn parse_weights(prompt: &str) -> Vec<Fragment> {
    let mut out: Vec<Fragment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, out: &mut Vec<Fragment>| {
        if !text.is_empty() {
            out.push(Fragment {
                text: std::mem::take(text),
                weight: 1.0,
            });
        }
    };
    let scale = |out: &mut [Fragment], from: usize, by: f32| {
        for f in &mut out[from..] {
            f.weight *= by;
        }
    };
    let chars: Vec<char> = prompt.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                text.push(chars[i + 1]);
                i += 2;
                continue;
            }
            '(' => {
                flush(&mut text, &mut out);
                round.push(out.len());
            }
            '[' => {
                flush(&mut text, &mut out);
                square.push(out.len());
            }
            ':' if !round.is_empty() => {
                // `:1.3)` closes the innermost round bracket with that weight.
                if let Some((weight, end)) = explicit_weight(&chars, i + 1) {
                    flush(&mut text, &mut out);
                    if let Some(from) = round.pop() {
                        scale(&mut out, from, weight);
                    }
                    i = end;
                    continue;
                }
                text.push(c);
            }
            ')' if !round.is_empty() => {
                flush(&mut text, &mut out);
                if let Some(from) = round.pop() {
                    scale(&mut out, from, 1.1);
                }
            }
            ']' if !square.is_empty() => {
                flush(&mut text, &mut out);
                if let Some(from) = square.pop() {
                    scale(&mut out, from, 1.0 / 1.1);
                }
            }
            _ => text.push(c),
        }
        i += 1;
    }
    flush(&mut text, &mut out);
    for from in round {
        scale(&mut out, from, 1.1);
    }
    for from in square {
        scale(&mut out, from, 1.0 / 1.1);
    }
    // Join neighbours of equal weight (they tokenize the same either way).
    let mut merged: Vec<Fragment> = Vec::new();
    for f in out {
        match merged.last_mut() {
            Some(last) if last.weight == f.weight => last.text.push_str(&f.text),
            _ => merged.push(f),
        }
    }
    merged
}

/// `1.3)` (spaces allowed) starting at `at`: the weight and the index after the `)`.
fn explicit_weight(chars: &[char], at: usize) -> Option<(f32, usize)> {
    let mut j = at;
    while j < chars.len() && chars[j].is_whitespace() {
        j += 1;
    }
    let start = j;
    while j < chars.len() && (chars[j].is_ascii_digit() || matches!(chars[j], '.' | '+' | '-')) {
        j += 1;
    }
    let number: String = chars[start..j].iter().collect();
    while j < chars.len() && chars[j].is_whitespace() {
        j += 1;
    }
    if j < chars.len() && chars[j] == ')' {
        let w: f32 = number.parse().ok()?;
        w.is_finite().then_some((w, j + 1))
    } else {
        None
    }
}

/// The windows CLIP encodes for a prompt: token ids (77 each, BOS … EOS, padded) and the
/// weight of every position (1.0 for BOS, EOS and padding).
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    pub ids: Vec<Vec<u32>>,
    pub weights: Vec<Vec<f32>>,
    /// Prompt tokens before chunking (for the UI's "87/150 tokens").
    pub token_count: usize,
}

/// CLIP's byte-level BPE with `</w>` word ends, built from a diffusers `tokenizer/` folder
/// (`vocab.json` + `merges.txt`) or a `tokenizer.json`.
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl ClipTokenizer {
    /// `pad_with`: the token that fills a window after EOS (`None`: EOS itself, as SD 1.x;
    /// SD 2.x pads with `!`).
    pub fn load(dir: &Path, pad_with: Option<&str>) -> Result<ClipTokenizer> {
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| {
                Error::invalid(format!("cannot read the tokenizer {}: {e}", json.display()))
            })?
        } else {
            Self::from_vocab_and_merges(&dir.join("vocab.json"), &dir.join("merges.txt"))?
        };
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                Error::invalid(format!(
                    "the tokenizer in {} has no {t} token: it is not a CLIP tokenizer",
                    dir.display()
                ))
            })
        };
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        let pad = match pad_with {
            Some(p) => id(p)?,
            None => eos,
        };
        Ok(ClipTokenizer {
            inner,
            bos,
            eos,
            pad,
        })
    }

    fn from_vocab_and_merges(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                Error::io(format!("cannot read the tokenizer file {}", p.display()), e)
            })
        };
        let vocab: HashMap<String, u32> = serde_json::from_str(&read(vocab)?)
            .map_err(|e| Error::invalid(format!("{} is not a vocabulary: {e}", vocab.display())))?;
        let merges: Vec<(String, String)> = read(merges)?
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS.into())
            .build()
            .map_err(|e| Error::invalid(format!("the CLIP vocabulary is inconsistent: {e}")))?;
        let mut t = Tokenizer::new(bpe);
        let whitespace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| Error::Internal(format!("normalizer: {e}")))?;
        t.with_normalizer(Some(NormalizerSequence::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])))
        .map_err(|e| Error::Internal(format!("normalizer: {e}")))?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| Error::Internal(format!("pre-tokenizer regex: {e}")))?;
        t.with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])));
        Ok(t)
    }

    /// Token ids of `text`, without BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::invalid(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Splits a weighted prompt into 77-token windows.
    pub fn windows(&self, prompt: &str) -> Result<Windows> {
        let mut tokens: Vec<(u32, f32)> = Vec::new();
        for f in parse_weights(prompt) {
            tokens.extend(self.encode(&f.text)?.into_iter().map(|id| (id, f.weight)));
        }
        let token_count = tokens.len();
        let chunks = token_count.div_ceil(CHUNK).max(1);
        if chunks > MAX_CHUNKS {
            return Err(Error::invalid(format!(
                "the prompt is {token_count} CLIP tokens long; the limit is {} ({MAX_CHUNKS} windows of {CHUNK})",
                MAX_CHUNKS * CHUNK
            )));
        }
        let mut ids = Vec::with_capacity(chunks);
        let mut weights = Vec::with_capacity(chunks);
        for c in 0..chunks {
            let part = &tokens[(c * CHUNK).min(token_count)..((c + 1) * CHUNK).min(token_count)];
            let mut w_ids = vec![self.bos];
            let mut w_weights = vec![1.0];
            w_ids.extend(part.iter().map(|t| t.0));
            w_weights.extend(part.iter().map(|t| t.1));
            w_ids.push(self.eos);
            w_weights.push(1.0);
            w_ids.resize(WINDOW, self.pad);
            w_weights.resize(WINDOW, 1.0);
            ids.push(w_ids);
            weights.push(w_weights);
        }
        Ok(Windows {
            ids,
            weights,
            token_count,
        })
    }

    /// Adds empty windows (BOS, EOS, padding) to `w` until it has `count`: what pads the shorter
    /// of prompt and negative prompt.
    pub fn pad_to(&self, w: &mut Windows, count: usize) {
        while w.ids.len() < count {
            let mut ids = vec![self.bos, self.eos];
            ids.resize(WINDOW, self.pad);
            w.ids.push(ids);
            w.weights.push(vec![1.0; WINDOW]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(text: &str, weight: f32) -> Fragment {
        Fragment {
            text: text.into(),
            weight,
        }
    }

    fn close(a: &[Fragment], b: &[Fragment]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.text == y.text && (x.weight - y.weight).abs() < 1e-5)
    }

    #[test]
    fn emphasis_follows_a1111() {
        let cases: Vec<(&str, Vec<Fragment>)> = vec![
            ("a cat", vec![frag("a cat", 1.0)]),
            ("a (cat)", vec![frag("a ", 1.0), frag("cat", 1.1)]),
            ("a ((cat))", vec![frag("a ", 1.0), frag("cat", 1.21)]),
            ("a [cat]", vec![frag("a ", 1.0), frag("cat", 1.0 / 1.1)]),
            (
                "(red cat:1.5) on",
                vec![frag("red cat", 1.5), frag(" on", 1.0)],
            ),
            ("(a (b:2):0.5)", vec![frag("a ", 0.5), frag("b", 1.0)]),
            (r"\(literal\)", vec![frag("(literal)", 1.0)]),
            ("(unclosed", vec![frag("unclosed", 1.1)]),
            ("time: 3pm", vec![frag("time: 3pm", 1.0)]),
            ("(a:b)", vec![frag("a:b", 1.1)]),
            ("红色(苹果:1.2)", vec![frag("红色", 1.0), frag("苹果", 1.2)]),
        ];
        for (prompt, want) in cases {
            let got = parse_weights(prompt);
            assert!(close(&got, &want), "{prompt}: {got:?}");
        }
    }
}
