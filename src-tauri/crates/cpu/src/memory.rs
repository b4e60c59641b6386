//! The process allocator and when it gives memory back.
//!
//! A diffusion step allocates and frees hundreds of tensors of 10–300 MB. With glibc's malloc
//! every one of those is a fresh `mmap`: the kernel zeroes each page on first touch and takes it
//! back at `free`, which profiled at about 9 % of a CPU step (page faults and `clear_page`).
//! mimalloc keeps freed memory in its arenas for reuse; we tell it to keep freed pages for up to
//! [`KEEP_FREED_MS`] and to hand them all back to the system when a heavy job ends
//! ([`release`]), so the app's memory falls back to the loaded models between jobs.
//!
//! The binaries (the app, the CLI, the kernels example) declare the allocator
//! (`#[global_allocator] static A: Allocator = Allocator;`) and call [`configure`] first thing;
//! a process that uses another allocator (the test binaries) loses nothing: both calls then
//! only touch mimalloc's idle state. The policy lives here, below the engine, so the kernels
//! example times the kernels under the same allocator settings as the app.

use std::os::raw::c_long;

/// The allocator type for `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `mi_option_purge_delay` (the 16th entry of `mi_option_e` in `mimalloc.h`,
/// 0.1.49's v3 sources; the Rust bindings name only some options).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed pages stay with the allocator before they are returned unasked. A job gives
/// them back when it ends anyway; this bounds what an idle process holds otherwise.
pub const KEEP_FREED_MS: c_long = 600_000;

/// Sets the allocator's policy; call once at start-up.
pub fn configure() {
    // SAFETY: sets an integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, KEEP_FREED_MS) }
}

/// Returns every freed page to the system now (after a heavy job).
pub fn release() {
    // SAFETY: a forced collection is valid from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// The current purge delay in milliseconds (for tests and diagnostics).
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads an integer option.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_configured() {
        // v3's documented default is 1000 ms (its neighbours default to 0 and 1), so reading
        // it before configuring checks that the index names the purge delay.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000);
        }
        configure();
        assert_eq!(purge_delay_ms(), KEEP_FREED_MS);
        release();
    }
}
