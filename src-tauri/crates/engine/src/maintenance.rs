//! The "check and optimise the database" job (Settings → Data): an integrity check, FTS
//! segment merge, planner statistics and a WAL checkpoint, cancellable between steps.

use std::sync::Arc;

use crate::error::Result;
use crate::jobs::JobContext;
use crate::store::Store;

pub const KIND: &str = "maintenance";

pub async fn run(store: Arc<Store>, ctx: JobContext) -> Result<serde_json::Value> {
    let started = std::time::Instant::now();
    ctx.progress(0, 2);
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.quick_check())
        .await
        .map_err(|e| crate::Error::Internal(e.to_string()))??;
    ctx.progress(1, 2);
    ctx.check()?;
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.optimize())
        .await
        .map_err(|e| crate::Error::Internal(e.to_string()))??;
    ctx.progress(2, 2);
    let bytes = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(
        serde_json::json!({ "integrity": "ok", "database_bytes": bytes, "ms": started.elapsed().as_millis() as u64 }),
    )
}
