//! The remote engine: any server that speaks OpenAI's `/v1/chat/completions` with streaming
//! (vLLM, llama.cpp's server, Ollama, DeepSeek, DashScope's compatible mode...).
//!
//! A generation request is never retried automatically: it may already be running or billed
//! on the server. Every failure keeps the text received so far (the caller accumulates what
//! `on_text` was given) and says plainly what went wrong.

use std::time::Instant;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::params::{StopReason, TextOutcome, TextRequest};
use super::stream::StopStrings;
use crate::error::{Error, RemoteFailure, Result};

/// Where and how to reach the server.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteConfig {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub model: String,
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// Seconds to wait for the connection and between two pieces of the reply.
    pub timeout_s: u32,
    /// Send top-k, min-p and repeat penalty (vLLM, llama.cpp and Ollama read them; some
    /// hosted APIs reject unknown fields).
    pub extra_sampling: bool,
}

// The API key must never reach a log line.
impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeout_s", &self.timeout_s)
            .finish()
    }
}

impl RemoteConfig {
    pub fn validate(&self) -> Result<()> {
        crate::http::check_url(&self.base_url, "server address")?;
        if self.model.trim().is_empty() {
            return Err(Error::invalid("name the model the server should run"));
        }
        if !(1..=3600).contains(&self.timeout_s) {
            return Err(Error::invalid(
                "the timeout must be between 1 and 3600 seconds",
            ));
        }
        Ok(())
    }

    fn endpoint(&self) -> String {
        format!(
            "{}/chat/completions",
            self.base_url.trim().trim_end_matches('/')
        )
    }
}

/// Streams a reply from the server. `on_text` gets each piece as it arrives.
pub async fn generate(
    config: &RemoteConfig,
    req: &TextRequest,
    seed: u64,
    cancel: &CancellationToken,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<TextOutcome> {
    config.validate()?;
    let client = crate::http::client(config.timeout_s)?;

    let p = &req.params;
    let mut body = serde_json::json!({
        "model": config.model,
        "messages": req.messages,
        "stream": true,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "max_tokens": p.max_tokens,
        "seed": seed,
    });
    // OpenAI allows four stop strings; more are applied here only.
    if !p.stop.is_empty() && p.stop.len() <= 4 {
        body["stop"] = serde_json::json!(p.stop);
    }
    if config.extra_sampling {
        body["top_k"] = serde_json::json!(p.top_k);
        body["min_p"] = serde_json::json!(p.min_p);
        body["repeat_penalty"] = serde_json::json!(p.repeat_penalty); // llama.cpp, Ollama
        body["repetition_penalty"] = serde_json::json!(p.repeat_penalty); // vLLM
    }

    let started = Instant::now();
    let mut request = client.post(config.endpoint()).json(&body);
    if let Some(key) = config.api_key.as_deref().filter(|k| !k.is_empty()) {
        request = request.bearer_auth(key);
    }
    let response = tokio::select! {
        r = request.send() => r.map_err(|e| send_error(config, e))?,
        _ = cancel.cancelled() => return Ok(outcome(String::new(), seed, 0, 0, StopReason::Cancelled, started, None)),
    };
    let status = response.status();
    if !status.is_success() {
        let detail = response.text().await.unwrap_or_default();
        return Err(status_error(status.as_u16(), &detail));
    }

    let mut events = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut stops = StopStrings::new(&p.stop);
    let mut text = String::new();
    let mut pieces = 0u32;
    let mut usage: Option<(u32, u32)> = None;
    let mut first_at = None;
    let mut finished: Option<StopReason> = None;
    'read: loop {
        let chunk = tokio::select! {
            c = events.next() => c,
            _ = cancel.cancelled() => { finished = Some(StopReason::Cancelled); break 'read; }
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| {
            if e.is_timeout() {
                Error::remote(
                    RemoteFailure::Timeout,
                    format!(
                        "the server sent nothing for {} s; the reply so far was kept",
                        config.timeout_s
                    ),
                )
            } else {
                Error::remote(
                    RemoteFailure::Interrupted,
                    format!(
                        "the connection broke during the reply ({e}); the text so far was kept"
                    ),
                )
            }
        })?;
        buf.extend_from_slice(&chunk);
        while let Some((event, rest)) = next_event(&buf) {
            let data = event_data(&event);
            buf = rest;
            let Some(data) = data else { continue };
            if data.trim() == "[DONE]" {
                finished.get_or_insert(StopReason::EndOfText);
                break 'read;
            }
            let v: serde_json::Value = serde_json::from_str(&data).map_err(|e| {
                Error::remote(
                    RemoteFailure::Protocol,
                    format!("the server sent something that is not OpenAI-style JSON ({e})"),
                )
            })?;
            if let Some(err) = v.get("error") {
                let msg = err
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map_or_else(|| err.to_string(), str::to_owned);
                return Err(Error::remote(
                    RemoteFailure::Server,
                    format!("the server stopped with an error: {msg}"),
                ));
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                let n = |k: &str| u.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as u32;
                usage = Some((n("prompt_tokens"), n("completion_tokens")));
            }
            let choice = v.get("choices").and_then(|c| c.get(0));
            if let Some(piece) = choice
                .and_then(|c| c.get("delta"))
                .and_then(|d| d.get("content"))
                .and_then(|c| c.as_str())
                && !piece.is_empty()
            {
                pieces += 1;
                first_at.get_or_insert_with(Instant::now);
                let released = stops.push(piece);
                if !released.text.is_empty() {
                    text.push_str(&released.text);
                    on_text(&released.text);
                }
                if released.stopped {
                    finished = Some(StopReason::StopString);
                    break 'read;
                }
            }
            match choice
                .and_then(|c| c.get("finish_reason"))
                .and_then(|f| f.as_str())
            {
                Some("length") => finished = Some(StopReason::MaxTokens),
                Some(_) => {
                    finished.get_or_insert(StopReason::EndOfText);
                }
                None => {}
            }
        }
    }
    if finished != Some(StopReason::StopString) {
        let rest = stops.finish();
        if !rest.is_empty() {
            text.push_str(&rest);
            on_text(&rest);
        }
    }
    let Some(reason) = finished else {
        return Err(Error::remote(
            RemoteFailure::Interrupted,
            "the server closed the reply before it was complete; the text so far was kept",
        ));
    };
    let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, pieces));
    Ok(outcome(
        text,
        seed,
        prompt_tokens,
        completion_tokens,
        reason,
        started,
        first_at,
    ))
}

fn outcome(
    text: String,
    seed: u64,
    prompt_tokens: u32,
    completion_tokens: u32,
    stop_reason: StopReason,
    started: Instant,
    first_at: Option<Instant>,
) -> TextOutcome {
    let now = Instant::now();
    let decode = match first_at {
        Some(f) if completion_tokens > 1 => {
            (completion_tokens - 1) as f64 / now.duration_since(f).as_secs_f64().max(1e-9)
        }
        _ => 0.0,
    };
    TextOutcome {
        text,
        seed,
        prompt_tokens,
        completion_tokens,
        stop_reason,
        first_token_ms: first_at.map_or(0, |f| f.duration_since(started).as_millis() as u64),
        load_ms: 0,
        total_ms: now.duration_since(started).as_millis() as u64,
        prefill_tokens_per_s: 0.0,
        decode_tokens_per_s: decode,
    }
}

/// Splits the first complete SSE event (ended by a blank line) off `buf`.
fn next_event(buf: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        let end = if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            Some(2)
        } else if buf[i..].starts_with(b"\r\n\r\n") {
            Some(4)
        } else {
            None
        };
        if let Some(n) = end {
            let event = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Some((event, buf[i + n..].to_vec()));
        }
        i += 1;
    }
    None
}

/// The `data:` lines of an event joined by newlines (comments and other fields ignored).
fn event_data(event: &str) -> Option<String> {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    if lines.is_empty() {
        None
    } else {
        Some(lines.join("\n"))
    }
}

fn send_error(config: &RemoteConfig, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::remote(
            RemoteFailure::Timeout,
            format!(
                "{} did not answer within {} s",
                config.base_url, config.timeout_s
            ),
        )
    } else if let Some(problem) = crate::http::certificate_problem(&e) {
        Error::remote(
            RemoteFailure::Unreachable,
            format!("cannot connect to {}: {problem}", config.base_url),
        )
    } else if e.is_connect() {
        Error::remote(
            RemoteFailure::Unreachable,
            format!(
                "cannot connect to {}: is the server running and the address right? ({e})",
                config.base_url
            ),
        )
    } else {
        Error::remote(
            RemoteFailure::Unreachable,
            format!("the request to {} failed: {e}", config.base_url),
        )
    }
}

fn status_error(status: u16, body: &str) -> Error {
    // Servers put the reason in {"error": {"message": ...}} (OpenAI) or {"error": "..."}.
    let detail = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message")
                .and_then(|m| m.as_str())
                .or_else(|| e.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    let detail = if detail.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", detail.trim())
    };
    match status {
        401 | 403 => Error::remote(
            RemoteFailure::Auth,
            format!("the server refused the API key (HTTP {status}){detail}"),
        ),
        404 => Error::remote(
            RemoteFailure::Server,
            format!("the server has no such endpoint or model (HTTP 404){detail}"),
        ),
        429 => Error::remote(
            RemoteFailure::RateLimited,
            format!(
                "the server is rate-limiting or out of quota (HTTP 429){detail}; wait and try again"
            ),
        ),
        400..=499 => Error::remote(
            RemoteFailure::Rejected,
            format!("the server rejected the request (HTTP {status}){detail}"),
        ),
        _ => Error::remote(
            RemoteFailure::Server,
            format!("the server failed (HTTP {status}){detail}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_reads() {
        let (e, rest) = next_event(b"data: {\"a\":1}\n\ndata: [DO").unwrap();
        assert_eq!(event_data(&e).as_deref(), Some("{\"a\":1}"));
        assert!(next_event(&rest).is_none());
        let (e, _) = next_event(b": keep-alive\r\n\r\n").unwrap();
        assert_eq!(event_data(&e), None);
    }

    #[test]
    fn api_key_is_not_in_debug_output() {
        let c = RemoteConfig {
            base_url: "http://x/v1".into(),
            model: "m".into(),
            api_key: Some("sk-secret".into()),
            timeout_s: 5,
            extra_sampling: false,
        };
        assert!(!format!("{c:?}").contains("sk-secret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("sk-secret"));
    }
}
