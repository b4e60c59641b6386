//! The job runner against a real store: order, cancellation, failure, crash, interruption.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atelier_engine::store::JobStatus;
use atelier_engine::{Access, Engine, Error, Home, JobEvent, JobRequest, Resource, Store};
use tokio::sync::mpsc;

fn request(kind: &str, resource: Resource) -> JobRequest {
    JobRequest {
        kind: kind.into(),
        resource,
        project_id: None,
        payload: serde_json::json!({"n": 1}),
        retry_of: None,
        stops_itself: false,
    }
}

fn sink() -> (atelier_engine::EventSink, mpsc::UnboundedReceiver<JobEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

async fn until_terminal(rx: &mut mpsc::UnboundedReceiver<JobEvent>) -> Vec<JobEvent> {
    let mut events = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("job hung")
    {
        let end = e.is_terminal();
        events.push(e);
        if end {
            break;
        }
    }
    events
}

fn open(dir: &std::path::Path) -> Engine {
    Engine::open(
        Home::at(dir),
        Access::Exclusive,
        tokio::runtime::Handle::current(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_jobs_run_one_at_a_time_in_submission_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut rxs = Vec::new();
    for i in 0..4 {
        let log = log.clone();
        let (s, rx) = sink();
        rxs.push(rx);
        engine
            .jobs()
            .submit(request("test", Resource::Heavy), Some(s), move |ctx| {
                Box::pin(async move {
                    log.lock().unwrap().push(format!("start {i}"));
                    for step in 1..=3 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        ctx.progress(step, 3);
                    }
                    log.lock().unwrap().push(format!("end {i}"));
                    Ok(serde_json::json!(i))
                })
            })
            .unwrap();
    }
    for (i, rx) in rxs.iter_mut().enumerate() {
        let events = until_terminal(rx).await;
        assert_eq!(events.first(), Some(&JobEvent::Queued));
        assert!(events.contains(&JobEvent::Started));
        assert!(events.contains(&JobEvent::Progress { done: 3, total: 3 }));
        assert_eq!(
            events.last(),
            Some(&JobEvent::Finished {
                result: serde_json::json!(i)
            })
        );
    }
    let expected: Vec<String> = (0..4)
        .flat_map(|i| [format!("start {i}"), format!("end {i}")])
        .collect();
    assert_eq!(
        *log.lock().unwrap(),
        expected,
        "no overlap, submission order"
    );
    let rows = engine.store().list_jobs(10).unwrap();
    assert!(
        rows.iter()
            .all(|j| j.status == JobStatus::Succeeded && j.progress_done == 3),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_quickly_and_a_queued_one_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    // A job that would run for a minute, checking its token between small steps.
    let (s1, mut rx1) = sink();
    let running = engine
        .jobs()
        .submit(request("long", Resource::Heavy), Some(s1), |ctx| {
            Box::pin(async move {
                for i in 0..6000 {
                    ctx.check()?;
                    // Blocking work, as a model step would be: the token is what stops it.
                    std::thread::sleep(Duration::from_millis(10));
                    ctx.progress(i, 6000);
                }
                Ok(serde_json::json!(null))
            })
        })
        .unwrap();
    let started = Arc::new(Mutex::new(false));
    let flag = started.clone();
    let (s2, mut rx2) = sink();
    let queued = engine
        .jobs()
        .submit(request("waiting", Resource::Heavy), Some(s2), move |_ctx| {
            Box::pin(async move {
                *flag.lock().unwrap() = true;
                Ok(serde_json::json!(null))
            })
        })
        .unwrap();

    // Let the first one get going.
    loop {
        match rx1.recv().await.unwrap() {
            JobEvent::Progress { done, .. } if done >= 3 => break,
            _ => {}
        }
    }
    assert!(engine.jobs().cancel(queued).unwrap());
    assert_eq!(
        until_terminal(&mut rx2).await.last(),
        Some(&JobEvent::Cancelled)
    );
    assert!(
        !*started.lock().unwrap(),
        "a cancelled queued job never starts"
    );

    let t = Instant::now();
    assert!(engine.jobs().cancel(running).unwrap());
    assert_eq!(
        until_terminal(&mut rx1).await.last(),
        Some(&JobEvent::Cancelled)
    );
    let latency = t.elapsed();
    assert!(
        latency < Duration::from_millis(200),
        "cancel took {latency:?}"
    );

    assert_eq!(
        engine.store().job(running).unwrap().status,
        JobStatus::Cancelled
    );
    assert_eq!(
        engine.store().job(queued).unwrap().status,
        JobStatus::Cancelled
    );
    assert!(!engine.jobs().cancel(running).unwrap(), "already ended");
    assert_eq!(engine.jobs().cancel(12345).unwrap_err().kind(), "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_panics_become_failed_jobs_and_the_runner_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let (s, mut rx) = sink();
    let failed = engine
        .jobs()
        .submit(request("bad", Resource::Heavy), Some(s), |_| {
            Box::pin(async { Err(Error::invalid("the prompt is empty")) })
        })
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.last(),
        Some(&JobEvent::Failed {
            kind: "invalid_input".into(),
            message: "the prompt is empty".into()
        })
    );
    let (s, mut rx) = sink();
    let crashed = engine
        .jobs()
        .submit(request("crash", Resource::Heavy), Some(s), |_| {
            Box::pin(async {
                let v: Vec<u8> = Vec::new();
                let _ = v[3]; // an out-of-bounds bug inside model code
                Ok(serde_json::json!(null))
            })
        })
        .unwrap();
    match until_terminal(&mut rx).await.last() {
        Some(JobEvent::Failed { kind, message }) => {
            assert_eq!(kind, "internal");
            assert!(message.contains("crashed"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let row = engine.store().job(failed).unwrap();
    assert_eq!(
        (row.status, row.error_kind.as_deref()),
        (JobStatus::Failed, Some("invalid_input"))
    );
    assert_eq!(
        engine.store().job(crashed).unwrap().status,
        JobStatus::Failed
    );

    // The heavy slot was given back: another job runs.
    let (s, mut rx) = sink();
    engine
        .jobs()
        .submit(request("ok", Resource::Heavy), Some(s), |_| {
            Box::pin(async { Ok(serde_json::json!("ok")) })
        })
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.last(),
        Some(&JobEvent::Finished {
            result: serde_json::json!("ok")
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_left_running_become_interrupted_on_reopen_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (stuck, waiting, generation);
    {
        let engine = open(dir.path());
        let project = engine.store().create_project("p").unwrap();
        generation = engine
            .store()
            .begin_generation(&atelier_engine::store::NewGeneration {
                project_id: project.id,
                job_id: None,
                kind: atelier_engine::store::GenerationKind::Text,
                model_id: "m".into(),
                prompt: "写到一半".into(),
                params: serde_json::json!({}),
                seed: Some(1),
            })
            .unwrap();
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let (s, mut rx) = sink();
        stuck = engine
            .jobs()
            .submit(
                request("maintenance", Resource::Heavy),
                Some(s),
                move |_| {
                    Box::pin(async move {
                        g.notified().await; // never notified: the "process" dies first
                        Ok(serde_json::json!(null))
                    })
                },
            )
            .unwrap();
        waiting = engine
            .jobs()
            .submit(request("maintenance", Resource::Heavy), None, |_| {
                Box::pin(async { Ok(serde_json::json!(null)) })
            })
            .unwrap();
        while rx.recv().await != Some(JobEvent::Started) {}
        assert_eq!(
            engine.store().job(stuck).unwrap().status,
            JobStatus::Running
        );
        assert_eq!(
            engine.store().job(waiting).unwrap().status,
            JobStatus::Queued
        );
        // Simulate a killed process: the engine goes away without finishing its jobs. The rows
        // stay as they were, as after a real kill.
        std::mem::forget(engine);
    }
    // The forgotten engine still holds the folder lock (as a live process would); a crash
    // releases it. Reopen through a fresh store + lock by another path: release by closing
    // the lock file descriptor is not possible after forget, so open a copy of the folder.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "atelier.lock" {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    let engine = open(copy.path());
    assert_eq!(engine.interrupted_at_open(), 2);
    for id in [stuck, waiting] {
        let row = engine.store().job(id).unwrap();
        assert_eq!(row.status, JobStatus::Interrupted);
        assert_eq!(row.error_kind.as_deref(), Some("interrupted"));
    }
    let g = engine.store().generation(generation).unwrap();
    assert_eq!(
        g.status,
        atelier_engine::store::GenerationStatus::Failed,
        "not left 'running' forever"
    );
    assert_eq!(g.error_kind.as_deref(), Some("interrupted"));
    assert_eq!(g.prompt, "写到一半");
    let (s, mut rx) = sink();
    let retry = engine.retry_job(stuck, Some(s)).unwrap();
    assert!(matches!(
        until_terminal(&mut rx).await.last(),
        Some(JobEvent::Finished { .. })
    ));
    assert_eq!(engine.store().job(retry).unwrap().retry_of, Some(stuck));
    assert_eq!(
        engine.retry_job(retry, None).unwrap_err().kind(),
        "conflict",
        "a succeeded job is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shares_a_folder_with_a_running_app_without_touching_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let (s, mut rx) = sink();
    let id = app
        .jobs()
        .submit(request("x", Resource::Light), Some(s), move |_| {
            Box::pin(async move {
                g.notified().await;
                Ok(serde_json::json!(1))
            })
        })
        .unwrap();
    while rx.recv().await != Some(JobEvent::Started) {}
    assert_eq!(
        Engine::open(
            Home::at(dir.path()),
            Access::Exclusive,
            tokio::runtime::Handle::current()
        )
        .err()
        .map(|e| e.kind()),
        Some("already_running")
    );
    let cli = Engine::open(
        Home::at(dir.path()),
        Access::Shared,
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    assert_eq!(cli.interrupted_at_open(), 0);
    assert_eq!(
        cli.store().job(id).unwrap().status,
        JobStatus::Running,
        "the app's job is left alone"
    );
    gate.notify_one();
    until_terminal(&mut rx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_checks_and_optimises_a_real_database() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let (s, mut rx) = sink();
    engine.start_maintenance(Some(s), None).unwrap();
    let events = until_terminal(&mut rx).await;
    match events.last() {
        Some(JobEvent::Finished { result }) => assert_eq!(result["integrity"], "ok"),
        other => panic!("{other:?}"),
    }
    assert!(events.contains(&JobEvent::Progress { done: 2, total: 2 }));
    let _ = Store::open; // the store type is part of the public API used by the app
}
