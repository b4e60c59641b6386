//! The job runner: long work (model runs, maintenance) as queued, cancellable, persisted jobs.
//!
//! `submit` writes a `queued` row and returns its id at once. Heavy jobs (those that load a
//! model) take a slot from a fair semaphore, so they run one at a time by default, in the order
//! they were submitted; light jobs start immediately. Every state change is written to the
//! `jobs` table and sent as a [`JobEvent`] to the submitter's sink and to every subscriber.
//!
//! Cancelling fires the job's `CancellationToken`: a queued job never starts, a running job's
//! future is dropped at its next await point (and blocking work sees `is_cancelled()`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::store::{JobStatus, Store};

/// How long a cancelled job may take to stop by itself before it is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// What a job streams while it runs. Serialised with a `type` tag for the UI.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type")]
pub enum JobEvent {
    Queued,
    Started,
    Progress {
        done: u64,
        total: u64,
    },
    Token {
        text: String,
    },
    /// Waiting in a remote server's queue (ComfyUI), which holds `queued` runs: everyone's,
    /// queued or running, this one included once it is queued.
    Waiting {
        queued: u64,
    },
    /// A picture of the work so far (an image run's denoising), as a `data:` URL.
    Preview {
        image: u32,
        step: u64,
        data_url: String,
    },
    Finished {
        result: serde_json::Value,
    },
    Failed {
        kind: String,
        message: String,
    },
    Cancelled,
}

impl JobEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobEvent::Finished { .. } | JobEvent::Failed { .. } | JobEvent::Cancelled
        )
    }
}

/// An event with the job it belongs to, as broadcast to subscribers (the job panel).
#[derive(Debug, Clone, Serialize)]
pub struct JobUpdate {
    pub job_id: i64,
    pub kind: String,
    pub event: JobEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Needs the model slot (memory-bound work); waits its turn.
    Heavy,
    /// Starts at once.
    Light,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Heavy => "heavy",
            Resource::Light => "light",
        }
    }
}

/// What to run: recorded in the `jobs` row so an interrupted or failed job can be retried.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub kind: String,
    pub resource: Resource,
    pub project_id: Option<i64>,
    pub payload: serde_json::Value,
    pub retry_of: Option<i64>,
    /// The work watches its cancellation token and records its own end (model runs): on cancel
    /// it gets [`CANCEL_GRACE`] to finish before being aborted. Other work is dropped at once.
    pub stops_itself: bool,
}

pub type EventSink = Arc<dyn Fn(JobEvent) + Send + Sync>;
pub type JobFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value>> + Send>>;

/// Handed to the work: progress, tokens and cancellation.
#[derive(Clone)]
pub struct JobContext {
    id: i64,
    token: CancellationToken,
    emit: Arc<dyn Fn(JobEvent) + Send + Sync>,
    store: Arc<Store>,
    last_progress_write: Arc<Mutex<Option<Instant>>>,
}

impl JobContext {
    pub fn id(&self) -> i64 {
        self.id
    }
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
    /// `Err(Cancelled)` once the job was cancelled: `ctx.check()?` between steps.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
    pub fn cancellation(&self) -> &CancellationToken {
        &self.token
    }
    /// Reports progress. Every call is streamed; the row is written at most 4 times a second
    /// (and always for the last step) so a token-per-step job does not hammer the disk.
    pub fn progress(&self, done: u64, total: u64) {
        (self.emit)(JobEvent::Progress { done, total });
        let mut last = self
            .last_progress_write
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) || done >= total;
        if due {
            *last = Some(Instant::now());
            if let Err(e) = self.store.set_job_progress(self.id, done, total) {
                tracing::warn!(job = self.id, error = %e, "could not persist progress");
            }
        }
    }
    /// Streams an event that is not progress or text (image previews).
    pub fn emit(&self, event: JobEvent) {
        (self.emit)(event);
    }
    pub fn token(&self, text: impl Into<String>) {
        (self.emit)(JobEvent::Token { text: text.into() });
    }
}

/// Heavy jobs waiting for a slot, in submission order. A job takes its place when it is submitted
/// (not when its task first runs, which a multi-threaded runtime may reorder); the dispatcher
/// hands each free slot to the first job still waiting.
#[derive(Default)]
struct HeavyQueue {
    waiting: Mutex<std::collections::VecDeque<oneshot::Sender<OwnedSemaphorePermit>>>,
    arrived: Notify,
}

struct Inner {
    store: Arc<Store>,
    runtime: tokio::runtime::Handle,
    heavy: Arc<Semaphore>,
    heavy_queue: Arc<HeavyQueue>,
    running: Mutex<HashMap<i64, CancellationToken>>,
    updates: broadcast::Sender<JobUpdate>,
}

#[derive(Clone)]
pub struct JobRunner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self
            .inner
            .heavy_queue
            .waiting
            .lock()
            .map(|q| q.len())
            .unwrap_or(0);
        f.debug_struct("JobRunner")
            .field("heavy_jobs_waiting", &waiting)
            .finish()
    }
}

impl JobRunner {
    /// `heavy_slots`: how many heavy jobs may run at once (at least 1).
    pub fn new(
        store: Arc<Store>,
        runtime: tokio::runtime::Handle,
        heavy_slots: usize,
    ) -> JobRunner {
        let (updates, _) = broadcast::channel(1024);
        let heavy = Arc::new(Semaphore::new(heavy_slots.max(1)));
        let heavy_queue = Arc::new(HeavyQueue::default());
        runtime.spawn(dispatch_heavy(heavy.clone(), heavy_queue.clone()));
        JobRunner {
            inner: Arc::new(Inner {
                store,
                runtime,
                heavy,
                heavy_queue,
                running: Mutex::new(HashMap::new()),
                updates,
            }),
        }
    }

    /// Every event of every job, for the job panel. A slow subscriber that falls more than
    /// 1024 events behind skips ahead (it can re-read the table).
    pub fn subscribe(&self) -> broadcast::Receiver<JobUpdate> {
        self.inner.updates.subscribe()
    }

    /// Queues `work` and returns the job id at once.
    pub fn submit<F>(&self, req: JobRequest, sink: Option<EventSink>, work: F) -> Result<i64>
    where
        F: FnOnce(JobContext) -> JobFuture + Send + 'static,
    {
        let inner = self.inner.clone();
        let id = inner.store.insert_job(
            &req.kind,
            req.resource.as_str(),
            req.project_id,
            &req.payload,
            req.retry_of,
        )?;
        let token = CancellationToken::new();
        inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, token.clone());

        let kind = req.kind.clone();
        let updates = inner.updates.clone();
        let emit: Arc<dyn Fn(JobEvent) + Send + Sync> = Arc::new(move |event: JobEvent| {
            if let Some(sink) = &sink {
                sink(event.clone());
            }
            let _ = updates.send(JobUpdate {
                job_id: id,
                kind: kind.clone(),
                event,
            });
        });
        emit(JobEvent::Queued);

        let ctx = JobContext {
            id,
            token: token.clone(),
            emit: emit.clone(),
            store: inner.store.clone(),
            last_progress_write: Arc::new(Mutex::new(None)),
        };
        let runtime = inner.runtime.clone();
        let stops_itself = req.stops_itself;
        let slot = match req.resource {
            Resource::Heavy => {
                let (tx, rx) = oneshot::channel();
                inner
                    .heavy_queue
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(tx);
                inner.heavy_queue.arrived.notify_one();
                Some(rx)
            }
            Resource::Light => None,
        };
        runtime.spawn(async move {
            let outcome = run_one(&inner, id, slot, stops_itself, &token, &emit, ctx, work).await;
            let (status, event) = match outcome {
                Ok(result) => (JobStatus::Succeeded, JobEvent::Finished { result }),
                Err(Error::Cancelled) => (JobStatus::Cancelled, JobEvent::Cancelled),
                Err(e) => (
                    JobStatus::Failed,
                    JobEvent::Failed {
                        kind: e.kind().into(),
                        message: e.to_string(),
                    },
                ),
            };
            let persisted = match &event {
                JobEvent::Finished { result } => {
                    inner.store.finish_job(id, status, Some(result), None)
                }
                JobEvent::Failed { kind, message } => {
                    inner
                        .store
                        .finish_job(id, status, None, Some((kind, message)))
                }
                _ => inner.store.finish_job(id, status, None, None),
            };
            if let Err(e) = persisted {
                tracing::error!(job = id, error = %e, "could not record the end of a job");
            }
            inner
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            emit(event);
        });
        Ok(id)
    }

    /// Cancels a queued or running job. `Ok(false)` if it had already ended.
    pub fn cancel(&self, id: i64) -> Result<bool> {
        let token = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        match token {
            Some(t) => {
                t.cancel();
                Ok(true)
            }
            None => {
                self.inner.store.job(id)?; // NotFound for an unknown id
                Ok(false)
            }
        }
    }

    /// Ids of jobs this process is running or holding in its queue.
    pub fn active_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the dispatcher.
        self.heavy.close();
        self.heavy_queue.arrived.notify_one();
    }
}

/// Hands each free heavy slot to the longest-waiting heavy job. A job cancelled while waiting
/// has dropped its receiver; its turn passes to the next.
async fn dispatch_heavy(heavy: Arc<Semaphore>, queue: Arc<HeavyQueue>) {
    loop {
        let Ok(mut permit) = heavy.clone().acquire_owned().await else {
            return;
        };
        loop {
            let next = queue
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            match next {
                Some(tx) => match tx.send(permit) {
                    Ok(()) => break,
                    Err(back) => permit = back,
                },
                None => {
                    // notify_one stores a wake-up if a job arrived between the check and here.
                    queue.arrived.notified().await;
                    if heavy.is_closed() {
                        return;
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_one<F>(
    inner: &Inner,
    id: i64,
    slot: Option<oneshot::Receiver<OwnedSemaphorePermit>>,
    stops_itself: bool,
    token: &CancellationToken,
    emit: &Arc<dyn Fn(JobEvent) + Send + Sync>,
    ctx: JobContext,
    work: F,
) -> Result<serde_json::Value>
where
    F: FnOnce(JobContext) -> JobFuture + Send + 'static,
{
    // Wait for a slot (heavy jobs, in submission order: see HeavyQueue) unless cancelled first.
    let heavy = slot.is_some();
    let _permit = match slot {
        Some(rx) => tokio::select! {
            permit = rx => Some(permit.map_err(|_| Error::Internal("job queue closed".into()))?),
            _ = token.cancelled() => return Err(Error::Cancelled),
        },
        None => None,
    };
    if token.is_cancelled() {
        return Err(Error::Cancelled);
    }
    inner.store.mark_job_running(id)?;
    emit(JobEvent::Started);

    // The work runs as its own task so that a panic inside it becomes a failed job instead of
    // taking the runner down.
    let mut task = inner.runtime.spawn(work(ctx));
    let result = tokio::select! {
        joined = &mut task => match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                let msg = e.into_panic();
                let msg = msg.downcast_ref::<&str>().map(|s| s.to_string())
                    .or_else(|| msg.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(job = id, panic = %msg, "job panicked");
                Err(Error::Internal(format!("the job crashed: {msg}")))
            }
            Err(_) => Err(Error::Cancelled),
        },
        _ = token.cancelled() => {
            // Work that watches its token (model runs) winds down by itself and records what
            // it had; give it that chance before cutting it off at its next await.
            if !stops_itself || tokio::time::timeout(CANCEL_GRACE, &mut task).await.is_err() {
                task.abort();
            }
            Err(Error::Cancelled)
        }
    };
    if heavy {
        // The model runs kept their freed pages for reuse (memory.rs); give them back.
        crate::memory::release();
    }
    result
}
