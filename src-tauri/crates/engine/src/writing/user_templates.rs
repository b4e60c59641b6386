//! The user's own templates: a shipped template is never edited in place; the user duplicates
//! it (a new id, names marked as a copy), edits the TOML of the copy, and saves it into
//! `$ATELIER_HOME/templates/<id>.toml`. Saving validates the whole file first (a broken copy is
//! refused with the reason and nothing is written) and writes atomically.

use std::path::{Path, PathBuf};

use super::templates::{BUILTIN_TEMPLATES, PromptContext, Template, load};
use crate::error::{Error, Result};
use crate::fsutil;

/// Largest template file accepted (the loader uses the same limit).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// A template's TOML text, and whether it is one of the user's files (which may be edited and
/// deleted) rather than a shipped one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TemplateSource {
    pub id: String,
    pub text: String,
    pub user: bool,
}

fn user_files(dir: &Path) -> Vec<(PathBuf, String)> {
    fsutil::read_toml_files(dir, MAX_TEMPLATE_BYTES as u64, "a template")
        .into_iter()
        .filter_map(|f| f.ok())
        .map(|(name, text)| (PathBuf::from(name), text))
        .collect()
}

/// The user's files that define `id` (normally one: `<id>.toml`).
fn user_files_with_id(dir: &Path, id: &str) -> Vec<(PathBuf, String)> {
    user_files(dir)
        .into_iter()
        .filter(|(p, text)| {
            Template::parse(&p.display().to_string(), text).is_ok_and(|t| t.id == id)
        })
        .collect()
}

fn builtin_with_id(id: &str) -> Option<&'static str> {
    BUILTIN_TEMPLATES
        .iter()
        .find(|(name, text)| Template::parse(name, text).is_ok_and(|t| t.id == id))
        .map(|(_, t)| *t)
}

/// The TOML of the template the catalogue uses for `id` (a user's file wins over a shipped one,
/// as in [`load`]).
pub fn source(dir: &Path, id: &str) -> Result<TemplateSource> {
    if let Some((_, text)) = user_files_with_id(dir, id).pop() {
        return Ok(TemplateSource {
            id: id.to_owned(),
            text,
            user: true,
        });
    }
    builtin_with_id(id)
        .map(|text| TemplateSource {
            id: id.to_owned(),
            text: text.to_owned(),
            user: false,
        })
        .ok_or_else(|| Error::invalid(format!("there is no template “{id}”")))
}

/// A copy of template `id` ready to edit: a free id (`<id>-copy`, `<id>-copy-2`…) and names
/// marked as a copy; comments and layout of the original are kept. Nothing is written yet.
pub fn duplicate(dir: &Path, id: &str) -> Result<TemplateSource> {
    let original = source(dir, id)?;
    let mut doc: toml_edit::DocumentMut =
        original.text.parse().map_err(|e: toml_edit::TomlError| {
            Error::invalid(format!("template {id} does not parse: {}", e.message()))
        })?;
    let (taken, _) = load(Some(dir));
    let base = format!("{id}-copy");
    let new_id = std::iter::once(base.clone())
        .chain((2..).map(|n| format!("{base}-{n}")))
        .find(|c| !taken.iter().any(|t| &t.id == c))
        .unwrap_or(base);
    let name = |key: &str, suffix: &str, doc: &toml_edit::DocumentMut| {
        doc.get(key)
            .and_then(|v| v.as_str())
            .map(|s| format!("{s}{suffix}"))
            .unwrap_or_default()
    };
    let zh = name("name_zh", "（副本）", &doc);
    let en = name("name_en", " (copy)", &doc);
    doc["id"] = toml_edit::value(new_id.clone());
    doc["name_zh"] = toml_edit::value(zh);
    doc["name_en"] = toml_edit::value(en);
    Ok(TemplateSource {
        id: new_id,
        text: doc.to_string(),
        user: true,
    })
}

/// Validates `text` as a template and saves it as `<id>.toml` in the user's folder, replacing
/// the user's template `previous_id` when given (an edit that may rename it). Refuses an id that
/// a shipped template or another of the user's templates already has.
pub fn save(dir: &Path, text: &str, previous_id: Option<&str>) -> Result<Template> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::invalid(format!(
            "a template file may be at most {} KiB",
            MAX_TEMPLATE_BYTES >> 10
        )));
    }
    let t = Template::parse("(edited)", text)?;
    // Render with the sample values so a prompt that fails only at render time is caught now.
    preview_parsed(&t)?;
    if builtin_with_id(&t.id).is_some() {
        return Err(Error::invalid(format!(
            "“{}” is the id of a shipped template; give your copy another id",
            t.id
        )));
    }
    if previous_id != Some(t.id.as_str()) && !user_files_with_id(dir, &t.id).is_empty() {
        return Err(Error::Conflict(format!(
            "you already have a template with the id “{}”",
            t.id
        )));
    }
    let path = dir.join(format!("{}.toml", t.id));
    fsutil::write_atomic(&path, text.as_bytes())?;
    // Older files for the same template (a rename, or a file named otherwise) would shadow or
    // duplicate it: remove them only after the new file is safely written.
    let mut stale = user_files_with_id(dir, &t.id);
    if let Some(prev) = previous_id.filter(|p| *p != t.id) {
        stale.extend(user_files_with_id(dir, prev));
    }
    for (p, _) in stale.into_iter().filter(|(p, _)| p != &path) {
        std::fs::remove_file(&p)
            .map_err(|e| Error::io(format!("cannot remove {}", p.display()), e))?;
    }
    Ok(Template {
        source: path.display().to_string(),
        ..t
    })
}

/// Deletes the user's template `id` (a shipped one cannot be deleted).
pub fn delete(dir: &Path, id: &str) -> Result<()> {
    let files = user_files_with_id(dir, id);
    if files.is_empty() {
        return Err(Error::invalid(format!(
            "“{id}” is not one of your templates; shipped templates cannot be deleted"
        )));
    }
    for (p, _) in files {
        std::fs::remove_file(&p)
            .map_err(|e| Error::io(format!("cannot remove {}", p.display()), e))?;
    }
    Ok(())
}

/// The prompt `text` renders with its inputs' sample values (or defaults): lets the editor show
/// what the model will be asked before the template is saved.
pub fn preview(text: &str) -> Result<String> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::invalid(format!(
            "a template file may be at most {} KiB",
            MAX_TEMPLATE_BYTES >> 10
        )));
    }
    preview_parsed(&Template::parse("(edited)", text)?)
}

fn preview_parsed(t: &Template) -> Result<String> {
    let mut values = t.samples();
    // A required input without a sample gets a placeholder so the preview still renders.
    for i in t
        .inputs
        .iter()
        .filter(|i| i.required && i.default.is_none())
    {
        values.entry(i.id.clone()).or_insert_with(|| {
            i.options
                .first()
                .cloned()
                .unwrap_or_else(|| format!("<{}>", i.label_zh))
        });
    }
    let ctx = PromptContext {
        tone: t.tones.first().cloned(),
        ..Default::default()
    };
    t.render(&values, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_gets_a_free_id_and_copy_names_and_keeps_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let copy = duplicate(dir.path(), "xhs-seeding").unwrap();
        assert_eq!(copy.id, "xhs-seeding-copy");
        let t = Template::parse("copy", &copy.text).unwrap();
        assert_eq!(t.id, "xhs-seeding-copy");
        assert!(
            t.name_zh.ends_with("（副本）") && t.name_en.ends_with(" (copy)"),
            "{} / {}",
            t.name_zh,
            t.name_en
        );
        let original = source(dir.path(), "xhs-seeding").unwrap();
        assert!(!original.user);
        assert_eq!(
            t.prompt,
            Template::parse("o", &original.text).unwrap().prompt
        );

        save(dir.path(), &copy.text, None).unwrap();
        assert!(dir.path().join("xhs-seeding-copy.toml").is_file());
        // The next duplicate does not collide with the saved one.
        assert_eq!(
            duplicate(dir.path(), "xhs-seeding").unwrap().id,
            "xhs-seeding-copy-2"
        );
        let (all, problems) = load(Some(dir.path()));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(
            all.iter()
                .any(|t| t.id == "xhs-seeding-copy" && t.source.ends_with("xhs-seeding-copy.toml"))
        );
        assert!(source(dir.path(), "xhs-seeding-copy").unwrap().user);
    }

    #[test]
    fn an_edit_that_renames_replaces_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let copy = duplicate(dir.path(), "slogan").unwrap();
        save(dir.path(), &copy.text, None).unwrap();
        let renamed = copy
            .text
            .replace("id = \"slogan-copy\"", "id = \"my-slogan\"");
        assert_ne!(renamed, copy.text);
        save(dir.path(), &renamed, Some("slogan-copy")).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("my-slogan.toml")]);
    }

    #[test]
    fn broken_or_clashing_copies_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let copy = duplicate(dir.path(), "slogan").unwrap();
        let cases = [
            (copy.text.replace("group = \"", "group = \"x"), "group"),
            (
                copy.text
                    .replace("prompt = '''", "prompt = '''{{ nowhere }}"),
                "nowhere",
            ),
            (
                copy.text.replace("id = \"slogan-copy\"", "id = \"slogan\""),
                "shipped",
            ),
            ("id = [".to_owned(), "template"),
        ];
        for (text, needle) in cases {
            let e = save(dir.path(), &text, None).unwrap_err();
            assert_eq!(e.kind(), "invalid_input");
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        save(dir.path(), &copy.text, None).unwrap();
        let e = save(dir.path(), &copy.text, None).unwrap_err();
        assert_eq!(e.kind(), "conflict", "{e}");
        // Saving over itself (an edit) is fine.
        save(dir.path(), &copy.text, Some("slogan-copy")).unwrap();
    }

    #[test]
    fn only_the_users_templates_can_be_deleted() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            delete(dir.path(), "slogan").unwrap_err().kind(),
            "invalid_input"
        );
        let copy = duplicate(dir.path(), "slogan").unwrap();
        save(dir.path(), &copy.text, None).unwrap();
        delete(dir.path(), "slogan-copy").unwrap();
        assert!(
            !load(Some(dir.path()))
                .0
                .iter()
                .any(|t| t.id == "slogan-copy")
        );
    }

    #[test]
    fn the_preview_renders_the_samples() {
        let dir = tempfile::tempdir().unwrap();
        let s = source(dir.path(), "xhs-seeding").unwrap();
        let p = preview(&s.text).unwrap();
        let t = Template::parse("t", &s.text).unwrap();
        let sample = t.inputs.iter().find_map(|i| i.sample.clone()).unwrap();
        assert!(p.contains(sample.trim()), "{p}");
        assert_eq!(preview("id = 1").unwrap_err().kind(), "invalid_input");
    }
}
