//! `atelier-cli script`: live scripts for one product (`--product FILE.json`) or many
//! (`--products FILE.csv`), through the same queued jobs the app runs, exported into `--out`.
//! Products are saved into the project first, so the app lists them too. Ctrl-C cancels.

use std::collections::HashMap;
use std::sync::Arc;

use atelier_engine::script::csv_import;
use atelier_engine::script::export::ScriptFormat;
use atelier_engine::script::product::{Product, ShowSettings};
use atelier_engine::{Engine, Error, JobEvent, Result};
use serde::Serialize;

use crate::ScriptArgs;

#[derive(Serialize)]
struct Written {
    product: String,
    document_id: Option<i64>,
    segments: usize,
    placeholders: usize,
    files: Vec<String>,
    error: Option<String>,
}

fn formats(list: &str) -> Result<Vec<ScriptFormat>> {
    list.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| match f {
            "md" => Ok(ScriptFormat::Md),
            "txt" => Ok(ScriptFormat::Txt),
            "srt" => Ok(ScriptFormat::Srt),
            "json" => Ok(ScriptFormat::Json),
            "csv" => Ok(ScriptFormat::Csv),
            other => Err(Error::invalid(format!(
                "unknown format “{other}”: use md, txt, srt, json, csv"
            ))),
        })
        .collect()
}

fn read_products(a: &ScriptArgs) -> Result<Vec<Product>> {
    match (&a.products, &a.product) {
        (Some(csv), None) => {
            let bytes = std::fs::read(csv)
                .map_err(|e| Error::io(format!("cannot read {}", csv.display()), e))?;
            let parsed = csv_import::parse(&bytes)?;
            for e in &parsed.errors {
                eprintln!(
                    "{}: row {}{}: {} (skipped)",
                    csv.display(),
                    e.row,
                    e.column
                        .as_deref()
                        .map(|c| format!(", column {c}"))
                        .unwrap_or_default(),
                    e.message
                );
            }
            if parsed.products.is_empty() {
                return Err(Error::invalid(format!(
                    "{} has no usable product rows",
                    csv.display()
                )));
            }
            Ok(parsed.products)
        }
        (None, Some(json)) => {
            let text = std::fs::read_to_string(json)
                .map_err(|e| Error::io(format!("cannot read {}", json.display()), e))?;
            let p: Product = serde_json::from_str(&text)
                .map_err(|e| Error::invalid(format!("{}: {e}", json.display())))?;
            Ok(vec![p.normalized()?])
        }
        _ => Err(Error::invalid(
            "give either --products FILE.csv or --product FILE.json",
        )),
    }
}

fn file_stem(name: &str, i: usize) -> String {
    format!("{:03}-{}", i + 1, atelier_engine::export::safe_title(name))
}

pub async fn run(engine: &Engine, a: ScriptArgs, json: bool) -> Result<()> {
    let formats = formats(&a.formats)?;
    let products = read_products(&a)?;
    let show = ShowSettings {
        slot_min: a.slot_min,
        platform: a.platform.clone().unwrap_or_default(),
        virtual_host: a.virtual_host,
        language: a.language.clone(),
        ..ShowSettings::default()
    };
    show.validate()?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_text_model()?.ok_or_else(|| Error::invalid("no text model is installed: run ./scripts/run.sh, or `atelier-cli models import FILE`"))?,
    };
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Error::io(format!("cannot create {}", a.out.display()), e))?;
    let store = engine.store();
    let project_id = crate::project_or_default(store, a.project)?;
    let ids = store.import_products(project_id, &products)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, JobEvent)>();
    let jobs =
        engine.generate_scripts_for_products(project_id, &ids, &show, &model, a.seed, |pid| {
            let tx = tx.clone();
            Some(Arc::new(move |e| {
                let _ = tx.send((pid, e));
            }))
        })?;
    drop(tx);
    let names: HashMap<i64, (usize, String)> = ids
        .iter()
        .zip(&products)
        .enumerate()
        .map(|(i, (id, p))| (*id, (i, p.name.clone())))
        .collect();
    let total = ids.len();
    let mut written: Vec<Written> = Vec::new();
    loop {
        let next = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("cancelling…");
                for j in &jobs {
                    let _ = engine.jobs().cancel(*j);
                }
                continue;
            }
        };
        let Some((pid, event)) = next else { break };
        let (i, name) = names.get(&pid).cloned().unwrap_or((0, String::new()));
        let mut entry = Written {
            product: name.clone(),
            document_id: None,
            segments: 0,
            placeholders: 0,
            files: Vec::new(),
            error: None,
        };
        match event {
            JobEvent::Progress { done, total: segs } if !json => eprintln!(
                "[{}/{total}] {name}: segment {}/{segs}",
                i + 1,
                (done + 1).min(segs)
            ),
            JobEvent::Finished { result } => {
                let doc = result["document_id"].as_i64().unwrap_or_default();
                entry.document_id = Some(doc);
                entry.segments = result["segments"].as_u64().unwrap_or(0) as usize;
                entry.placeholders = result["placeholders"].as_u64().unwrap_or(0) as usize;
                for f in &formats {
                    let (_, bytes) = engine.render_script(doc, None, *f)?;
                    let path = a
                        .out
                        .join(format!("{}.{}", file_stem(&name, i), f.extension()));
                    atelier_engine::fsutil::write_atomic(&path, &bytes)?;
                    entry.files.push(path.display().to_string());
                }
                if !json {
                    eprintln!(
                        "[{}/{total}] {name}: {} segments, {} to regenerate → {}",
                        i + 1,
                        entry.segments,
                        entry.placeholders,
                        entry.files.join(", ")
                    );
                }
                written.push(entry);
            }
            JobEvent::Failed { kind, message } => {
                eprintln!("[{}/{total}] {name}: error[{kind}]: {message}", i + 1);
                entry.error = Some(format!("{kind}: {message}"));
                written.push(entry);
            }
            JobEvent::Cancelled => {
                entry.error = Some("cancelled".into());
                written.push(entry);
            }
            _ => {}
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&written)?);
    }
    let failed = written.iter().filter(|w| w.error.is_some()).count();
    if failed > 0 {
        return Err(Error::Conflict(format!(
            "{failed} of {total} scripts were not written"
        )));
    }
    Ok(())
}
