//! Model files: validation of their headers (bounded reads) and the installed-model registry.

pub mod gguf;
pub mod registry;

pub use registry::{ModelEntry, ModelInfo};
