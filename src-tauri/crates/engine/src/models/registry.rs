//! Installed models: the GGUF files in `$ATELIER_HOME/models/`, described from their headers.
//! A file that fails validation is listed with its error, never silently skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gguf::{self, Header};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic_with;

/// Architectures the local text engine runs.
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "qwen3"];
/// Tensor types candle can load (the IQ* families it cannot).
const LOADABLE_TYPES: [&str; 15] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
    "Q5_K", "Q6_K", "Q8_K",
];

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The file name without `.gguf`; how the CLI and settings refer to the model.
    pub id: String,
    pub file: PathBuf,
    pub file_bytes: u64,
    pub architecture: String,
    pub name: Option<String>,
    pub parameters: u64,
    /// The most common type among the weight matrices (e.g. `Q4_1`).
    pub quantization: String,
    pub tensor_types: BTreeMap<String, usize>,
    pub context_length: Option<u64>,
    pub license: Option<String>,
    /// `tokenizer.ggml.model` / `tokenizer.ggml.pre`, e.g. `gpt2/smollm`.
    pub tokenizer: Option<String>,
    pub has_chat_template: bool,
    /// `None` when the local engine can run it; otherwise why not.
    pub unsupported: Option<String>,
    /// What runs it on the CPU: "native" (Atelier's engine, blocks as shipped) or "candle".
    pub cpu_engine: String,
    /// Tensor types the candle path repacks to Q8_0 on load (candle has no fast kernel for
    /// them), e.g. `["Q4_1"]`; the repacked copy is cached, so only the first load pays.
    /// Empty when the native engine runs the model.
    pub repacked_on_cpu: Vec<String>,
}

/// One file of the models folder: described, or why it could not be read.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ModelEntry {
    Ok(ModelInfo),
    Broken { file: PathBuf, error: String },
}

pub fn describe(path: &Path) -> Result<ModelInfo> {
    Ok(info_from(path, &read_header(path)?))
}

/// The validated header, or an error that names the file.
fn read_header(path: &Path) -> Result<Header> {
    gguf::read_header(path).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

fn info_from(path: &Path, h: &Header) -> ModelInfo {
    let architecture = h
        .str("general.architecture")
        .unwrap_or("unknown")
        .to_owned();
    let mut tensor_types = BTreeMap::new();
    let mut matrix_types: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &h.tensors {
        let name = gguf::ggml_type(t.ggml_type).map_or("?", |t| t.0);
        *tensor_types.entry(name.to_owned()).or_insert(0) += 1;
        if t.dims.len() >= 2 {
            *matrix_types.entry(name).or_insert(0) += t.dims.iter().product::<u64>();
        }
    }
    let quantization = matrix_types
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or("F32", |(t, _)| t)
        .to_owned();
    let unsupported = if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
        Some(format!(
            "architecture “{architecture}” is not supported by the local engine (supported: {})",
            SUPPORTED_ARCHITECTURES.join(", ")
        ))
    } else {
        let bad = tensor_types
            .keys()
            .find(|t| !LOADABLE_TYPES.contains(&t.as_str()));
        bad.map(|bad| {
            format!(
                "tensor type {bad} cannot be loaded by the local engine; use a Q4_K_M, Q5_K_M, Q8_0 or F16 file"
            )
        })
    };
    let tokenizer = h
        .str("tokenizer.ggml.model")
        .map(|m| match h.str("tokenizer.ggml.pre") {
            Some(pre) => format!("{m}/{pre}"),
            None => m.to_owned(),
        });
    let native = crate::text::native::unsupported_reason(h).is_none();
    let repacked_on_cpu = if native {
        Vec::new()
    } else {
        tensor_types
            .keys()
            .filter(|t| matches!(t.as_str(), "Q4_1" | "Q5_0" | "Q5_1"))
            .cloned()
            .collect()
    };
    ModelInfo {
        cpu_engine: if native { "native" } else { "candle" }.into(),
        repacked_on_cpu,
        id: model_id(path),
        file: path.to_path_buf(),
        file_bytes: h.file_size,
        name: h.str("general.name").map(str::to_owned),
        parameters: h.parameter_count(),
        quantization,
        tensor_types,
        context_length: h.u64(&format!("{architecture}.context_length")),
        license: h.str("general.license").map(str::to_owned),
        tokenizer,
        has_chat_template: h.get("tokenizer.chat_template").is_some(),
        unsupported,
        architecture,
    }
}

pub fn model_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// Every `.gguf` file in `dir`, sorted by id.
pub fn list(dir: &Path) -> Result<Vec<ModelEntry>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()), e)),
    };
    let mut entries = Vec::new();
    for entry in read {
        let path = entry
            .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
            .path();
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            entries.push(match describe(&path) {
                Ok(info) => ModelEntry::Ok(info),
                Err(e) => ModelEntry::Broken {
                    file: path,
                    error: e.to_string(),
                },
            });
        }
    }
    entries.sort_by_key(|e| match e {
        ModelEntry::Ok(i) => i.id.clone(),
        ModelEntry::Broken { file, .. } => model_id(file),
    });
    Ok(entries)
}

/// Validates `src` and copies it into `dir` (through a temp file: an interrupted import leaves
/// nothing behind). An existing model of the same file name is not overwritten.
pub fn import(dir: &Path, src: &Path) -> Result<ModelInfo> {
    let header = read_header(src)?;
    let name = src
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{} is not a file", src.display())))?;
    let name = if Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        PathBuf::from(name)
    } else {
        PathBuf::from(format!("{}.gguf", name.to_string_lossy()))
    };
    let target = dir.join(&name);
    if target.exists() {
        return Err(Error::Conflict(format!(
            "a model named {} is already installed; rename the file to import it as another model",
            name.display()
        )));
    }
    let mut from = std::fs::File::open(src)
        .map_err(|e| Error::io(format!("cannot open {}", src.display()), e))?;
    write_atomic_with(&target, |to| std::io::copy(&mut from, to).map(|_| ()))?;
    Ok(info_from(&target, &header))
}

/// Deletes the installed model `id` (its file in `dir`). The caller has asked the user.
pub fn remove(dir: &Path, id: &str) -> Result<PathBuf> {
    for entry in list(dir)? {
        let file = match entry {
            ModelEntry::Ok(i) => i.file,
            ModelEntry::Broken { file, .. } => file,
        };
        if model_id(&file) == id {
            std::fs::remove_file(&file)
                .map_err(|e| Error::io(format!("cannot remove {}", file.display()), e))?;
            return Ok(file);
        }
    }
    Err(Error::invalid(format!("no model “{id}” is installed")))
}
