//! The GGUF header validator against real files: a well-formed one, and truncated, foreign and
//! hostile ones (absurd counts and lengths must be refused before anything is allocated).

use atelier_engine::models::gguf::{GgufError, Value, read_header};

/// Writes a GGUF v3 file: metadata (string and u32 values, one string array), then tensors.
struct Gguf {
    kvs: Vec<u8>,
    kv_count: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
    tensor_count: u64,
}

impl Gguf {
    fn new() -> Self {
        Gguf {
            kvs: Vec::new(),
            kv_count: 0,
            infos: Vec::new(),
            data: Vec::new(),
            tensor_count: 0,
        }
    }
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }
    fn kv_str(mut self, k: &str, v: &str) -> Self {
        Self::string(&mut self.kvs, k);
        self.kvs.extend(8u32.to_le_bytes());
        Self::string(&mut self.kvs, v);
        self.kv_count += 1;
        self
    }
    fn kv_u32(mut self, k: &str, v: u32) -> Self {
        Self::string(&mut self.kvs, k);
        self.kvs.extend(4u32.to_le_bytes());
        self.kvs.extend(v.to_le_bytes());
        self.kv_count += 1;
        self
    }
    fn kv_strings(mut self, k: &str, items: &[&str]) -> Self {
        Self::string(&mut self.kvs, k);
        self.kvs.extend(9u32.to_le_bytes());
        self.kvs.extend(8u32.to_le_bytes());
        self.kvs.extend((items.len() as u64).to_le_bytes());
        for s in items {
            Self::string(&mut self.kvs, s);
        }
        self.kv_count += 1;
        self
    }
    /// An F32 tensor of the given shape (values 0..n).
    fn tensor_f32(mut self, name: &str, dims: &[u64]) -> Self {
        Self::string(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(0u32.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        let n: u64 = dims.iter().product();
        for i in 0..n {
            self.data.extend((i as f32).to_le_bytes());
        }
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.tensor_count += 1;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.tensor_count.to_le_bytes());
        out.extend(self.kv_count.to_le_bytes());
        out.extend(&self.kvs);
        out.extend(&self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

fn tiny() -> Gguf {
    Gguf::new()
        .kv_str("general.architecture", "llama")
        .kv_str("general.name", "tiny 测试")
        .kv_u32("llama.context_length", 256)
        .kv_strings("tokenizer.ggml.tokens", &["<s>", "你", "好"])
        .kv_strings("general.tags", &["text-generation", "chat"])
        .tensor_f32("token_embd.weight", &[8, 3])
        .tensor_f32("output_norm.weight", &[8])
}

fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn a_well_formed_file_is_read() {
    let (_d, path) = write(&tiny().bytes());
    let h = read_header(&path).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.str("general.architecture"), Some("llama"));
    assert_eq!(h.str("general.name"), Some("tiny 测试"));
    assert_eq!(h.u64("llama.context_length"), Some(256));
    // The tokenizer's arrays are kept (the tokenizer is built from them); others are skipped.
    assert_eq!(
        h.get("tokenizer.ggml.tokens"),
        Some(&Value::Strings(vec![
            "<s>".into(),
            "你".into(),
            "好".into()
        ]))
    );
    assert_eq!(
        h.get("general.tags"),
        Some(&Value::Array {
            item_type: 8,
            len: 2
        })
    );
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[0].dims, vec![8, 3]);
    assert_eq!(h.tensors[0].bytes, 96);
    assert_eq!(h.parameter_count(), 32);
    assert_eq!(h.data_offset % 32, 0);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = tiny().bytes();
    for len in 0..full.len() {
        let (_d, path) = write(&full[..len]);
        let err = read_header(&path).expect_err(&format!("a file cut at {len} bytes was accepted"));
        assert!(
            matches!(
                err,
                GgufError::Truncated(_) | GgufError::BadMagic(_) | GgufError::Implausible(_)
            ),
            "cut at {len}: {err}"
        );
    }
}

#[test]
fn a_foreign_file_is_not_gguf() {
    let (_d, path) = write(b"PK\x03\x04 this is a zip file, not a model");
    assert!(matches!(read_header(&path), Err(GgufError::BadMagic(_))));
    let (_d, path) = write(b"GG");
    assert!(matches!(read_header(&path), Err(GgufError::Truncated(_))));
}

#[test]
fn an_unknown_version_is_refused() {
    let mut bytes = tiny().bytes();
    bytes[4..8].copy_from_slice(&99u32.to_le_bytes());
    let (_d, path) = write(&bytes);
    assert!(matches!(read_header(&path), Err(GgufError::Version(99))));
}

/// Overwrites the u64 at `at` (little-endian).
fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn absurd_counts_and_lengths_are_refused_without_allocating() {
    // Tensor count and metadata count right after magic + version.
    for (at, what) in [(8, "tensors"), (16, "metadata entries")] {
        let mut bytes = tiny().bytes();
        patch_u64(&mut bytes, at, u64::MAX / 2);
        let (_d, path) = write(&bytes);
        match read_header(&path) {
            Err(GgufError::Implausible(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    // The first key's length: a string of 2^60 bytes.
    let mut bytes = tiny().bytes();
    patch_u64(&mut bytes, 24, 1 << 60);
    let (_d, path) = write(&bytes);
    assert!(matches!(read_header(&path), Err(GgufError::Implausible(_))));
}

#[test]
fn a_tensor_that_points_past_the_end_is_refused() {
    // A shape that claims far more data than the file holds.
    let g = Gguf::new()
        .kv_str("general.architecture", "llama")
        .tensor_f32("w", &[4]);
    let mut bytes = g.bytes();
    // dims[0] sits after: header (24) + kv (8+20 key, 4 type, 8+5 value) + name (8+1) + n_dims (4).
    let kv_len = 8 + "general.architecture".len() + 4 + 8 + "llama".len();
    let dim_at = 24 + kv_len + 8 + 1 + 4;
    patch_u64(&mut bytes, dim_at, 1 << 40);
    let (_d, path) = write(&bytes);
    let err = read_header(&path).unwrap_err();
    assert!(
        matches!(err, GgufError::Implausible(_) | GgufError::Truncated(_)),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_an_io_error() {
    let err = read_header(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, GgufError::Io(_)), "{err}");
}

mod registry {
    use super::*;
    use atelier_engine::models::ModelEntry;
    use atelier_engine::models::registry::{import, list};

    #[test]
    fn import_validates_copies_and_refuses_duplicates() {
        let (_src_dir, src) = write(&tiny().bytes());
        let models = tempfile::tempdir().unwrap();
        let info = import(models.path(), &src).unwrap();
        assert_eq!(info.id, "m");
        assert_eq!(info.architecture, "llama");
        assert_eq!(info.context_length, Some(256));
        assert_eq!(info.quantization, "F32");
        assert!(info.unsupported.is_none());
        assert_eq!(
            std::fs::read(models.path().join("m.gguf")).unwrap(),
            std::fs::read(&src).unwrap()
        );
        assert_eq!(import(models.path(), &src).unwrap_err().kind(), "conflict");
    }

    #[test]
    fn a_refused_import_leaves_nothing_behind() {
        let (_d, bad) = write(&tiny().bytes()[..40]);
        let models = tempfile::tempdir().unwrap();
        assert_eq!(
            import(models.path(), &bad).unwrap_err().kind(),
            "invalid_input"
        );
        assert_eq!(std::fs::read_dir(models.path()).unwrap().count(), 0);
    }

    #[test]
    fn listing_describes_good_files_and_reports_broken_ones() {
        let models = tempfile::tempdir().unwrap();
        std::fs::write(models.path().join("a-good.gguf"), tiny().bytes()).unwrap();
        let other = Gguf::new()
            .kv_str("general.architecture", "mamba")
            .tensor_f32("w", &[4, 4]);
        std::fs::write(models.path().join("b-other-arch.gguf"), other.bytes()).unwrap();
        std::fs::write(models.path().join("c-broken.gguf"), b"not a model").unwrap();
        std::fs::write(models.path().join("notes.txt"), b"ignored").unwrap();
        let entries = list(models.path()).unwrap();
        assert_eq!(entries.len(), 3);
        match &entries[0] {
            ModelEntry::Ok(m) => assert!(m.unsupported.is_none(), "{m:?}"),
            other => panic!("{other:?}"),
        }
        match &entries[1] {
            ModelEntry::Ok(m) => assert!(m.unsupported.as_deref().unwrap().contains("mamba")),
            other => panic!("{other:?}"),
        }
        match &entries[2] {
            ModelEntry::Broken { error, .. } => {
                assert!(error.contains("not a GGUF file"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(list(&models.path().join("missing")).unwrap().is_empty());
    }
}
