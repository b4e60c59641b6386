//! Short-word search for Chinese (and other non-ASCII scripts without spaces).
//!
//! The trigram index cannot answer a 1- or 2-character word, and a scan of every row is slow
//! when the word is rare. `generations_bigrams` indexes, for each run of non-ASCII letters and
//! digits, every overlapping pair of characters plus the run's last character alone, as
//! space-separated tokens (`口红显白` → `口红 红显 显白 白`). A 2-character word is then one token
//! lookup and a 1-character word a prefix query (`口*`): every occurrence of a character is either
//! followed by another one of its run (a pair starting with it) or ends the run.
//!
//! The tokens are made by the SQL function `atelier_bigrams`, registered on every connection the
//! store opens, so the table's triggers can call it.

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

/// True for the characters the bigram index covers.
pub(crate) fn indexed(c: char) -> bool {
    !c.is_ascii() && c.is_alphanumeric()
}

/// Whether a search word can be answered by the bigram index (1–2 indexed characters).
pub(crate) fn answers(term: &str) -> bool {
    let n = term.chars().count();
    (1..=2).contains(&n) && term.chars().all(indexed)
}

/// The FTS5 expression for a short word: `"口红"` or `"口"*`.
pub(crate) fn match_expr(term: &str) -> String {
    if term.chars().count() == 1 {
        format!("\"{term}\"*")
    } else {
        format!("\"{term}\"")
    }
}

pub(crate) fn tokens(text: &str) -> String {
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in text.chars() {
        if indexed(c) {
            if let Some(p) = prev {
                out.push(p);
                out.push(c);
                out.push(' ');
            }
            prev = Some(c);
        } else if let Some(p) = prev.take() {
            out.push(p);
            out.push(' ');
        }
    }
    if let Some(p) = prev {
        out.push(p);
    }
    out
}

pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "atelier_bigrams",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let text: Option<String> = ctx.get(0)?;
            Ok(text.map(|t| tokens(&t)).unwrap_or_default())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_the_last_character_of_each_run() {
        assert_eq!(tokens("口红显白"), "口红 红显 显白 白");
        assert_eq!(tokens("买 口红，送A小样"), "买 口红 红 送 小样 样");
        assert_eq!(tokens("abc 123"), "");
        assert_eq!(tokens("单"), "单");
        assert_eq!(tokens(""), "");
    }

    #[test]
    fn which_words_it_answers() {
        assert!(answers("口红"));
        assert!(answers("红"));
        assert!(!answers("A股"), "mixed with ASCII: LIKE");
        assert!(!answers("！"), "punctuation: LIKE");
        assert!(!answers("保湿霜"), "3+ characters: trigram index");
        assert_eq!(match_expr("红"), "\"红\"*");
        assert_eq!(match_expr("口红"), "\"口红\"");
    }
}
