//! How long a line takes to say: the speech-rate model of the live-script studio.
//!
//! A tempo is Chinese characters per minute (讲解 180, 标准带货 220, 促单 270). A line costs one
//! unit per CJK character and 1.5 units per Latin word or number group; punctuation adds pauses
//! (，、；: 0.15 s; 。！？: 0.35 s), a line break 0.6 s, and explicit pause marks such as
//! `[停顿2s]` / `[pause 1.5s]` their own length. Cue markup in 【】 or other [] is not spoken.

use std::sync::LazyLock;

use regex::Regex;

/// Tempo presets in characters per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tempo {
    /// 讲解: explaining, demos.
    Explain,
    /// 标准带货: the usual selling pace.
    Standard,
    /// 促单: closing, flash sales.
    Push,
}

impl Tempo {
    pub fn chars_per_min(self) -> f64 {
        match self {
            Tempo::Explain => 180.0,
            Tempo::Standard => 220.0,
            Tempo::Push => 270.0,
        }
    }
}

/// The slowest and fastest tempo accepted (characters per minute).
pub const MIN_CHARS_PER_MIN: f64 = 60.0;
pub const MAX_CHARS_PER_MIN: f64 = 420.0;

const SHORT_PAUSE: f64 = 0.15;
const LONG_PAUSE: f64 = 0.35;
const LINE_BREAK: f64 = 0.6;
/// A Latin word or a group of digits takes about as long as 1.5 Chinese characters.
const WORD_UNITS: f64 = 1.5;

static PAUSE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)[\[【]\s*(?:停顿|停|pause)\s*([0-9]+(?:\.[0-9]+)?)\s*(?:s|秒)?\s*[\]】]")
        .expect("pause pattern")
});
static MARKUP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"【[^】]*】|\[[^\]]*\]").expect("markup pattern"));

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// What a line is made of, for the estimate (and for showing the user why).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Spoken {
    pub cjk: usize,
    /// Latin words and digit groups.
    pub words: usize,
    pub short_pauses: usize,
    pub long_pauses: usize,
    pub line_breaks: usize,
    /// Seconds of explicit pause marks.
    pub marked_pause_secs: f64,
}

impl Spoken {
    pub fn of(text: &str) -> Spoken {
        let mut s = Spoken::default();
        for cap in PAUSE.captures_iter(text) {
            s.marked_pause_secs += cap[1].parse::<f64>().unwrap_or(0.0).min(60.0);
        }
        let unpaused = PAUSE.replace_all(text, "");
        let text = MARKUP.replace_all(&unpaused, "");
        let mut in_word = false;
        for line in text.trim().split('\n') {
            for c in line.chars() {
                let word_char =
                    c.is_ascii_alphanumeric() || (in_word && matches!(c, '.' | '\'' | '-' | '%'));
                if word_char {
                    if !in_word {
                        s.words += 1;
                    }
                    in_word = true;
                    continue;
                }
                in_word = false;
                if is_cjk(c) {
                    s.cjk += 1;
                } else if matches!(c, '，' | '、' | '；' | ',' | ';' | '：' | ':') {
                    s.short_pauses += 1;
                } else if matches!(c, '。' | '！' | '？' | '!' | '?' | '…') {
                    s.long_pauses += 1;
                }
            }
            in_word = false;
        }
        s.line_breaks = text
            .trim()
            .split('\n')
            .filter(|l| !l.trim().is_empty())
            .count()
            .saturating_sub(1);
        s
    }

    /// Seconds at `chars_per_min` (clamped to the accepted range).
    pub fn secs(&self, chars_per_min: f64) -> f64 {
        let rate = chars_per_min.clamp(MIN_CHARS_PER_MIN, MAX_CHARS_PER_MIN) / 60.0;
        let units = self.cjk as f64 + self.words as f64 * WORD_UNITS;
        units / rate
            + self.short_pauses as f64 * SHORT_PAUSE
            + self.long_pauses as f64 * LONG_PAUSE
            + self.line_breaks as f64 * LINE_BREAK
            + self.marked_pause_secs
    }
}

/// Estimated seconds to say `text` at `chars_per_min`.
pub fn estimate_secs(text: &str, chars_per_min: f64) -> f64 {
    Spoken::of(text).secs(chars_per_min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn chinese_characters_at_the_tempo() {
        // 22 characters at 220/min = 6 s.
        let t = "这款保温杯真的很适合冬天带去上班的朋友们用啊";
        assert_eq!(Spoken::of(t).cjk, 22);
        assert!(close(estimate_secs(t, 220.0), 6.0));
        assert!(close(
            estimate_secs(t, Tempo::Push.chars_per_min()),
            22.0 / 4.5
        ));
    }

    #[test]
    fn latin_words_and_numbers_count_one_and_a_half() {
        let s = Spoken::of("iPhone 15 Pro 只要 5999.5 元");
        assert_eq!((s.words, s.cjk), (4, 3));
        assert!(close(s.secs(180.0), (3.0 + 6.0) / 3.0));
        // A percentage or a decimal is one group.
        assert_eq!(Spoken::of("99.9%").words, 1);
    }

    #[test]
    fn punctuation_line_breaks_and_marked_pauses_add_time() {
        let s = Spoken::of("好，来！\n[停顿2s]看这里。【中控：改价】");
        assert_eq!(
            (s.cjk, s.short_pauses, s.long_pauses, s.line_breaks),
            (5, 1, 2, 1)
        );
        assert!(close(s.marked_pause_secs, 2.0));
        let expected = 5.0 / (240.0 / 60.0) + 0.15 + 2.0 * 0.35 + 0.6 + 2.0;
        assert!(
            close(s.secs(240.0), expected),
            "{} vs {expected}",
            s.secs(240.0)
        );
        assert!(close(estimate_secs("[pause 1.5s]", 220.0), 1.5));
    }

    #[test]
    fn cue_markup_is_not_spoken_and_odd_input_is_harmless() {
        assert_eq!(Spoken::of("【中控：上架 3 号链接】[SCREEN: 限时]").cjk, 0);
        assert!(close(estimate_secs("", 220.0), 0.0));
        assert!(close(estimate_secs("\n\n  \n", 220.0), 0.0));
        // Out-of-range tempos are clamped, never a division by zero.
        assert!(estimate_secs("你好", 0.0).is_finite());
        assert!(close(estimate_secs("[停顿99999s]", 220.0), 60.0));
    }
}
