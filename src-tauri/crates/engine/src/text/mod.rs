//! Text generation: the local GGUF engine (candle), the remote OpenAI-compatible engine, and
//! what both share (chat templates, tokenizers, sampling, streaming).
//!
//! - [`params`]: the request and its validation; what a run reports
//! - [`tokenizer`], [`chat`]: turning a chat into token ids, from the GGUF file alone
//! - [`sampler`], [`stream`]: choosing tokens from a seed; showing text safely as it comes
//! - [`local`], [`remote`]: the two engines
//! - [`service`]: generations as jobs, recorded in the store

pub mod chat;
pub mod local;
pub mod native;
pub mod params;
pub mod remote;
pub mod sampler;
pub mod service;
pub mod stream;
pub mod tokenizer;

pub use params::{SamplingParams, StopReason, TextOutcome, TextRequest};
