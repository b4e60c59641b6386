//! Normalisation before matching, with a map back to the original text.
//!
//! Sellers (and models) write the same claim many ways: full-width `ＴＯＰ１`, traditional
//! `最佳`→`最佳`, look-alikes (`蕞佳`), spacers (`最·佳`, `最 佳`), circled digits (`第①`). Rules
//! are written once, in simplified lower-case text; the text is brought to that form first and
//! every normalised character remembers which original character it came from, so a finding's
//! span lands on what the user wrote.

/// Characters sellers use to look like another one, mapped to it. Only unambiguous evasions:
/// a character with a common meaning of its own stays as it is.
const LOOKALIKES: [(char, char); 5] = [
    ('蕞', '最'),
    ('冣', '最'),
    ('㝡', '最'),
    ('苐', '第'),
    ('弚', '第'),
];

/// Put between Chinese characters to break a word apart; removed there.
fn is_spacer(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{3000}'
            | '\u{00a0}'
            | '·'
            | '•'
            | '・'
            | '‧'
            | '-'
            | '_'
            | '*'
            | '.'
            | '|'
            | '/'
            | '~'
            | '^'
            | '丶'
            | '`'
            | '\''
            | '"'
            | '\u{200b}'
            | '\u{200c}'
            | '\u{200d}'
    )
}

/// Traditional → simplified, one character to one character (so offsets stay put), as a direct
/// table over the CJK blocks built once from `fast2s`'s mapping. fast2s's few two-character
/// context rules (乾隆, 憑藉) do not matter for matching advertising words.
const T2S_FROM: u32 = 0x3400;
const T2S_TO: u32 = 0x9FFF;

fn t2s_table() -> &'static [char] {
    static TABLE: std::sync::OnceLock<Vec<char>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (T2S_FROM..=T2S_TO)
            .map(|u| {
                let c = char::from_u32(u).unwrap_or(' ');
                let mut buf = [0u8; 4];
                let s = fast2s::convert(c.encode_utf8(&mut buf));
                let mut it = s.chars();
                match (it.next(), it.next()) {
                    (Some(t), None) => t,
                    _ => c,
                }
            })
            .collect()
    })
}

fn simplified(table: &[char], c: char) -> char {
    let u = c as u32;
    if (T2S_FROM..=T2S_TO).contains(&u) {
        table[(u - T2S_FROM) as usize]
    } else {
        c
    }
}

fn is_han(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FFFF)
}

/// How far a sentence reaches around a match, in bytes (about 100 Chinese characters).
pub const SENTENCE_REACH: usize = 300;

/// Text in matching form, and where each of its bytes came from.
#[derive(Debug)]
pub struct Normalized<'a> {
    pub text: String,
    original: &'a str,
    /// For each byte of `text`, the byte offset of the original character it came from.
    origin: Vec<u32>,
}

/// A span of the original text in the three units callers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Unicode scalar values.
    pub start: usize,
    pub end: usize,
    pub start_utf16: usize,
    pub end_utf16: usize,
    pub start_byte: usize,
    pub end_byte: usize,
}

impl<'a> Normalized<'a> {
    pub fn new(original: &'a str) -> Normalized<'a> {
        let mut text = String::with_capacity(original.len());
        let mut origin: Vec<u32> = Vec::with_capacity(original.len());
        let simplify = t2s_table();
        let mut chars = original
            .char_indices()
            .map(|(b, c)| (b, simplified(simplify, c)))
            .peekable();
        let mut last_emitted: Option<char> = None;
        while let Some((byte, c)) = chars.next() {
            if is_spacer(c) {
                // A run of spacers between two Chinese characters disappears (最·佳); so does
                // white space beside one (100% 纯棉, 加 vx), which Chinese does not use.
                let mut ahead = chars.clone();
                let mut white = c.is_whitespace() || matches!(c, '\u{200b}'..='\u{200d}');
                let mut run = 0;
                while let Some(&(_, s)) = ahead.peek().filter(|(_, s)| is_spacer(*s)) {
                    white &= s.is_whitespace() || matches!(s, '\u{200b}'..='\u{200d}');
                    ahead.next();
                    run += 1;
                }
                let before = last_emitted.is_some_and(is_han);
                let after = ahead.peek().is_some_and(|&(_, s)| is_han(s));
                if (before && after) || (white && (before || after)) {
                    for _ in 0..run {
                        chars.next();
                    }
                    continue;
                }
            }

            let origin_at = byte as u32;
            let mut emit = |ch: char| {
                text.push(ch);
                origin.extend(std::iter::repeat_n(origin_at, ch.len_utf8()));
            };
            let code = c as u32;
            match c {
                // Full-width ASCII and the ideographic space.
                '\u{FF01}'..='\u{FF5E}' => emit(
                    char::from_u32(code - 0xFEE0)
                        .unwrap_or(c)
                        .to_ascii_lowercase(),
                ),
                '\u{3000}' => emit(' '),
                // Circled and parenthesised numbers ①–⑳, ⑴–⒇, ⒈–⒛.
                '\u{2460}'..='\u{249B}' => {
                    let n = (code - 0x2460) % 20 + 1;
                    if n >= 10 {
                        emit(char::from_digit(n / 10, 10).unwrap_or('1'));
                    }
                    emit(char::from_digit(n % 10, 10).unwrap_or('0'));
                }
                '\u{24EA}' => emit('0'),
                _ if c.is_ascii() => emit(c.to_ascii_lowercase()),
                _ => emit(
                    LOOKALIKES
                        .iter()
                        .find(|(from, _)| *from == c)
                        .map_or(c, |&(_, to)| to),
                ),
            }
            last_emitted = Some(c);
        }
        Normalized {
            text,
            original,
            origin,
        }
    }

    /// The original byte span of normalised bytes `start..end` (a non-empty match).
    pub fn original_bytes(&self, start: usize, end: usize) -> (usize, usize) {
        let first = self.origin[start] as usize;
        let last = self.origin[end.max(start + 1) - 1] as usize;
        let last_len = self.original[last..]
            .chars()
            .next()
            .map_or(0, char::len_utf8);
        (first, last + last_len)
    }

    /// Spans in all three units for byte spans sorted by start: one pass over the text.
    pub fn spans(&self, byte_spans: &[(usize, usize)]) -> Vec<Span> {
        let mut out = Vec::with_capacity(byte_spans.len());
        let (mut at_byte, mut at_char, mut at_u16) = (0usize, 0usize, 0usize);
        let mut advance = |to: usize| {
            if to < at_byte {
                // Out of order: count again from the start (not reached for sorted input).
                (at_byte, at_char, at_u16) = (0, 0, 0);
            }
            for c in self.original[at_byte..to].chars() {
                at_char += 1;
                at_u16 += c.len_utf16();
            }
            at_byte = to;
            (at_char, at_u16)
        };
        for &(s, e) in byte_spans {
            let (start, start_utf16) = advance(s);
            let (mut end, mut end_utf16) = (start, start_utf16);
            for c in self.original[s..e].chars() {
                end += 1;
                end_utf16 += c.len_utf16();
            }
            out.push(Span {
                start,
                end,
                start_utf16,
                end_utf16,
                start_byte: s,
                end_byte: e,
            });
        }
        out
    }

    /// Bounds (normalised bytes) of the sentence holding `start..end`, at most
    /// [`SENTENCE_REACH`] bytes either side (text without punctuation stays linear to check).
    pub fn sentence(&self, start: usize, end: usize) -> (usize, usize) {
        let is_end =
            |c: char| matches!(c, '。' | '！' | '？' | '!' | '?' | '；' | ';' | '\n' | '…');
        let t = &self.text;
        let mut lo = start.saturating_sub(SENTENCE_REACH);
        while !t.is_char_boundary(lo) {
            lo += 1;
        }
        let mut hi = (end + SENTENCE_REACH).min(t.len());
        while !t.is_char_boundary(hi) {
            hi -= 1;
        }
        let from = t[lo..start]
            .char_indices()
            .rev()
            .find(|&(_, c)| is_end(c))
            .map_or(lo, |(i, c)| lo + i + c.len_utf8());
        let to = t[end..hi]
            .char_indices()
            .find(|&(_, c)| is_end(c))
            .map_or(hi, |(i, _)| end + i);
        (from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Normalized::new(s).text
    }

    #[test]
    fn evasions_become_the_plain_word() {
        assert_eq!(norm("蕞佳"), "最佳");
        assert_eq!(norm("最·佳"), "最佳");
        assert_eq!(norm("最 - 佳 选择"), "最佳选择");
        assert_eq!(norm("ＴＯＰ１"), "top1");
        assert_eq!(norm("第①"), "第1");
        assert_eq!(norm("最佳品質"), "最佳品质");
        assert_eq!(norm("銷量第一"), "销量第一");
    }

    #[test]
    fn spaces_between_latin_words_stay_and_go_beside_chinese() {
        assert_eq!(norm("No 1 brand"), "no 1 brand");
        assert_eq!(norm("好 ok"), "好ok");
        assert_eq!(norm("100% 纯棉"), "100%纯棉");
        assert_eq!(norm("3.5 - 4"), "3.5 - 4");
    }

    #[test]
    fn spans_map_back_through_every_step() {
        let original = "🎉全網蕞·佳！ＴＯＰ１";
        let n = Normalized::new(original);
        let at = n.text.find("最佳").unwrap();
        let (b0, b1) = n.original_bytes(at, at + "最佳".len());
        let s = n.spans(&[(b0, b1)])[0];
        let chars: Vec<char> = original.chars().collect();
        assert_eq!(chars[s.start..s.end].iter().collect::<String>(), "蕞·佳");
        assert_eq!(&original[s.start_byte..s.end_byte], "蕞·佳");
        // The emoji is two UTF-16 units, one scalar value.
        assert_eq!((s.start, s.start_utf16), (3, 4));
        let at = n.text.find("top1").unwrap();
        let (b0, b1) = n.original_bytes(at, at + 4);
        let s = n.spans(&[(b0, b1)])[0];
        assert_eq!(&original[s.start_byte..s.end_byte], "ＴＯＰ１");
    }
}
