//! Tokenizers built from GGUF metadata against llama.cpp's own fixtures: vocab-only GGUF files
//! with test strings (`.inp`) and the token ids llama.cpp produces (`.out`), from the
//! `llama-cpp-python==0.3.36` source distribution. scripts/test.sh fetches them (sha256-checked)
//! into ~/.cache/atelier/fixtures/llama.cpp-vocab, or set ATELIER_VOCAB_FIXTURES.

use std::path::PathBuf;

use atelier_engine::models::gguf::{Value, read_header};
use atelier_engine::text::tokenizer::TextTokenizer;

fn fixtures() -> PathBuf {
    let dir = std::env::var_os("ATELIER_VOCAB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/atelier/fixtures/llama.cpp-vocab")
        });
    assert!(
        dir.join("ggml-vocab-qwen2.gguf").exists(),
        "llama.cpp's tokenizer fixtures are missing from {}: run ./scripts/test.sh (it downloads them)",
        dir.display()
    );
    dir
}

fn load(name: &str) -> TextTokenizer {
    let header = read_header(&fixtures().join(format!("ggml-vocab-{name}.gguf"))).unwrap();
    TextTokenizer::from_gguf(&header).unwrap()
}

/// (input, expected ids) pairs of one fixture.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = fixtures();
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        inputs.len() - 1,
        outputs.len(),
        "fixture {name} is malformed"
    );
    inputs
        .into_iter()
        .zip(outputs)
        .map(|(i, o)| (i.to_owned(), o))
        .collect()
}

fn matches_llama_cpp(name: &str) {
    let tok = load(name);
    let mut wrong = Vec::new();
    let cases = cases(name);
    let total = cases.len();
    for (input, expected) in cases {
        let got = tok.encode(&input, false).unwrap();
        if got != expected {
            wrong.push(format!(
                "{input:?}\n   llama.cpp {expected:?}\n   ours      {got:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {total} differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn gpt2_matches_llama_cpp() {
    matches_llama_cpp("gpt-2");
}

#[test]
fn llama3_bpe_matches_llama_cpp() {
    matches_llama_cpp("llama-bpe");
}

#[test]
fn qwen2_matches_llama_cpp() {
    matches_llama_cpp("qwen2");
}

#[test]
fn chinese_emoji_and_mixed_text_round_trip() {
    for name in ["qwen2", "llama-bpe", "gpt-2"] {
        let tok = load(name);
        for text in [
            "直播间的家人们，这款面霜¥199！",
            "🎉限时福利🎁 3件8折",
            "SmolLM2 和 Qwen2.5 混排 mixed text\n换行\t制表",
        ] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text, "{name}");
        }
    }
}

#[test]
fn special_tokens_only_when_asked() {
    let tok = load("qwen2");
    let with = tok
        .encode("<|im_start|>user\n你好<|im_end|>", true)
        .unwrap();
    let without = tok
        .encode("<|im_start|>user\n你好<|im_end|>", false)
        .unwrap();
    assert!(
        with.len() < without.len(),
        "the markers are single tokens only when parsing specials"
    );
    assert!(
        with.iter().any(|id| tok.stop.contains(id)),
        "<|im_end|> stops generation"
    );
    assert!(
        !without.iter().any(|id| tok.stop.contains(id)),
        "user text cannot inject a stop token"
    );
}

#[test]
fn sentencepiece_matches_llama_cpp() {
    matches_llama_cpp("llama-spm");
}

#[test]
fn sentencepiece_round_trips_and_falls_back_to_bytes() {
    let tok = load("llama-spm");
    assert_eq!(tok.pre, "spm");
    for text in [
        "直播间的家人们，这款面霜¥199！",
        "🎉限时福利🎁 3件8折",
        "  two leading spaces\n\ttab",
        "Hello world",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    // A character outside Llama 2's vocabulary is spelt as its UTF-8 bytes.
    let ids = tok.encode("🎁", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.decode(&[i]).unwrap()).collect();
    assert!(ids.len() >= 4, "{pieces:?}");
    // Specials: `</s>` ends a reply and is only a token when asked for.
    let eos = tok.eos.expect("llama has </s>");
    assert!(tok.stop.contains(&eos));
    assert!(tok.encode("hi</s>", true).unwrap().contains(&eos));
    assert!(!tok.encode("hi</s>", false).unwrap().contains(&eos));
}

#[test]
fn an_unknown_pre_tokenizer_or_vocabulary_type_is_refused_not_guessed() {
    let header = read_header(&fixtures().join("ggml-vocab-qwen2.gguf")).unwrap();
    for (key, value) in [
        ("tokenizer.ggml.pre", "falcon"),
        ("tokenizer.ggml.model", "bert"),
    ] {
        let mut h = header.clone();
        h.metadata.insert(key.into(), Value::String(value.into()));
        let err = TextTokenizer::from_gguf(&h).unwrap_err();
        assert_eq!(err.kind(), "invalid_input");
        assert!(
            err.to_string().contains("not supported") && err.to_string().contains(value),
            "{err}"
        );
    }
    // A SentencePiece vocabulary without scores cannot be merged correctly.
    let mut h = read_header(&fixtures().join("ggml-vocab-llama-spm.gguf")).unwrap();
    h.metadata.remove("tokenizer.ggml.scores");
    let err = TextTokenizer::from_gguf(&h).unwrap_err();
    assert!(err.to_string().contains("scores"), "{err}");
}
