//! `atelier-cli generate`: one generation through the same job path the app uses, streamed to
//! stdout. Ctrl-C cancels it (the partial text is kept in History).

use std::io::Write;
use std::sync::Arc;

use atelier_engine::text::chat::{ChatMessage, Role};
use atelier_engine::text::service::TextJob;
use atelier_engine::text::{SamplingParams, TextRequest};
use atelier_engine::{Engine, Error, JobEvent, Result};

use crate::GenerateArgs;

pub async fn run(engine: &Engine, a: GenerateArgs, json: bool) -> Result<()> {
    let model = match a.model {
        Some(m) => m,
        None => engine.default_text_model()?.ok_or_else(|| {
            Error::invalid("no text model is installed: run ./scripts/run.sh, or `atelier-cli models import FILE`")
        })?,
    };
    let d = SamplingParams::default();
    let params = SamplingParams {
        temperature: a.temperature.unwrap_or(d.temperature),
        top_p: a.top_p.unwrap_or(d.top_p),
        top_k: a.top_k.unwrap_or(d.top_k),
        min_p: a.min_p.unwrap_or(d.min_p),
        repeat_penalty: a.repeat_penalty.unwrap_or(d.repeat_penalty),
        max_tokens: a.max_tokens.unwrap_or(d.max_tokens),
        stop: a.stop,
        seed: a.seed,
        ..d
    };
    let mut messages = Vec::new();
    if let Some(system) = a.system {
        messages.push(ChatMessage::new(Role::System, system));
    }
    messages.push(ChatMessage::new(Role::User, a.prompt));
    let store = engine.store();
    let project_id = crate::project_or_default(store, a.project)?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink: atelier_engine::EventSink = Arc::new(move |e| {
        let _ = tx.send(e);
    });
    let job = engine.generate_text(
        TextJob {
            project_id,
            request: TextRequest {
                model,
                messages,
                params,
            },
            purpose: None,
        },
        Some(sink),
    )?;
    let mut stdout = std::io::stdout();
    let mut progress_shown = false;
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::signal::ctrl_c() => {
                engine.jobs().cancel(job)?;
                continue;
            }
        };
        let Some(event) = event else {
            return Err(Error::Internal("the job ended without a result".into()));
        };
        match event {
            JobEvent::Progress { done, total }
                if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) =>
            {
                eprint!("\rloading the model {done}/{total}");
                progress_shown = true;
            }
            JobEvent::Token { text } if !json => {
                if progress_shown {
                    eprintln!();
                    progress_shown = false;
                }
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
            JobEvent::Finished { result } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&result)?);
                } else {
                    println!();
                    let f = |k: &str| result[k].as_f64().unwrap_or(0.0);
                    eprintln!(
                        "[{} prompt + {} generated tokens · first token {:.0} ms · {:.1} tok/s · seed {} · stop: {} · generation #{}]",
                        f("prompt_tokens"),
                        f("completion_tokens"),
                        f("first_token_ms"),
                        f("decode_tokens_per_s"),
                        result["seed"],
                        result["stop_reason"].as_str().unwrap_or("?"),
                        result["generation_id"]
                    );
                }
                return Ok(());
            }
            JobEvent::Failed { kind, message } => {
                if !json {
                    println!();
                }
                return Err(match kind.as_str() {
                    "invalid_input" => Error::InvalidInput(message),
                    _ => Error::Internal(format!("[{kind}] {message}")),
                });
            }
            JobEvent::Cancelled => {
                println!();
                return Err(Error::Cancelled);
            }
            _ => {}
        }
    }
}
