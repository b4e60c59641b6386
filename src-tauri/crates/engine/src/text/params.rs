//! What a text generation is asked to do: the messages and the sampling parameters, validated
//! before any model is touched, and what it reports when it ends.

use serde::{Deserialize, Serialize};

use super::chat::{ChatMessage, Role};
use crate::error::{Error, Result};

/// Longest prompt text accepted (characters, all messages together). Far above any model's
/// context here; it bounds what a paste can make the tokenizer and the database hold.
pub const MAX_PROMPT_CHARS: usize = 200_000;
pub const MAX_STOP_STRINGS: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 = greedy (always the most likely token).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probabilities sum to `top_p`.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 = off.
    pub top_k: u32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 = off.
    pub min_p: f32,
    /// > 1 discourages repeating tokens seen in the last `repeat_last_n` tokens; 1 = off.
    pub repeat_penalty: f32,
    pub repeat_last_n: u32,
    pub max_tokens: u32,
    /// Generation ends before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// The same seed, input and model give the same text. `None`: a random seed is drawn and
    /// recorded, so the run can still be repeated.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            max_tokens: 512,
            stop: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if !self.temperature.is_finite() || !(0.0..=5.0).contains(&self.temperature) {
            return bad(format!(
                "temperature must be between 0 and 5 (got {})",
                self.temperature
            ));
        }
        if !self.top_p.is_finite() || !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!(
                "top-p must be above 0 and at most 1 (got {})",
                self.top_p
            ));
        }
        if !self.min_p.is_finite() || !(0.0..1.0).contains(&self.min_p) {
            return bad(format!(
                "min-p must be at least 0 and below 1 (got {})",
                self.min_p
            ));
        }
        if !self.repeat_penalty.is_finite() || !(0.5..=3.0).contains(&self.repeat_penalty) {
            return bad(format!(
                "repeat penalty must be between 0.5 and 3 (got {})",
                self.repeat_penalty
            ));
        }
        if self.repeat_last_n > 8192 {
            return bad(format!(
                "the repeat-penalty window must be at most 8192 tokens (got {})",
                self.repeat_last_n
            ));
        }
        if self.top_k > 100_000 {
            return bad(format!("top-k must be at most 100000 (got {})", self.top_k));
        }
        if !(1..=32_768).contains(&self.max_tokens) {
            return bad(format!(
                "max tokens must be between 1 and 32768 (got {})",
                self.max_tokens
            ));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return bad(format!(
                "at most {MAX_STOP_STRINGS} stop strings (got {})",
                self.stop.len()
            ));
        }
        if self
            .stop
            .iter()
            .any(|s| s.is_empty() || s.chars().count() > 64)
        {
            return bad("a stop string must have 1 to 64 characters".into());
        }
        Ok(())
    }
}

/// A chat to continue, with the model and how to sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextRequest {
    /// A local model id (from the models folder) or `remote:<model>` for the configured server.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub params: SamplingParams,
}

impl TextRequest {
    /// Checks everything that can be checked without the model.
    pub fn validate(&self) -> Result<()> {
        if self.model.trim().is_empty() {
            return Err(Error::invalid("choose a model first"));
        }
        if self.messages.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        if !self
            .messages
            .iter()
            .any(|m| m.role == Role::User && !m.content.trim().is_empty())
        {
            return Err(Error::invalid(
                "the prompt is empty: write what the model should do",
            ));
        }
        let chars: usize = self
            .messages
            .iter()
            .map(|m| m.content.chars().count())
            .sum();
        if chars > MAX_PROMPT_CHARS {
            return Err(Error::invalid(format!(
                "the prompt has {chars} characters; at most {MAX_PROMPT_CHARS} are accepted"
            )));
        }
        self.params.validate()
    }

    /// The text recorded as the generation's prompt (History searches it): the user turns.
    pub fn prompt_text(&self) -> String {
        let users: Vec<&str> = self
            .messages
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .collect();
        users.join("\n\n")
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end token.
    EndOfText,
    /// A stop string was reached.
    StopString,
    /// `max_tokens` were produced.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    Cancelled,
}

/// What a finished (or stopped) generation reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TextOutcome {
    pub text: String,
    pub seed: u64,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub stop_reason: StopReason,
    /// From the start of the run (model already loaded) to the first token.
    pub first_token_ms: u64,
    /// Loading the model, when this run had to (0 when it was resident).
    pub load_ms: u64,
    pub total_ms: u64,
    /// Prompt tokens per second of prefill.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
}
