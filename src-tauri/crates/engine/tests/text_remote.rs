//! The remote engine against a real HTTP server on loopback that speaks OpenAI's streaming
//! format, scripted by the requested model name: a good reply, and each way a server fails.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier_engine::store::{GenerationStatus, SettingsPatch};
use atelier_engine::text::chat::{ChatMessage, Role};
use atelier_engine::text::remote::{RemoteConfig, generate};
use atelier_engine::text::service::TextJob;
use atelier_engine::text::{SamplingParams, StopReason, TextRequest};
use atelier_engine::{Access, Engine, Home, JobEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Requests the server saw: (headers, JSON body).
type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

async fn serve() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move { handle(sock, log).await });
        }
    });
    (format!("http://{addr}/v1"), seen)
}

fn chunk(content: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    )
}

async fn handle(mut sock: TcpStream, log: Seen) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let (head, body) = loop {
        let n = sock.read(&mut tmp).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut body = buf[at + 4..].to_vec();
            while body.len() < len {
                let n = sock.read(&mut tmp).await.unwrap();
                body.extend_from_slice(&tmp[..n]);
            }
            break (head, body);
        }
    };
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let model = body["model"].as_str().unwrap_or("").to_owned();
    log.lock().unwrap().push((head, body));
    let status = |code: u16, text: &str, msg: &str| {
        format!(
            "HTTP/1.1 {code} {text}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{}",
            serde_json::json!({"error": {"message": msg}})
        )
    };
    let sse_head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    match model.as_str() {
        "e401" => sock
            .write_all(status(401, "Unauthorized", "Incorrect API key provided").as_bytes())
            .await
            .unwrap(),
        "e429" => sock
            .write_all(status(429, "Too Many Requests", "Rate limit reached").as_bytes())
            .await
            .unwrap(),
        "e500" => sock
            .write_all(status(500, "Internal Server Error", "CUDA out of memory").as_bytes())
            .await
            .unwrap(),
        "slow" => {
            sock.write_all(sse_head.as_bytes()).await.unwrap();
            sock.write_all(chunk("Thinking").as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        "cut" => {
            sock.write_all(sse_head.as_bytes()).await.unwrap();
            sock.write_all(chunk("半句").as_bytes()).await.unwrap();
            sock.write_all(chunk("话").as_bytes()).await.unwrap();
            // The server dies: the connection closes with no finish and no [DONE].
        }
        "inband-error" => {
            sock.write_all(sse_head.as_bytes()).await.unwrap();
            sock.write_all(chunk("Partial").as_bytes()).await.unwrap();
            sock.write_all(b"data: {\"error\": {\"message\": \"model overloaded\"}}\n\n")
                .await
                .unwrap();
        }
        "endless" => {
            sock.write_all(sse_head.as_bytes()).await.unwrap();
            for _ in 0..600 {
                if sock.write_all(chunk("la ").as_bytes()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        _ => {
            sock.write_all(sse_head.as_bytes()).await.unwrap();
            // A multi-byte character split across two writes, a keep-alive comment, CRLF events.
            let first = format!(
                "data: {}\n\n: keep-alive\n\n{}",
                serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}),
                chunk("你好")
            );
            sock.write_all(first.as_bytes()).await.unwrap();
            let second = chunk("，世界 END and more").replace("\n\n", "\r\n\r\n");
            let bytes = second.as_bytes();
            let split = second.find('世').unwrap() + 1;
            sock.write_all(&bytes[..split]).await.unwrap();
            sock.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            sock.write_all(&bytes[split..]).await.unwrap();
            let fin = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 11, "completion_tokens": 7}});
            sock.write_all(format!("data: {fin}\n\ndata: [DONE]\n\n").as_bytes())
                .await
                .unwrap();
        }
    }
    let _ = sock.shutdown().await;
}

fn config(base: &str, model: &str) -> RemoteConfig {
    RemoteConfig {
        base_url: base.into(),
        model: model.into(),
        api_key: Some("sk-test-123".into()),
        timeout_s: 1,
        extra_sampling: true,
    }
}

fn request() -> TextRequest {
    TextRequest {
        model: "remote".into(),
        messages: vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Say hello"),
        ],
        params: SamplingParams {
            temperature: 0.5,
            max_tokens: 32,
            ..Default::default()
        },
    }
}

async fn run(
    base: &str,
    model: &str,
    req: &TextRequest,
) -> (
    String,
    atelier_engine::Result<atelier_engine::text::TextOutcome>,
) {
    let mut got = String::new();
    let r = generate(
        &config(base, model),
        req,
        7,
        &CancellationToken::new(),
        &mut |t: &str| got.push_str(t),
    )
    .await;
    (got, r)
}

#[tokio::test]
async fn streams_a_reply_and_sends_what_was_asked() {
    let (base, seen) = serve().await;
    let (got, r) = run(&base, "ok", &request()).await;
    let o = r.unwrap();
    assert_eq!(got, "你好，世界 END and more");
    assert_eq!(o.text, got);
    assert_eq!(o.stop_reason, StopReason::EndOfText);
    assert_eq!((o.prompt_tokens, o.completion_tokens), (11, 7));
    let (head, body) = seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("POST /v1/chat/completions"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer sk-test-123")
    );
    assert_eq!(body["stream"], true);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["max_tokens"], 32);
    assert!(body.get("repetition_penalty").is_some());
}

#[tokio::test]
async fn stop_strings_cut_the_remote_reply() {
    let (base, _) = serve().await;
    let mut req = request();
    req.params.stop = vec!["END".into()];
    let (got, r) = run(&base, "ok", &req).await;
    assert_eq!(r.unwrap().stop_reason, StopReason::StopString);
    assert_eq!(got, "你好，世界 ");
}

#[tokio::test]
async fn each_failure_is_clear_and_keeps_the_partial_text() {
    let (base, _) = serve().await;
    let cases = [
        ("e401", "remote_auth", "API key"),
        ("e429", "remote_rate_limited", "429"),
        ("e500", "remote_server", "CUDA out of memory"),
        ("slow", "remote_timeout", "1 s"),
        ("cut", "remote_interrupted", "before it was complete"),
        ("inband-error", "remote_server", "model overloaded"),
    ];
    for (model, kind, words) in cases {
        let (got, r) = run(&base, model, &request()).await;
        let e = r.unwrap_err();
        assert_eq!(e.kind(), kind, "{model}: {e}");
        assert!(e.to_string().contains(words), "{model}: {e}");
        match model {
            "cut" => assert_eq!(got, "半句话"),
            "slow" => assert_eq!(got, "Thinking"),
            "inband-error" => assert_eq!(got, "Partial"),
            _ => assert_eq!(got, ""),
        }
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let (_, r) = run(&base, "ok", &request()).await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), "remote_unreachable");
    assert!(e.to_string().contains("cannot connect"), "{e}");
    let bad = generate(
        &config("ftp://x", "m"),
        &request(),
        1,
        &CancellationToken::new(),
        &mut |_: &str| {},
    )
    .await;
    assert_eq!(bad.unwrap_err().kind(), "invalid_input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_jobs_are_recorded_cancelled_and_never_retried_by_themselves() {
    let (base, seen) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        Home::at(dir.path()),
        Access::Exclusive,
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    engine
        .store()
        .update_settings(&SettingsPatch {
            remote_base_url: Some(base.clone()),
            remote_model: Some("cut".into()),
            remote_api_key: Some("sk-secret-key".into()),
            remote_timeout_s: Some(2),
            ..Default::default()
        })
        .unwrap();
    let settings = engine.store().settings().unwrap();
    assert!(settings.remote_api_key_set);
    assert!(
        !serde_json::to_string(&settings)
            .unwrap()
            .contains("sk-secret-key")
    );
    let project = engine.store().create_project("Remote").unwrap();

    let wait = |mut rx: tokio::sync::mpsc::UnboundedReceiver<JobEvent>| async move {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if e.is_terminal() {
                return e;
            }
        }
    };
    let sink = || {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Arc::new(move |e| {
                let _ = tx.send(e);
            }) as atelier_engine::EventSink,
            rx,
        )
    };

    // The stream breaks: one request only, a failed generation holding the partial text.
    let (tx, rx) = sink();
    engine
        .generate_text(
            TextJob {
                project_id: project.id,
                request: request(),
                purpose: None,
            },
            Some(tx),
        )
        .unwrap();
    assert!(
        matches!(wait(rx).await, JobEvent::Failed { kind, .. } if kind == "remote_interrupted")
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a failed generation must not be sent again"
    );
    let id = engine.store().history(&Default::default()).unwrap().items[0].id;
    let rec = engine.store().generation(id).unwrap();
    assert_eq!(rec.status, GenerationStatus::Failed);
    assert_eq!(rec.output_text.as_deref(), Some("半句话"));
    assert_eq!(rec.model_id, "remote:cut");

    // Cancel mid-stream.
    let (tx, mut rx) = sink();
    let mut req = request();
    req.model = "remote:endless".into();
    let job = engine
        .generate_text(
            TextJob {
                project_id: project.id,
                request: req,
                purpose: None,
            },
            Some(tx),
        )
        .unwrap();
    loop {
        if let JobEvent::Token { .. } = rx.recv().await.unwrap() {
            break;
        }
    }
    engine.jobs().cancel(job).unwrap();
    assert_eq!(wait(rx).await, JobEvent::Cancelled);
    let id = engine.store().history(&Default::default()).unwrap().items[0].id;
    let rec = engine.store().generation(id).unwrap();
    assert_eq!(rec.status, GenerationStatus::Cancelled);
    assert!(rec.output_text.unwrap().starts_with("la "));
}
