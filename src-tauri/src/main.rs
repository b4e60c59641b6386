// Keeps a console window from opening next to the app on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

// mimalloc, kept from returning pages between a model's tensors (see the engine's memory.rs).
#[global_allocator]
static ALLOC: atelier_engine::memory::Allocator = atelier_engine::memory::Allocator;

fn main() {
    atelier_engine::memory::configure();
    atelier_lib::run()
}
