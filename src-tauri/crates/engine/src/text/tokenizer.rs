//! Tokenizers built from GGUF metadata alone (`tokenizer.ggml.*`), matching llama.cpp.
//!
//! Two vocabulary types:
//! - byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizer named by
//!   `tokenizer.ggml.pre`. Each pre-tokenizer is the regex llama.cpp uses for that name; an
//!   unknown name is refused rather than guessed, because a wrong split silently changes every
//!   prompt.
//! - SentencePiece BPE (`tokenizer.ggml.model = llama`: Llama 1/2, Mistral 7B v0.1, TinyLlama).
//!   SentencePiece merges the adjacent pair whose joined piece has the highest score; a merge
//!   list ranked by that score gives the same result, so the file's scores become BPE merges.
//!   Spaces are written `▁`, one is put before the text (`add_space_prefix`), and characters
//!   outside the vocabulary fall back to `<0xNN>` byte tokens.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::models::gguf::{Header, Value};

/// GPT-2's split: contractions, letters, numbers, other symbols, whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3: case-insensitive contractions, numbers in groups of up to three.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2: like Llama 3 but every digit alone.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers this build knows, by their `tokenizer.ggml.pre` name.
pub const SUPPORTED_PRE: [&str; 5] = ["gpt-2", "smollm", "llama-bpe", "llama3", "qwen2"];

pub struct TextTokenizer {
    /// Special tokens (control and user-defined) are recognised in the text.
    with_special: Tokenizer,
    /// Special tokens' text is tokenized like any other text (for user input).
    plain: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end a reply: EOS, EOT and the chat end markers the vocabulary has.
    pub stop: Vec<u32>,
    pub pre: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("pre", &self.pre)
            .field("vocab", &self.vocab_size())
            .finish()
    }
}

fn strings<'a>(h: &'a Header, key: &str) -> Result<&'a [String]> {
    match h.get(key) {
        Some(Value::Strings(v)) => Ok(v),
        _ => Err(Error::invalid(format!(
            "the model file has no {key}: it cannot be tokenized"
        ))),
    }
}

fn split(regex: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Error::Internal(format!("pre-tokenizer regex: {e}")))?;
    Ok(split.into())
}

/// Byte-level BPE with the split llama.cpp uses for the file's `tokenizer.ggml.pre`.
fn byte_level_bpe(h: &Header, tokens: &[String]) -> Result<(Tokenizer, String)> {
    let pre = h.str("tokenizer.ggml.pre").unwrap_or("default").to_owned();
    // Byte-level mapping after the split; the split itself is done by the regex above it.
    let byte_level = ByteLevel::new(false, false, false);
    let (pre_tokenizer, ignore_merges): (PreTokenizerWrapper, bool) = match pre.as_str() {
        "gpt-2" => (
            Sequence::new(vec![split(GPT2)?, byte_level.into()]).into(),
            false,
        ),
        // SmolLM2: every digit alone, then GPT-2's split.
        "smollm" => (
            Sequence::new(vec![
                Digits::new(true).into(),
                split(GPT2)?,
                byte_level.into(),
            ])
            .into(),
            false,
        ),
        // Llama 3 looks a whole word up before merging (llama.cpp's ignore_merges).
        "llama-bpe" | "llama3" => (
            Sequence::new(vec![split(LLAMA3)?, byte_level.into()]).into(),
            true,
        ),
        "qwen2" => (
            Sequence::new(vec![split(QWEN2)?, byte_level.into()]).into(),
            false,
        ),
        other => {
            return Err(Error::invalid(format!(
                "pre-tokenizer “{other}” is not supported (supported: {}); the model cannot be tokenized correctly",
                SUPPORTED_PRE.join(", ")
            )));
        }
    };
    let merges = strings(h, "tokenizer.ggml.merges")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| Error::invalid(format!("the model's vocabulary is inconsistent: {e}")))?;
    let mut plain = Tokenizer::new(bpe);
    plain.with_pre_tokenizer(Some(pre_tokenizer));
    plain.with_decoder(Some(ByteLevel::default()));
    Ok((plain, pre))
}

/// SentencePiece BPE from the vocabulary's pieces, scores and types.
fn sentencepiece(h: &Header, tokens: &[String]) -> Result<Tokenizer> {
    let scores = match h.get("tokenizer.ggml.scores") {
        Some(Value::Floats(v)) if v.len() == tokens.len() => v.as_slice(),
        _ => {
            return Err(Error::invalid(
                "the SentencePiece vocabulary has no scores for its pieces: it cannot be tokenized",
            ));
        }
    };
    let types = match h.get("tokenizer.ggml.token_type") {
        Some(Value::Ints(v)) if v.len() == tokens.len() => v.as_slice(),
        _ => {
            return Err(Error::invalid(
                "the SentencePiece vocabulary has no token types: it cannot be tokenized",
            ));
        }
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // Every way to build a normal (1) or user-defined (4) piece from two pieces of the
    // vocabulary, ranked by the joined piece's score (SentencePiece's merge order). Ties keep
    // vocabulary order, which is how the file ranks equal scores.
    let mut ranked: Vec<(f64, u32, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !matches!(types[id], 1 | 4) {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                ranked.push((scores[id], id as u32, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(_, _, l, r)| (l.to_owned(), r.to_owned()))
        .collect();
    let unk = tokens
        .iter()
        .zip(types)
        .find(|(_, t)| **t == 2)
        .map(|(s, _)| s.clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| Error::invalid(format!("the model's vocabulary is inconsistent: {e}")))?;
    let add_space_prefix = !matches!(
        h.get("tokenizer.ggml.add_space_prefix"),
        Some(Value::Bool(false))
    );

    let internal = |e: tokenizers::Error| Error::Internal(format!("SentencePiece set-up: {e}"));
    let mut plain = Tokenizer::new(bpe);
    let space = Replace::new(" ", "\u{2581}").map_err(internal)?;
    if add_space_prefix {
        plain
            .with_normalizer(Some(tokenizers::normalizers::Sequence::new(vec![
                Prepend::new("\u{2581}".into()).into(),
                space.into(),
            ])))
            .map_err(internal)?;
    } else {
        plain.with_normalizer(Some(space)).map_err(internal)?;
    }
    let mut decoders = vec![
        Replace::new("\u{2581}", " ").map_err(internal)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        // The space put before the text is not part of it.
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    plain.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(plain)
}

impl TextTokenizer {
    pub fn from_gguf(h: &Header) -> Result<TextTokenizer> {
        let tokens = strings(h, "tokenizer.ggml.tokens")?;
        let (plain, pre) = match h.str("tokenizer.ggml.model").unwrap_or("") {
            "gpt2" => byte_level_bpe(h, tokens)?,
            "llama" => (sentencepiece(h, tokens)?, "spm".to_owned()),
            other => {
                return Err(Error::invalid(format!(
                    "tokenizer type “{other}” is not supported (byte-level BPE “gpt2” and SentencePiece “llama” are)"
                )));
            }
        };

        // Control (3) and user-defined (4) tokens are matched whole in text that may hold them.
        let types = match h.get("tokenizer.ggml.token_type") {
            Some(Value::Ints(v)) => v.as_slice(),
            _ => &[],
        };
        let specials: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, 3 | 4))
            .filter_map(|(i, t)| tokens.get(i).map(|s| AddedToken::from(s.clone(), *t == 3)))
            .collect();
        let mut with_special = plain.clone();
        with_special.add_special_tokens(specials).map_err(|e| {
            Error::invalid(format!("the model's special tokens are inconsistent: {e}"))
        })?;

        let id = |key: &str| {
            h.u64(key)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let mut stop: Vec<u32> = [eos, id("tokenizer.ggml.eot_token_id")]
            .into_iter()
            .flatten()
            .collect();
        for marker in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"] {
            if let Some(i) = tokens.iter().position(|t| t == marker) {
                stop.push(i as u32);
            }
        }
        stop.sort_unstable();
        stop.dedup();
        Ok(TextTokenizer {
            with_special,
            plain,
            bos,
            eos,
            stop,
            pre,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.plain.get_vocab_size(true)
    }

    /// Token ids of `text`. With `parse_special`, special tokens written in the text (a chat
    /// template's `<|im_start|>`) become those tokens; without, they are plain text (user input
    /// must not be able to inject them).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let t = if parse_special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = t
            .encode(text, false)
            .map_err(|e| Error::Internal(format!("tokenizing: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens included as their text).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.with_special
            .decode(ids, false)
            .map_err(|e| Error::Internal(format!("decoding: {e}")))
    }
}
