//! Thin adapters: parse arguments, call the engine, map errors to `{kind, message}`.
//! No domain logic lives here.

pub mod app;
pub mod history;
pub mod images;
pub mod jobs;
pub mod models;
pub mod projects;
pub mod scripts;
pub mod settings;
pub mod text;
pub mod writing;
