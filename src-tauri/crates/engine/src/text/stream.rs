//! Turning a stream of token ids into a stream of text that is safe to show at once.
//!
//! Byte-level vocabularies split one Chinese character or emoji over several tokens; decoding
//! them one at a time would show U+FFFD garbage. [`TextStream`] holds tokens back until they
//! decode to whole characters. [`StopStrings`] then holds back text that might be the start of
//! a stop string, so a stop string never flashes on screen before being cut.

use super::tokenizer::TextTokenizer;
use crate::error::Result;

#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Tokens before `prefix` are shown and no longer needed for context.
    prefix: usize,
    /// Tokens before `read` are shown.
    read: usize,
}

impl TextStream {
    /// Adds a token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        // Decode with a little left context: some decoders (SentencePiece's leading space)
        // change a token's text depending on what precedes it.
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let text = now[before.len()..].to_owned();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(text)
        } else {
            Ok(String::new())
        }
    }

    /// What is still held back when the stream ends (an incomplete character shows as U+FFFD:
    /// the model really produced broken bytes).
    pub fn finish(&mut self, tok: &TextTokenizer) -> Result<String> {
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(
            if now.len() > before.len() && now.is_char_boundary(before.len()) {
                now[before.len()..].to_owned()
            } else {
                String::new()
            },
        )
    }
}

#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

/// What [`StopStrings::push`] lets through.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    pub text: String,
    /// A stop string was found: generation ends, `text` is what came before it.
    pub stopped: bool,
}

impl StopStrings {
    pub fn new(stops: &[String]) -> StopStrings {
        StopStrings {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Released {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let text = self.pending[..at].to_owned();
            self.pending.clear();
            return Released {
                text,
                stopped: true,
            };
        }
        // Keep the longest tail that could still grow into a stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let cut = self.pending.len() - hold;
        let text = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        Released {
            text,
            stopped: false,
        }
    }

    /// The held-back tail, when the stream ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_over_pushes_is_cut_and_never_shown() {
        let mut s = StopStrings::new(&["###".into()]);
        assert_eq!(
            s.push("Hello #"),
            Released {
                text: "Hello ".into(),
                stopped: false
            }
        );
        assert_eq!(
            s.push("#"),
            Released {
                text: "".into(),
                stopped: false
            }
        );
        assert_eq!(
            s.push("# more"),
            Released {
                text: "".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn false_alarm_is_released() {
        let mut s = StopStrings::new(&["END".into()]);
        assert_eq!(s.push("an E").text, "an ");
        assert_eq!(s.push("nd").text, "End");
        let mut s = StopStrings::new(&["END".into()]);
        assert_eq!(s.push("EN").text, "");
        assert_eq!(s.push("JOY").text, "ENJOY");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn chinese_stop_strings_respect_char_boundaries() {
        let mut s = StopStrings::new(&["结束语".into()]);
        assert_eq!(s.push("你好结").text, "你好");
        assert_eq!(s.push("果").text, "结果");
        assert_eq!(s.push("结束").text, "");
        assert_eq!(s.finish(), "结束");
    }
}
