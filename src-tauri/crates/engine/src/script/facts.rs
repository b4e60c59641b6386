//! Numbers the model wrote that the product facts do not contain: prices, stock, percentages,
//! certificate numbers, durations. A script may only state facts the model was given, so each
//! such number is flagged on its line for the user to confirm or remove.
//!
//! What counts as a fact-like number: any group of two or more digits, any number with a
//! decimal point or a unit (元、%、件、天、年…), and Chinese numerals followed by a unit
//! (三年、五折、两件). Single digits without a unit (扣 1、3-2-1) are interaction, not facts.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

static ARABIC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[0-9０-９]+(?:[.．][0-9０-９]+)?(\s*(?:%|％|元|块|折|件|单|万|千|百|天|年|月|小时|分钟|秒|毫升|ml|ML|g|克|斤|kg|KG|瓶|盒|支|片|号|人|次|倍|度|℃|岁|mAh|cm|mm|m|W|w))?").expect("number pattern")
});
static CHINESE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[零一二两三四五六七八九十百千万]+(?:点[零一二三四五六七八九]+)?\s*(%|元|块|折|件|单|天|年|个月|小时|分钟|秒|毫升|克|斤|瓶|盒|支|片|倍|度|岁)").expect("chinese number pattern")
});

/// A number in a line that is not among the facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownNumber {
    /// As written.
    pub text: String,
    /// Offsets in UTF-16 units (for the editor).
    pub start_utf16: usize,
    pub end_utf16: usize,
}

fn half_width(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '０'..='９' => char::from_u32(c as u32 - 0xFF10 + 0x30).unwrap_or(c),
            '．' => '.',
            _ => c,
        })
        .collect()
}

/// The value of a Chinese numeral like 三、十五、两百、一万二 (small and simple forms).
fn chinese_value(s: &str) -> Option<f64> {
    let digit = |c: char| {
        "零一二三四五六七八九"
            .chars()
            .position(|d| d == c)
            .map(|d| d as f64)
            .or((c == '两').then_some(2.0))
    };
    let (int, frac) = s.split_once('点').unwrap_or((s, ""));
    let mut total = 0.0;
    let mut section = 0.0;
    let mut current: Option<f64> = None;
    for c in int.chars() {
        if let Some(d) = digit(c) {
            current = Some(d);
            continue;
        }
        let unit = match c {
            '十' => 10.0,
            '百' => 100.0,
            '千' => 1000.0,
            '万' => {
                total = (section + current.unwrap_or(0.0)) * 10_000.0;
                section = 0.0;
                current = None;
                continue;
            }
            _ => return None,
        };
        section += current.unwrap_or(1.0) * unit;
        current = None;
    }
    let mut v = total + section + current.unwrap_or(0.0);
    if !frac.is_empty() {
        let digits: String = frac
            .chars()
            .filter_map(|c| digit(c).map(|d| char::from(b'0' + d as u8)))
            .collect();
        v += format!("0.{digits}").parse::<f64>().ok()?;
    }
    Some(v)
}

/// The numbers the facts contain, as values with their units (Arabic and Chinese numerals alike):
/// “3 号链接” in the facts does not make “三年” known.
#[derive(Debug, Clone, Default)]
pub struct KnownNumbers {
    /// (value, unit) pairs; a number written without a unit has the unit "".
    with_unit: HashSet<(u64, String)>,
    values: HashSet<u64>,
}

fn key(v: f64) -> u64 {
    (v * 1000.0).round().to_bits()
}

/// One spelling per unit (块 is 元, ％ is %, 个月 is 月…).
fn unit_of(u: &str) -> String {
    let u = u.trim();
    match u {
        "块" => "元".into(),
        "％" => "%".into(),
        "个月" => "月".into(),
        _ => u.to_lowercase(),
    }
}

static CHINESE_ANY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[零一二两三四五六七八九十百千万]+(?:点[零一二三四五六七八九]+)?")
        .expect("numerals")
});

impl KnownNumbers {
    pub fn from_facts<'a>(facts: impl IntoIterator<Item = &'a str>) -> KnownNumbers {
        let mut k = KnownNumbers::default();
        for f in facts {
            for m in ARABIC.captures_iter(f) {
                let number = half_width(m.get(0).map_or("", |x| x.as_str()));
                let digits: String = number
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                if let Ok(v) = digits.parse::<f64>() {
                    k.values.insert(key(v));
                    k.with_unit
                        .insert((key(v), unit_of(m.get(1).map_or("", |u| u.as_str()))));
                }
            }
            for m in CHINESE.captures_iter(f) {
                let whole = m.get(0).map_or("", |x| x.as_str());
                let unit = m.get(1).map_or("", |u| u.as_str());
                if let Some(v) = chinese_value(whole[..whole.len() - unit.len()].trim()) {
                    k.values.insert(key(v));
                    k.with_unit.insert((key(v), unit_of(unit)));
                }
            }
            for m in CHINESE_ANY.find_iter(f) {
                if let Some(v) = chinese_value(m.as_str()) {
                    k.values.insert(key(v));
                }
            }
        }
        k
    }

    /// Whether the facts have this number: with this unit (or with none), or, for a number
    /// written without a unit, with any unit.
    fn knows(&self, v: f64, unit: &str) -> bool {
        if unit.is_empty() {
            return self.values.contains(&key(v));
        }
        self.with_unit.contains(&(key(v), unit_of(unit)))
            || self.with_unit.contains(&(key(v), String::new()))
    }

    /// The fact-like numbers in `line` that the facts do not contain.
    pub fn unknown_in(&self, line: &str) -> Vec<UnknownNumber> {
        let utf16 = |byte: usize| line[..byte].encode_utf16().count();
        let mut out = Vec::new();
        for m in ARABIC.captures_iter(line) {
            let whole = m.get(0).expect("match");
            let number = half_width(whole.as_str());
            let digits: String = number
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let unit = m.get(1).map_or("", |u| u.as_str());
            let fact_like = digits.chars().filter(char::is_ascii_digit).count() >= 2
                || digits.contains('.')
                || !unit.trim().is_empty();
            let known = digits.parse::<f64>().is_ok_and(|v| self.knows(v, unit));
            if fact_like && !known {
                let text = whole.as_str().trim_end();
                out.push(UnknownNumber {
                    text: text.to_owned(),
                    start_utf16: utf16(whole.start()),
                    end_utf16: utf16(whole.start()) + text.encode_utf16().count(),
                });
            }
        }
        for m in CHINESE.captures_iter(line) {
            let whole = m.get(0).expect("match");
            let unit = m.get(1).map_or("", |u| u.as_str());
            if let Some(v) = chinese_value(whole.as_str()[..whole.as_str().len() - unit.len()].trim())
                && !self.knows(v, unit)
                // 一件、一天: “one” is rarely a claim.
                && v != 1.0
            {
                out.push(UnknownNumber {
                    text: whole.as_str().to_owned(),
                    start_utf16: utf16(whole.start()),
                    end_utf16: utf16(whole.end()),
                });
            }
        }
        out.sort_by_key(|u| u.start_utf16);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> KnownNumbers {
        KnownNumbers::from_facts([
            "日常价：199 元（依据：前 7 日最低成交价）",
            "直播价：129 元",
            "库存：500 件",
            "链接：3 号链接",
            "保温十二小时",
            "证书：QS 2024-0871",
        ])
    }

    #[test]
    fn numbers_from_the_facts_pass_and_invented_ones_are_flagged() {
        let k = known();
        assert!(
            k.unknown_in("日常价 199，今天直播间只要 129 元！")
                .is_empty()
        );
        assert!(k.unknown_in("库存就 500 件，3 号链接！").is_empty());
        assert!(
            k.unknown_in("保温 12 小时").is_empty(),
            "十二 in the facts is 12"
        );
        assert!(k.unknown_in("证书编号 2024-0871").is_empty());
        let u = k.unknown_in("原价 399，现在 99 元，销量 10 万+，好评率 98%");
        assert_eq!(
            u.iter().map(|x| x.text.as_str()).collect::<Vec<_>>(),
            ["399", "99 元", "10 万", "98%"]
        );
    }

    #[test]
    fn chinese_numerals_with_units_are_checked() {
        let k = known();
        let u = k.unknown_in("我自己用了三年，打五折");
        assert_eq!(
            u.iter().map(|x| x.text.as_str()).collect::<Vec<_>>(),
            ["三年", "五折"]
        );
        assert!(k.unknown_in("保温十二小时").is_empty());
        assert_eq!(chinese_value("两百"), Some(200.0));
        assert_eq!(chinese_value("一万二千"), Some(12_000.0));
        assert_eq!(chinese_value("十五"), Some(15.0));
        assert_eq!(chinese_value("三点五"), Some(3.5));
    }

    #[test]
    fn interaction_numbers_are_not_facts() {
        let k = known();
        assert!(k.unknown_in("想要的扣 1，3、2、1，上车！").is_empty());
        assert!(k.unknown_in("一件也包邮").is_empty());
    }

    #[test]
    fn offsets_are_utf16_and_full_width_digits_count() {
        let k = known();
        let line = "😀只要８８元";
        let u = k.unknown_in(line);
        assert_eq!(u.len(), 1);
        let units: Vec<u16> = line.encode_utf16().collect();
        assert_eq!(
            String::from_utf16(&units[u[0].start_utf16..u[0].end_utf16]).unwrap(),
            "８８元"
        );
        assert!(k.unknown_in("只要１２９元").is_empty());
    }
}
