//! The product form (the facts a script may use) and the show settings. Everything the model is
//! allowed to state comes from here; `validate` refuses what would make a script unlawful or
//! unusable (no selling point, a comparison price without its basis, a negative stock…).

use serde::{Deserialize, Serialize};

use super::timing::{MAX_CHARS_PER_MIN, MIN_CHARS_PER_MIN, Tempo};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SellingPoint {
    /// What it is (成分、工艺、参数).
    pub feature: String,
    /// Why that is better.
    pub advantage: String,
    /// What the buyer gets.
    pub benefit: String,
    /// Evidence for it (a test report, a certificate), if any.
    pub proof: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Certificate {
    pub name: String,
    pub number: String,
    pub issuer: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faq {
    pub question: String,
    pub answer: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Product {
    pub name: String,
    /// A compliance category (`cosmetics`, `food`, `health_food`, …) or empty for general goods.
    pub category: String,
    pub selling_points: Vec<SellingPoint>,
    pub audience: String,
    pub scenarios: Vec<String>,
    /// 日常价, in yuan.
    pub daily_price: Option<f64>,
    /// 直播价, in yuan.
    pub live_price: Option<f64>,
    /// Where the comparison price comes from (e.g. “前 7 日最低成交价 199 元”): required whenever a
    /// daily price is compared with the live price.
    pub price_basis: String,
    /// Gifts, coupons, bundles (赠品、优惠券、组合).
    pub mechanism: Vec<String>,
    /// Real stock for the show.
    pub stock: Option<u64>,
    /// The shopping-bag link number (小黄车 N 号链接).
    pub link_no: Option<u32>,
    pub specs: Vec<String>,
    pub faq: Vec<Faq>,
    pub brand_facts: Vec<String>,
    pub certificates: Vec<Certificate>,
    /// Claims the brand forbids.
    pub forbidden_claims: Vec<String>,
}

pub const MAX_SELLING_POINTS: usize = 3;
const MAX_FIELD_CHARS: usize = 500;
const MAX_LIST_ITEMS: usize = 30;

impl Product {
    /// Trims every text, drops empty list entries and checks the form.
    pub fn normalized(&self) -> Result<Product> {
        let text = |what: &str, s: &str| -> Result<String> {
            let s = s.trim().to_owned();
            let n = s.chars().count();
            if n > MAX_FIELD_CHARS {
                return Err(Error::invalid(format!(
                    "{what} is {n} characters; at most {MAX_FIELD_CHARS}"
                )));
            }
            Ok(s)
        };
        let list = |what: &str, v: &[String]| -> Result<Vec<String>> {
            let items = v
                .iter()
                .map(|s| text(what, s))
                .collect::<Result<Vec<_>>>()?;
            let items: Vec<String> = items.into_iter().filter(|s| !s.is_empty()).collect();
            if items.len() > MAX_LIST_ITEMS {
                return Err(Error::invalid(format!(
                    "{what}: at most {MAX_LIST_ITEMS} entries"
                )));
            }
            Ok(items)
        };
        let p = Product {
            name: text("the product name", &self.name)?,
            category: self.category.trim().to_owned(),
            selling_points: self
                .selling_points
                .iter()
                .map(|sp| {
                    Ok(SellingPoint {
                        feature: text("a selling point", &sp.feature)?,
                        advantage: text("a selling point", &sp.advantage)?,
                        benefit: text("a selling point", &sp.benefit)?,
                        proof: text("a selling point's proof", &sp.proof)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|sp| {
                    !(sp.feature.is_empty() && sp.advantage.is_empty() && sp.benefit.is_empty())
                })
                .collect(),
            audience: text("the audience", &self.audience)?,
            scenarios: list("scenarios", &self.scenarios)?,
            daily_price: self.daily_price,
            live_price: self.live_price,
            price_basis: text("the price basis", &self.price_basis)?,
            mechanism: list("the mechanism", &self.mechanism)?,
            stock: self.stock,
            link_no: self.link_no,
            specs: list("specs", &self.specs)?,
            faq: self
                .faq
                .iter()
                .map(|f| {
                    Ok(Faq {
                        question: text("an FAQ question", &f.question)?,
                        answer: text("an FAQ answer", &f.answer)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|f| !f.question.is_empty())
                .collect(),
            brand_facts: list("brand facts", &self.brand_facts)?,
            certificates: self
                .certificates
                .iter()
                .map(|c| {
                    Ok(Certificate {
                        name: text("a certificate", &c.name)?,
                        number: text("a certificate number", &c.number)?,
                        issuer: text("a certificate issuer", &c.issuer)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|c| !(c.name.is_empty() && c.number.is_empty()))
                .collect(),
            forbidden_claims: list("forbidden claims", &self.forbidden_claims)?,
        };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::invalid("the product needs a name"));
        }
        if !self.category.is_empty()
            && !crate::compliance::pack::CATEGORIES.contains(&self.category.as_str())
        {
            return Err(Error::invalid(format!(
                "unknown product category “{}” (known: {})",
                self.category,
                crate::compliance::pack::CATEGORIES.join(", ")
            )));
        }
        if self.selling_points.is_empty() || self.selling_points.len() > MAX_SELLING_POINTS {
            return Err(Error::invalid(format!(
                "give 1 to {MAX_SELLING_POINTS} selling points (this product has {})",
                self.selling_points.len()
            )));
        }
        for (what, price) in [
            ("the daily price", self.daily_price),
            ("the live price", self.live_price),
        ] {
            if let Some(p) = price
                && !(p.is_finite() && p > 0.0 && p < 10_000_000.0)
            {
                return Err(Error::invalid(format!(
                    "{what} must be a positive amount in yuan"
                )));
            }
        }
        if let (Some(daily), Some(live)) = (self.daily_price, self.live_price)
            && daily != live
            && self.price_basis.is_empty()
        {
            // 《明码标价和禁止价格欺诈规定》: a comparison price needs its basis stated.
            return Err(Error::invalid(
                "comparing the daily price with the live price needs its basis (e.g. 前 7 日最低成交价): fill in the price basis",
            ));
        }
        if self
            .certificates
            .iter()
            .any(|c| !c.name.is_empty() && c.number.is_empty())
        {
            return Err(Error::invalid(
                "a certificate needs its number (a claim of certification must be verifiable)",
            ));
        }
        Ok(())
    }

    /// The facts as text, one per line: what the prompts show the model and where the number
    /// check looks for known numbers.
    pub fn fact_lines(&self) -> Vec<String> {
        let mut out = vec![format!("商品：{}", self.name)];
        for (i, sp) in self.selling_points.iter().enumerate() {
            let mut line = format!("卖点{}：{}", i + 1, sp.feature);
            for (label, v) in [
                ("优势", &sp.advantage),
                ("利益", &sp.benefit),
                ("依据", &sp.proof),
            ] {
                if !v.is_empty() {
                    line.push_str(&format!("；{label}：{v}"));
                }
            }
            out.push(line);
        }
        if !self.audience.is_empty() {
            out.push(format!("人群：{}", self.audience));
        }
        if !self.scenarios.is_empty() {
            out.push(format!("场景：{}", self.scenarios.join("、")));
        }
        if let Some(p) = self.daily_price {
            out.push(format!(
                "日常价：{} 元（依据：{}）",
                price(p),
                self.price_basis
            ));
        }
        if let Some(p) = self.live_price {
            out.push(format!("直播价：{} 元", price(p)));
        }
        if !self.mechanism.is_empty() {
            out.push(format!("福利机制：{}", self.mechanism.join("；")));
        }
        if let Some(s) = self.stock {
            out.push(format!("库存：{s} 件"));
        }
        if let Some(l) = self.link_no {
            out.push(format!("链接：{l} 号链接"));
        }
        if !self.specs.is_empty() {
            out.push(format!("规格：{}", self.specs.join("；")));
        }
        for c in &self.certificates {
            out.push(
                format!("证书：{} {} {}", c.name, c.number, c.issuer)
                    .trim_end()
                    .to_owned(),
            );
        }
        for f in &self.brand_facts {
            out.push(format!("品牌：{f}"));
        }
        for f in &self.faq {
            out.push(format!("问：{} 答：{}", f.question, f.answer));
        }
        out
    }
}

impl Product {
    /// The facts with English labels, for an English script's prompt.
    pub fn fact_lines_en(&self) -> Vec<String> {
        let mut out = vec![format!("Product: {}", self.name)];
        for (i, sp) in self.selling_points.iter().enumerate() {
            let mut line = format!("Selling point {}: {}", i + 1, sp.feature);
            for (label, v) in [
                ("advantage", &sp.advantage),
                ("benefit", &sp.benefit),
                ("proof", &sp.proof),
            ] {
                if !v.is_empty() {
                    line.push_str(&format!("; {label}: {v}"));
                }
            }
            out.push(line);
        }
        let mut push = |label: &str, v: String| {
            if !v.is_empty() {
                out.push(format!("{label}: {v}"));
            }
        };
        push("Audience", self.audience.clone());
        push("Scenarios", self.scenarios.join(", "));
        push(
            "Regular price",
            self.daily_price
                .map(|p| format!("{} yuan (basis: {})", price(p), self.price_basis))
                .unwrap_or_default(),
        );
        push(
            "Live price",
            self.live_price
                .map(|p| format!("{} yuan", price(p)))
                .unwrap_or_default(),
        );
        push("Offer", self.mechanism.join("; "));
        push(
            "Stock",
            self.stock
                .map(|s| format!("{s} pieces"))
                .unwrap_or_default(),
        );
        push(
            "Link",
            self.link_no
                .map(|l| format!("link number {l}"))
                .unwrap_or_default(),
        );
        push("Specs", self.specs.join("; "));
        for c in &self.certificates {
            push(
                "Certificate",
                format!("{} {} {}", c.name, c.number, c.issuer)
                    .trim_end()
                    .to_owned(),
            );
        }
        for f in &self.brand_facts {
            push("Brand", f.clone());
        }
        for f in &self.faq {
            push("Q", format!("{} A: {}", f.question, f.answer));
        }
        out
    }
}

/// A price without a trailing “.0”.
pub fn price(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

/// How the show is run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShowSettings {
    /// douyin, taobao, xiaohongshu… (the platform rule pack), or empty.
    pub platform: String,
    /// Minutes for one product (1–15).
    pub slot_min: u32,
    pub host_name: String,
    pub host_style: String,
    pub catch_phrases: Vec<String>,
    pub virtual_host: bool,
    pub tempo: Tempo,
    /// Overrides the tempo preset (characters per minute).
    pub chars_per_min: Option<f64>,
    /// The language the host speaks: `zh` (default) or `en`.
    pub language: String,
}

impl Default for ShowSettings {
    fn default() -> Self {
        ShowSettings {
            platform: String::new(),
            slot_min: 5,
            host_name: String::new(),
            host_style: String::new(),
            catch_phrases: Vec::new(),
            virtual_host: false,
            tempo: Tempo::Standard,
            chars_per_min: None,
            language: "zh".into(),
        }
    }
}

impl ShowSettings {
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.language.as_str(), "zh" | "en") {
            return Err(Error::invalid(format!(
                "the script language must be zh or en, not “{}”",
                self.language
            )));
        }
        if self.host_name.chars().count() > 40
            || self.host_style.chars().count() > 200
            || self.catch_phrases.len() > 10
        {
            return Err(Error::invalid(
                "the host persona is too long (name ≤ 40, style ≤ 200 characters, ≤ 10 catch phrases)",
            ));
        }
        if !(1..=15).contains(&self.slot_min) {
            return Err(Error::invalid(format!(
                "the slot is {} minutes; it must be 1 to 15",
                self.slot_min
            )));
        }
        if let Some(r) = self.chars_per_min
            && !(MIN_CHARS_PER_MIN..=MAX_CHARS_PER_MIN).contains(&r)
        {
            return Err(Error::invalid(format!(
                "the tempo must be {MIN_CHARS_PER_MIN}–{MAX_CHARS_PER_MIN} characters per minute"
            )));
        }
        Ok(())
    }

    pub fn rate(&self) -> f64 {
        self.chars_per_min.unwrap_or(self.tempo.chars_per_min())
    }
}

/// A valid product form for tests (a 500 ml vacuum flask with a lawful comparison price).
#[cfg(test)]
pub(crate) fn sample() -> Product {
    Product {
        name: "真空保温杯 500ml".into(),
        category: String::new(),
        selling_points: vec![SellingPoint {
            feature: "316 不锈钢内胆".into(),
            advantage: "耐腐蚀".into(),
            benefit: "泡茶装果汁都放心".into(),
            proof: "SGS 检测报告".into(),
        }],
        daily_price: Some(199.0),
        live_price: Some(129.0),
        price_basis: "前 7 日最低成交价".into(),
        stock: Some(500),
        link_no: Some(3),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_form_is_trimmed_and_kept() {
        let mut p = sample();
        p.scenarios = vec![" 通勤 ".into(), "".into()];
        let n = p.normalized().unwrap();
        assert_eq!(n.scenarios, ["通勤"]);
        let facts = n.fact_lines().join("\n");
        assert!(
            facts.contains("日常价：199 元（依据：前 7 日最低成交价）")
                && facts.contains("3 号链接"),
            "{facts}"
        );
    }

    #[test]
    fn unlawful_or_unusable_forms_are_refused_with_the_reason() {
        type Change = Box<dyn Fn(&mut Product)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|p| p.name = " ".into()), "name"),
            (Box::new(|p| p.selling_points.clear()), "selling points"),
            (
                Box::new(|p| p.selling_points = vec![p.selling_points[0].clone(); 4]),
                "selling points",
            ),
            (Box::new(|p| p.price_basis.clear()), "basis"),
            (Box::new(|p| p.live_price = Some(-1.0)), "positive"),
            (Box::new(|p| p.daily_price = Some(f64::NAN)), "positive"),
            (Box::new(|p| p.category = "weapons".into()), "category"),
            (
                Box::new(|p| {
                    p.certificates = vec![Certificate {
                        name: "有机认证".into(),
                        ..Default::default()
                    }]
                }),
                "number",
            ),
            (Box::new(|p| p.audience = "人".repeat(501)), "501"),
        ];
        for (change, needle) in cases {
            let mut p = sample();
            change(&mut p);
            let e = p.normalized().unwrap_err();
            assert_eq!(e.kind(), "invalid_input");
            assert!(
                e.to_string().contains(needle),
                "{e} should mention {needle}"
            );
        }
        // Same daily and live price: nothing is compared, no basis needed.
        let mut p = sample();
        p.live_price = p.daily_price;
        p.price_basis.clear();
        p.normalized().unwrap();
    }

    #[test]
    fn show_settings_are_checked() {
        assert!(ShowSettings::default().validate().is_ok());
        assert_eq!(ShowSettings::default().rate(), 220.0);
        assert!(
            ShowSettings {
                slot_min: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            ShowSettings {
                slot_min: 16,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            ShowSettings {
                chars_per_min: Some(20.0),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
