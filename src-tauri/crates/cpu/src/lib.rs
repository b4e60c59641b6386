//! CPU kernels for Atelier's text engine (`atelier_engine::text::native`): matrix products
//! straight on GGUF's quantised blocks ([`quant`]), a thread pool for one forward pass at a
//! time ([`pool`]), and the other operations of a decoder layer ([`ops`]).
//!
//! A crate of its own so that debug builds (the test suite) compile it optimised, like the
//! other compute dependencies, while the rest of the engine stays quick to build.

pub mod ops;
pub mod pool;
pub mod quant;
