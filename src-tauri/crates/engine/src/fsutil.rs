//! Atomic file writes (a reader sees the old file or the new one, never half of one), and
//! reading the folders of data files users may add or edit (rule packs, templates).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// The sha256 of a file as lowercase hex, read in 1 MiB pieces (model files are gigabytes).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Copies `from` to `to` (created or truncated) and returns the sha256 of what was copied, as
/// lowercase hex: one read of the file instead of a copy and then a hash.
pub fn copy_hashing(from: &Path, to: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut src = std::fs::File::open(from)
        .map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?;
    let mut dst = std::fs::File::create(to)
        .map_err(|e| Error::io(format!("cannot write {}", to.display()), e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("cannot write {}", to.display()), e))?;
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The sha256 of bytes in memory as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to `path` through a temp file in the same folder, fsyncs it, then renames it
/// over the target. On any error the temp file is removed and the target is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`] but lets the caller stream into the file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| Error::invalid(format!("{} has no parent folder", path.display())))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let ctx = || format!("cannot write {}", path.display());
    // NamedTempFile deletes itself on drop, so every early return below cleans up.
    let mut tmp = tempfile::Builder::new()
        .prefix(".atelier-tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(ctx(), e))?;
    fill(tmp.as_file_mut()).map_err(|e| Error::io(ctx(), e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(ctx(), e))?;
    tmp.persist(path).map_err(|e| Error::io(ctx(), e.error))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.txt");
        write_atomic(&p, "第一版".as_bytes()).unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("doc.md");
        write_atomic(&p, b"keep me").unwrap();
        let err = write_atomic_with(&p, |f| {
            f.write_all(b"half of the new")?;
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "simulated full disk",
            ))
        })
        .unwrap_err();
        assert_eq!(err.kind(), "disk_full");
        assert_eq!(std::fs::read(&p).unwrap(), b"keep me");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("doc.md")],
            "temp file left behind"
        );
    }

    #[test]
    fn a_path_without_folder_is_refused() {
        assert_eq!(
            write_atomic(Path::new(""), b"x").unwrap_err().kind(),
            "invalid_input"
        );
    }
}

/// A data file (rule pack, template) that could not be used, and why; the others still load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileProblem {
    pub file: String,
    pub message: String,
}

/// The `*.toml` files of `dir`, sorted by name, each as (path shown to the user, contents), or
/// why it could not be read: larger than `max_bytes` (named `what` in the message), unreadable,
/// not UTF-8. A missing folder has no files.
pub fn read_toml_files(
    dir: &Path,
    max_bytes: u64,
    what: &str,
) -> Vec<std::result::Result<(String, String), FileProblem>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let file = path.display().to_string();
            let problem = |message: String| FileProblem {
                file: file.clone(),
                message,
            };
            match std::fs::metadata(&path) {
                Ok(m) if m.len() > max_bytes => Err(problem(format!(
                    "larger than {} MiB; not {what}",
                    max_bytes >> 20
                ))),
                Ok(_) => match std::fs::read_to_string(&path) {
                    Ok(text) => Ok((file.clone(), text)),
                    Err(e) => Err(problem(e.to_string())),
                },
                Err(e) => Err(problem(e.to_string())),
            }
        })
        .collect()
}
