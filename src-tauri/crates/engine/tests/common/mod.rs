//! What the tests that run the real SmolLM2 file share: where the file is, an engine on a new
//! data folder with it installed, and a job-event sink to read from.
#![allow(dead_code)] // each test crate uses part of it

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atelier_engine::store::{GalleryQuery, GenerationKind, HistoryQuery, SettingsPatch};
use atelier_engine::{Access, Engine, Home, JobEvent};
use tokio::sync::mpsc;

pub const ID: &str = "smollm2-135m-instruct";

/// scripts/test.sh downloads it (sha256-checked) into ~/.cache/atelier/models, or set
/// ATELIER_MODEL_CACHE to a folder holding `smollm2-135m-instruct.gguf`.
pub fn model_file() -> PathBuf {
    let dir = std::env::var_os("ATELIER_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/atelier/models")
        });
    let f = dir.join(format!("{ID}.gguf"));
    assert!(
        f.is_file(),
        "{} is missing: run ./scripts/test.sh (it downloads the model)",
        f.display()
    );
    f
}

/// An engine on a new data folder with SmolLM2 installed, running on 2 threads.
pub fn engine_with_model(dir: &Path) -> Engine {
    let home = Home::at(dir);
    home.ensure().unwrap();
    std::fs::copy(model_file(), home.models_dir().join(format!("{ID}.gguf"))).unwrap();
    let engine = Engine::open(home, Access::Exclusive, tokio::runtime::Handle::current()).unwrap();
    engine
        .store()
        .update_settings(&SettingsPatch {
            threads: Some(2),
            ..Default::default()
        })
        .unwrap();
    engine
}

pub fn sink() -> (atelier_engine::EventSink, mpsc::UnboundedReceiver<JobEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

/// How many images a project's gallery shows.
/// The generation ids a finished image job reports, in order.
pub fn generation_ids(result: &serde_json::Value) -> Vec<i64> {
    result["images"]
        .as_array()
        .expect("a finished image job lists its images")
        .iter()
        .map(|i| {
            i["generation_id"]
                .as_i64()
                .expect("an image's generation id")
        })
        .collect()
}

pub fn gallery_len(engine: &Engine, project_id: i64) -> usize {
    engine
        .store()
        .gallery(&GalleryQuery {
            project_id,
            ..Default::default()
        })
        .unwrap()
        .items
        .len()
}

/// The statuses of the image generations in History, newest first (`failed`, `cancelled`...).
pub fn image_statuses(engine: &Engine) -> Vec<String> {
    engine
        .store()
        .history(&HistoryQuery {
            kind: Some(GenerationKind::Image),
            ..Default::default()
        })
        .unwrap()
        .items
        .iter()
        .map(|g| {
            serde_json::to_value(g.status)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}
