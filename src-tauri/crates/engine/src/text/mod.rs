//! Text generation. So far: chat templates. The local GGUF engine and the remote
//! OpenAI-compatible engine follow (issue 3).

pub mod chat;
pub mod tokenizer;
