//! `atelier-cli check`: the compliance checker on a file or standard input.

use std::io::{Read, Write};

use atelier_engine::compliance::{CheckOptions, Checker, MAX_CHECK_BYTES, Verdict};
use atelier_engine::{Error, Home, Result};

use crate::CheckArgs;

pub fn run(home: &Home, args: CheckArgs, as_json: bool) -> Result<()> {
    let text = match args.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => {
            let len = std::fs::metadata(p)
                .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?
                .len();
            if len > MAX_CHECK_BYTES as u64 {
                return Err(Error::invalid(format!(
                    "{} is larger than {} MB",
                    p.display(),
                    MAX_CHECK_BYTES >> 20
                )));
            }
            let bytes = std::fs::read(p)
                .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
            String::from_utf8(bytes)
                .map_err(|_| Error::invalid(format!("{} is not UTF-8 text", p.display())))?
        }
    };
    let checker = Checker::load(&home.compliance_dir())?;
    for p in &checker.problems {
        eprintln!("warning: rule pack {}: {}", p.file, p.message);
    }
    let opts = CheckOptions {
        category: args.category,
        platform: args.platform,
        virtual_host: args.virtual_host,
        trademarks: args.trademarks,
    };
    let report = checker.check(&text, &opts)?;
    let mut out = std::io::stdout().lock();
    if as_json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        // Line and column (in characters) of each finding, like a compiler.
        let mut line_starts = vec![0usize];
        for (i, c) in text.chars().enumerate() {
            if c == '\n' {
                line_starts.push(i + 1);
            }
        }
        let name = args
            .file
            .as_ref()
            .map_or("<stdin>".to_owned(), |p| p.display().to_string());
        for f in &report.findings {
            let line = line_starts.partition_point(|&s| s <= f.start);
            let col = f.start - line_starts[line - 1] + 1;
            let verdict = match f.verdict {
                Verdict::Violation => "violation",
                Verdict::NeedsEvidence => "needs evidence",
            };
            let (reason, basis) = if args.en {
                (&f.reason_en, &f.basis_en)
            } else {
                (&f.reason_zh, &f.basis_zh)
            };
            let _ = writeln!(
                out,
                "{name}:{line}:{col}: {} {} [{}] 「{}」 {reason}",
                f.rule,
                verdict,
                f.severity.as_str(),
                f.matched
            );
            let _ = writeln!(out, "    {basis}");
            if let Some(e) = &f.exception {
                let _ = writeln!(out, "    exception: {e}");
            }
            if !f.suggestions.is_empty() {
                let _ = writeln!(out, "    try: {}", f.suggestions.join(" / "));
            }
        }
        let packs: Vec<String> = report
            .packs
            .iter()
            .map(|p| format!("{} {}", p.id, p.version))
            .collect();
        let _ = writeln!(
            out,
            "{} violation(s), {} needing evidence; packs: {}",
            report.violations(),
            report.findings.len() - report.violations(),
            packs.join(", ")
        );
    }
    let _ = out.flush();
    drop(out);
    if report.violations() > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn read_stdin() -> Result<String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_CHECK_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("cannot read standard input", e))?;
    if buf.len() > MAX_CHECK_BYTES {
        return Err(Error::invalid(format!(
            "standard input is larger than {} MB",
            MAX_CHECK_BYTES >> 20
        )));
    }
    String::from_utf8(buf).map_err(|_| Error::invalid("standard input is not UTF-8 text"))
}
