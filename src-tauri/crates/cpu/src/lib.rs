//! CPU kernels for Atelier's engines. For text (`atelier_engine::text::native`): matrix
//! products straight on GGUF's quantised blocks ([`quant`]), a thread pool for one forward pass
//! at a time ([`pool`]), and the other operations of a decoder layer ([`ops`]). For images
//! (`atelier_engine::image::unet`): convolution, group norm and attention over NCHW activations
//! ([`diffusion`]).
//!
//! A crate of its own so that debug builds (the test suite) compile it optimised, like the
//! other compute dependencies, while the rest of the engine stays quick to build.

pub mod diffusion;
pub mod memory;
pub mod ops;
pub mod pool;
pub mod quant;
