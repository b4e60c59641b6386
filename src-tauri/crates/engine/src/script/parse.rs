//! Reading what the model wrote for one segment. The prompt asks for labelled lines:
//!
//! ```text
//! 主播：…        (the host's line; several allowed)
//! 备选：…        (an alternate wording of the host line above it)
//! 副播：…        (the assistant host)
//! 字幕：…        (screen text)
//! ```
//!
//! Small models decorate (`**主播**:`, `- 主播：`, `1. 主播:`, English labels, full- or half-width
//! colons); all of that is accepted. Unlabelled prose is not guessed into host lines: a segment
//! without a single labelled host line is malformed, and the caller retries it once.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostLine {
    pub text: String,
    /// Alternate wordings (1–2 asked for).
    pub alts: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentText {
    pub host: Vec<HostLine>,
    pub assistant: Vec<String>,
    pub screen: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Label {
    Host,
    Alt,
    Assistant,
    Screen,
}

/// Longest line kept (characters): beyond it the model is rambling.
const MAX_LINE_CHARS: usize = 400;

fn label_of(line: &str) -> Option<(Label, &str)> {
    // Strip list markers and emphasis: "- ", "1. ", "1、", "**", "【】".
    let mut s = line.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '-' | '*' | '•' | '·' | '>' | '#')
    });
    let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 && s[digits..].starts_with(['.', '、', ')', '）']) {
        s = s[digits + 1..].trim_start();
    }
    let s = s.trim_start_matches(['*', '【', '[', '「']);
    let (head, rest) = s.split_once(['：', ':'])?;
    let head = head.trim().trim_end_matches(['*', '】', ']', '」']).trim();
    let label = match head.to_lowercase().as_str() {
        "主播" | "主持" | "主持人" | "主播台词" | "host" => Label::Host,
        "备选" | "备用" | "备选说法" | "替换" | "alt" | "alternate" | "alternative" => {
            Label::Alt
        }
        "副播" | "助播" | "副播台词" | "assistant" => Label::Assistant,
        "字幕" | "屏幕" | "屏幕文字" | "贴片" | "screen" | "screen text" => Label::Screen,
        _ => return None,
    };
    let text = rest.trim().trim_start_matches(['*', ' ']).trim();
    Some((label, text))
}

fn clean(text: &str) -> String {
    let t = text.trim().trim_matches(['"', '“', '”', '「', '」']).trim();
    t.chars().take(MAX_LINE_CHARS).collect()
}

fn is_bracketed(t: &str) -> bool {
    let pairs = [
        ('(', ')'),
        ('（', '）'),
        ('[', ']'),
        ('【', '】'),
        ('<', '>'),
    ];
    pairs.iter().any(|(a, b)| {
        t.starts_with(*a)
            && t.ends_with(*b)
            && t[a.len_utf8()..t.len() - b.len_utf8()]
                .chars()
                .all(|c| c != *b)
    })
}

/// Parses one segment's output; an error says what was missing (the caller retries once, then
/// keeps a placeholder).
pub fn segment(output: &str) -> Result<SegmentText> {
    let mut out = SegmentText::default();
    for line in output.lines() {
        let Some((label, text)) = label_of(line) else {
            continue;
        };
        let text = clean(text);
        // Empty, or wholly in brackets: a stage direction or the format's description echoed
        // back (“(a host line)”), not something to say.
        if text.is_empty() || is_bracketed(&text) {
            continue;
        }
        match label {
            Label::Host => out.host.push(HostLine {
                text,
                alts: Vec::new(),
            }),
            Label::Alt => match out.host.last_mut() {
                Some(h) if h.alts.len() < 3 => h.alts.push(text),
                Some(_) => {}
                // An alternate before any host line is the best host line there is.
                None => out.host.push(HostLine {
                    text,
                    alts: Vec::new(),
                }),
            },
            Label::Assistant => out.assistant.push(text),
            Label::Screen => out.screen.push(text),
        }
    }
    if out.host.is_empty() {
        return Err(Error::invalid(
            "the model wrote no host line (主播：…) for this segment",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_lines_in_the_asked_format() {
        let s = segment("主播：家人们，冬天手冷的扣 1！\n备选：手一到冬天就冰的举个手\n副播：3 号链接！\n字幕：冬日暖手").unwrap();
        assert_eq!(
            s.host,
            [HostLine {
                text: "家人们，冬天手冷的扣 1！".into(),
                alts: vec!["手一到冬天就冰的举个手".into()]
            }]
        );
        assert_eq!(
            (s.assistant.as_slice(), s.screen.as_slice()),
            (&["3 号链接！".to_owned()][..], &["冬日暖手".to_owned()][..])
        );
    }

    #[test]
    fn decorations_small_models_add_are_accepted() {
        let s = segment("好的，以下是脚本：\n1. **主播**: “看这里”\n- 备选: 来看\n* 【副播】：对！\nHost: second line\n\n### 屏幕文字：限时").unwrap();
        assert_eq!(
            s.host.iter().map(|h| h.text.as_str()).collect::<Vec<_>>(),
            ["看这里", "second line"]
        );
        assert_eq!(s.host[0].alts, ["来看"]);
        assert_eq!(s.assistant, ["对！"]);
        assert_eq!(s.screen, ["限时"]);
    }

    #[test]
    fn malformed_or_empty_output_is_an_error() {
        for bad in [
            "",
            "   \n",
            "这是一段没有标签的台词。",
            "副播：只有副播\n字幕：x",
            "主播：   ",
            "Host: (a host line)\n主播：（主播台词）",
        ] {
            let e = segment(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid_input", "{bad:?}");
        }
    }

    #[test]
    fn rambling_lines_are_cut_and_extra_alternates_dropped() {
        let long = "啊".repeat(1000);
        let s = segment(&format!("主播：{long}\n备选：a\n备选：b\n备选：c\n备选：d")).unwrap();
        assert_eq!(s.host[0].text.chars().count(), MAX_LINE_CHARS);
        assert_eq!(s.host[0].alts, ["a", "b", "c"]);
    }
}
