//! The live-script studio's engine: a product's facts and the show settings become a timed
//! per-product script (单品脚本 / 手卡).
//!
//! Code decides the shape ([`skeleton`]: segments, target durations, the crew's cues from the
//! facts); the model writes each segment's lines from the facts only ([`segment_prompt`], parsed
//! by [`parse`]); code then annotates every line: its spoken duration ([`timing`]), numbers the
//! facts do not contain ([`facts`]) and compliance findings (the product's category pack, the
//! platform pack and, for a virtual host, the honesty pack).

pub mod csv_import;
pub mod document;
pub mod export;
pub mod facts;
pub mod generate;
pub mod parse;
pub mod product;
pub mod skeleton;
pub mod timing;

use serde::{Deserialize, Serialize};

use crate::compliance::{CheckOptions, Checker, Finding};
use crate::error::Result;
use document::{ProductRole, ShowProduct};
use facts::{KnownNumbers, UnknownNumber};
use parse::SegmentText;
use product::{Product, ShowSettings};
use skeleton::{Cue, Planned, SegmentKind};

/// A spoken line with what the checks found in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub text: String,
    #[serde(default)]
    pub alts: Vec<String>,
    pub est_secs: f64,
    #[serde(default)]
    pub findings: Vec<Finding>,
    #[serde(default)]
    pub unknown_numbers: Vec<UnknownNumber>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentStatus {
    Written,
    /// The model's output could not be used (twice): kept visible for the user to regenerate.
    Placeholder,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub kind: SegmentKind,
    /// The product it belongs to (index into the script's products); none for a show's
    /// opening and closing.
    #[serde(default)]
    pub product: Option<usize>,
    pub start_secs: u32,
    pub target_secs: u32,
    /// Estimated seconds of the host lines.
    pub est_secs: f64,
    pub host: Vec<Line>,
    #[serde(default)]
    pub assistant: Vec<Line>,
    #[serde(default)]
    pub screen: Vec<String>,
    pub cues: Vec<Cue>,
    pub status: SegmentStatus,
    /// Why it is a placeholder.
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub locked: bool,
}

impl Segment {
    /// Longer than its target by more than 15 %.
    pub fn overruns(&self) -> bool {
        self.est_secs > f64::from(self.target_secs) * 1.15
    }
}

/// The compliance scope of a product's script.
pub fn check_options(p: &Product, show: &ShowSettings) -> CheckOptions {
    CheckOptions {
        category: (!p.category.is_empty() && p.category != "general").then(|| p.category.clone()),
        platform: (!show.platform.is_empty()).then(|| show.platform.clone()),
        virtual_host: show.virtual_host,
        trademarks: Vec::new(),
    }
}

/// Checks one line: duration, unknown numbers, compliance.
pub fn annotate(
    text: &str,
    alts: Vec<String>,
    rate: f64,
    known: &KnownNumbers,
    checker: &Checker,
    opts: &CheckOptions,
) -> Result<Line> {
    Ok(Line {
        text: text.to_owned(),
        alts,
        est_secs: timing::estimate_secs(text, rate),
        findings: checker.check(text, opts)?.findings,
        unknown_numbers: known.unknown_in(text),
    })
}

/// Everything needed to annotate the lines of one product's script.
pub struct Annotator<'a> {
    pub checker: &'a Checker,
    pub opts: CheckOptions,
    pub known: KnownNumbers,
    pub rate: f64,
}

impl<'a> Annotator<'a> {
    pub fn new(checker: &'a Checker, p: &Product, show: &ShowSettings) -> Annotator<'a> {
        let facts = p.fact_lines();
        // The Chinese lines carry the units (元、件、号链接) that keep “3 号链接” from vouching for
        // “三年”; the same numbers appear in the English lines, so English scripts are covered.
        let known = KnownNumbers::from_facts(facts.iter().map(String::as_str));
        Annotator {
            checker,
            opts: check_options(p, show),
            known,
            rate: show.rate(),
        }
    }

    /// For the show's own segments (opening, closing): every product's numbers are known; the
    /// platform and honesty packs apply, no single category does.
    pub fn for_lineup(
        checker: &'a Checker,
        lineup: &[ShowProduct],
        show: &ShowSettings,
    ) -> Annotator<'a> {
        let facts: Vec<String> = lineup.iter().flat_map(|s| s.product.fact_lines()).collect();
        let mut opts = check_options(&Product::default(), show);
        opts.category = None;
        Annotator {
            checker,
            opts,
            known: KnownNumbers::from_facts(facts.iter().map(String::as_str)),
            rate: show.rate(),
        }
    }

    pub fn line(&self, text: &str, alts: Vec<String>) -> Result<Line> {
        annotate(text, alts, self.rate, &self.known, self.checker, &self.opts)
    }

    /// A written segment from the model's parsed text.
    pub fn written(&self, planned: &Planned, text: SegmentText) -> Result<Segment> {
        let host = text
            .host
            .into_iter()
            .map(|h| self.line(&h.text, h.alts))
            .collect::<Result<Vec<_>>>()?;
        let assistant = text
            .assistant
            .iter()
            .map(|a| self.line(a, Vec::new()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Segment {
            kind: planned.kind,
            product: None,
            start_secs: planned.start_secs,
            target_secs: planned.target_secs,
            est_secs: host.iter().map(|l| l.est_secs).sum(),
            host,
            assistant,
            screen: text.screen,
            cues: planned.cues.clone(),
            status: SegmentStatus::Written,
            note: String::new(),
            locked: false,
        })
    }
}

/// A segment the model could not write: visible, empty, with the reason, to regenerate.
pub fn placeholder(planned: &Planned, why: &str) -> Segment {
    Segment {
        kind: planned.kind,
        product: None,
        start_secs: planned.start_secs,
        target_secs: planned.target_secs,
        est_secs: 0.0,
        host: Vec::new(),
        assistant: Vec::new(),
        screen: Vec::new(),
        cues: planned.cues.clone(),
        status: SegmentStatus::Placeholder,
        note: why.to_owned(),
        locked: false,
    }
}

fn goal(kind: SegmentKind, en: bool) -> &'static str {
    match (kind, en) {
        (SegmentKind::Hook, false) => {
            "过款钩子：一两句话留住刚进直播间的人，说清接下来讲什么商品、有什么福利，引导扣 1。"
        }
        (SegmentKind::Pain, false) => "痛点场景：用买家自己的话说出他们遇到的问题和具体场景。",
        (SegmentKind::Selling, false) => {
            "卖点讲解：逐个讲卖点，每个卖点按“特点—优势—好处”讲，可以描述演示动作。"
        }
        (SegmentKind::Proof, false) => {
            "信任背书：只讲下面给出的证书、检测报告和品牌事实；没有给出的一律不说。"
        }
        (SegmentKind::Offer, false) => {
            "价格福利：说明日常价与直播价（必须说出日常价的依据）、赠品和优惠券。"
        }
        (SegmentKind::Close, false) => {
            "促单：说真实库存和购买方式（几号链接），不制造虚假的紧迫感。"
        }
        (SegmentKind::Interact, false) => "互动答疑：回答常见问题，引导互动，预告下一个环节。",
        (SegmentKind::Opening, false) => {
            "开场暖场：欢迎进直播间的朋友，预告今天要讲的商品和福利，引导关注和扣 1。"
        }
        (SegmentKind::Transition, false) => "过款衔接：一两句话收住上一款，自然引出下一款商品。",
        (SegmentKind::Closing, false) => {
            "收官：回顾今天讲过的商品和链接号，感谢观看，引导关注，预告下一场。"
        }
        (SegmentKind::Hook, true) => {
            "Hook: one or two lines that keep people who just joined, say which product is next and what the deal is, ask them to type 1."
        }
        (SegmentKind::Pain, true) => {
            "Pain point: the buyer's problem and a concrete situation, in the buyer's words."
        }
        (SegmentKind::Selling, true) => {
            "Selling points: each point as feature, advantage, benefit; describe the demo."
        }
        (SegmentKind::Proof, true) => {
            "Proof: only the certificates, test reports and brand facts given below; nothing else."
        }
        (SegmentKind::Offer, true) => {
            "Price and offer: the regular price with its basis, the live price, gifts and coupons."
        }
        (SegmentKind::Close, true) => {
            "Close: the real stock and how to buy (the link number); no false urgency."
        }
        (SegmentKind::Interact, true) => {
            "Q&A: answer the common questions, invite comments, say what comes next."
        }
        (SegmentKind::Opening, true) => {
            "Opening: welcome viewers, preview today's products and deals, ask them to follow."
        }
        (SegmentKind::Transition, true) => {
            "Transition: close the previous product in a line or two and introduce the next one."
        }
        (SegmentKind::Closing, true) => {
            "Closing: recap today's products and their link numbers, thank viewers, preview the next show."
        }
    }
}

fn role_note(role: ProductRole, en: bool) -> &'static str {
    match (role, en) {
        (ProductRole::Traffic, false) => "这款是引流款：讲清超值之处，用来留住观众。",
        (ProductRole::Welfare, false) => "这款是福利款：突出福利，带动互动和成交。",
        (ProductRole::Profit, false) => "这款是利润款：讲透价值和品质，不拼低价。",
        (ProductRole::Traffic, true) => {
            "This is the traffic item: show why it is good value, to keep viewers."
        }
        (ProductRole::Welfare, true) => {
            "This is the welfare item: stress the perks to lift interaction and orders."
        }
        (ProductRole::Profit, true) => {
            "This is the profit item: explain its value and quality, do not compete on price."
        }
    }
}

/// The example lines the prompts show (another product's). Small models copy them verbatim;
/// [`scrub`] removes such copies from the output.
pub const EXAMPLE_ZH: [&str; 4] = [
    "冬天一出门手就冰的宝宝扣个 1！",
    "每天早上通勤手冻得发红的，评论区告诉我！",
    "已经挂在屏幕上啦！",
    "整个冬天手都暖暖的",
];
pub const EXAMPLE_EN: [&str; 4] = [
    "Who here gets cold hands on the way to work? Type 1 if that is you!",
    "Cold hands every winter morning? Tell me in the comments!",
    "It is on the screen now!",
    "Warm hands all winter",
];

fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| {
            !c.is_whitespace() && !c.is_ascii_punctuation() && !"，。！？、：；“”".contains(*c)
        })
        .collect::<String>()
        .to_lowercase()
}

/// Drops what is not the model's own writing for this product: copies of the prompt's example
/// lines (anywhere inside a line), lines repeated within the segment, alternates identical to
/// their line. An error when no host line is left (the caller retries).
pub fn scrub(mut t: SegmentText) -> Result<SegmentText> {
    let examples: Vec<String> = EXAMPLE_ZH
        .iter()
        .chain(EXAMPLE_EN.iter())
        .map(|e| squash(e))
        .collect();
    let copied = |s: &str| {
        let q = squash(s);
        q.is_empty() || examples.iter().any(|e| q.contains(e.as_str()))
    };
    let mut seen = std::collections::HashSet::new();
    t.host
        .retain(|h| !copied(&h.text) && seen.insert(squash(&h.text)));
    for h in &mut t.host {
        let own = squash(&h.text);
        let mut alt_seen = std::collections::HashSet::new();
        h.alts
            .retain(|a| !copied(a) && squash(a) != own && alt_seen.insert(squash(a)));
    }
    let mut seen = std::collections::HashSet::new();
    t.assistant.retain(|a| !copied(a) && seen.insert(squash(a)));
    let mut seen = std::collections::HashSet::new();
    t.screen.retain(|a| !copied(a) && seen.insert(squash(a)));
    if t.host.is_empty() {
        return Err(crate::error::Error::invalid(
            "the model only copied the example or repeated itself (no host line of its own)",
        ));
    }
    Ok(t)
}

/// What one segment's prompt is about: its product (none for the show's opening and closing),
/// the product before it (for a transition) and the show's line-up.
pub struct PromptScope<'a> {
    pub show: &'a ShowSettings,
    pub product: Option<&'a ShowProduct>,
    pub previous: Option<&'a ShowProduct>,
    pub lineup: &'a [ShowProduct],
}

/// The prompt for one segment: the host, the facts, the segment's goal and length, the format,
/// and the rules in scope.
pub fn segment_prompt(
    scope: &PromptScope<'_>,
    planned: &Planned,
    checker: &Checker,
) -> Result<String> {
    let show = scope.show;
    let en = show.language == "en";
    let chars = (f64::from(planned.target_secs) * show.rate() / 60.0)
        .round()
        .max(10.0);
    let mut s = String::new();
    let host = if show.host_name.is_empty() {
        if en {
            "the host".to_owned()
        } else {
            "主播".to_owned()
        }
    } else {
        show.host_name.clone()
    };
    let facts = |p: &Product| {
        if en {
            p.fact_lines_en()
        } else {
            p.fact_lines()
        }
    };
    if en {
        s.push_str(&format!(
            "You write what a live-stream shopping host says. Host: {host}"
        ));
        if !show.host_style.is_empty() {
            s.push_str(&format!(", style: {}", show.host_style));
        }
        if !show.catch_phrases.is_empty() {
            s.push_str(&format!(
                ", catch phrases: {}",
                show.catch_phrases.join(", ")
            ));
        }
        s.push_str(".\n");
        if show.virtual_host {
            s.push_str("The host is an AI virtual host: talk about the product and to the viewer (“you”), never about the host's own experience, never pose as a person.\n");
        }
    } else {
        s.push_str(&format!("你在为直播间写带货话术。主播：{host}"));
        if !show.host_style.is_empty() {
            s.push_str(&format!("，风格：{}", show.host_style));
        }
        if !show.catch_phrases.is_empty() {
            s.push_str(&format!("，口头禅：{}", show.catch_phrases.join("、")));
        }
        s.push_str("。\n");
        if show.virtual_host {
            s.push_str("主播是 AI 虚拟主播：只介绍商品本身，对观众说“你”，不讲主播自己的使用经历，不冒充真人。\n");
        }
    }
    match scope.product {
        Some(sp) => {
            s.push_str(if en {
                "Product facts (use only these; never invent numbers, sales, certificates or reviews):\n"
            } else {
                "商品事实（只能使用这些事实，不能编造数字、销量、证书或评价）：\n"
            });
            for f in facts(&sp.product) {
                s.push_str(&format!("- {f}\n"));
            }
            if let Some(role) = sp.role {
                s.push_str(role_note(role, en));
                s.push('\n');
            }
            if !sp.product.forbidden_claims.is_empty() {
                let sep = if en { ", " } else { "、" };
                s.push_str(&format!(
                    "{}{}\n",
                    if en {
                        "Claims the brand forbids: "
                    } else {
                        "品牌禁止的说法："
                    },
                    sp.product.forbidden_claims.join(sep)
                ));
            }
            if let Some(prev) = scope.previous {
                s.push_str(&format!(
                    "{}{}\n",
                    if en {
                        "The previous product was: "
                    } else {
                        "上一款商品："
                    },
                    prev.product.name
                ));
            }
        }
        None => {
            s.push_str(if en {
                "Today's products, in order (use only these facts):\n"
            } else {
                "今天的商品（按顺序，只能使用这些事实）：\n"
            });
            for (i, sp) in scope.lineup.iter().enumerate() {
                let p = &sp.product;
                let mut line = format!("{}. {}", i + 1, p.name);
                if let Some(lp) = p.live_price {
                    line.push_str(&if en {
                        format!(", live price {} yuan", product::price(lp))
                    } else {
                        format!("，直播价 {} 元", product::price(lp))
                    });
                }
                if let Some(l) = p.link_no {
                    line.push_str(&if en {
                        format!(", link number {l}")
                    } else {
                        format!("，{l} 号链接")
                    });
                }
                if let Some(m) = p.mechanism.first() {
                    line.push_str(&if en {
                        format!(", {m}")
                    } else {
                        format!("，{m}")
                    });
                }
                s.push_str(&format!("- {line}\n"));
            }
        }
    }
    if en {
        s.push_str(&format!(
            "\nWrite only this segment. {}\n",
            goal(planned.kind, true)
        ));
        s.push_str(&format!(
            "It lasts about {} seconds: about {:.0} words of host lines in all.\n",
            planned.target_secs,
            (chars / 1.5).round()
        ));
        s.push_str("Answer with labelled lines only: “Host:” for each host line (several allowed), “Alt:” for another wording of the host line above it, “Assistant:” for the assistant host (optional), “Screen:” for short on-screen text (optional). An example of the format about another product (do not copy it; write this product's own lines):\n");
        for (label, line) in ["Host", "Alt", "Assistant", "Screen"]
            .iter()
            .zip(EXAMPLE_EN)
        {
            s.push_str(&format!("{label}: {line}\n"));
        }
    } else {
        s.push_str(&format!(
            "\n现在只写这一段——{}\n",
            goal(planned.kind, false)
        ));
        s.push_str(&format!(
            "这一段约 {} 秒，主播台词合计约 {chars:.0} 字。\n",
            planned.target_secs
        ));
        s.push_str("只输出带标签的行：每句主播台词以“主播：”开头（可以多句）；“备选：”是上一句主播台词的另一种说法；“副播：”是副播台词（可选）；“字幕：”是屏幕上的短文字（可选）。下面是另一件商品的格式示例，不要照抄，写这件商品自己的台词：\n");
        for (label, line) in ["主播", "备选", "副播", "字幕"].iter().zip(EXAMPLE_ZH) {
            s.push_str(&format!("{label}：{line}\n"));
        }
    }
    s.push('\n');
    let opts = match scope.product {
        Some(sp) => check_options(&sp.product, show),
        None => check_options(&Product::default(), show),
    };
    s.push_str(&checker.prompt_summary(&opts, !en)?);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Product {
        Product {
            category: "food".into(),
            ..product::sample()
        }
        .normalized()
        .unwrap()
    }

    #[test]
    fn a_parsed_segment_is_timed_checked_and_fact_checked() {
        let checker = Checker::builtin().unwrap();
        let show = ShowSettings {
            virtual_host: true,
            platform: "douyin".into(),
            ..Default::default()
        };
        let p = product();
        let plan = skeleton::plan(&p, &show);
        let offer = plan.iter().find(|s| s.kind == SegmentKind::Offer).unwrap();
        let text = parse::segment("主播：日常价 199，今天只要 129 元，全网最低价！\n备选：今天 129 元\n主播：我自己用了三年，库存 800 件\n副播：3 号链接！").unwrap();
        let a = Annotator::new(&checker, &p, &show);
        let seg = a.written(offer, text).unwrap();
        assert_eq!(seg.status, SegmentStatus::Written);
        assert_eq!(seg.host.len(), 2);
        assert!(
            seg.host[0].est_secs > 3.0 && seg.host[0].est_secs < 10.0,
            "{}",
            seg.host[0].est_secs
        );
        assert!(
            seg.host[0].unknown_numbers.is_empty(),
            "{:?}",
            seg.host[0].unknown_numbers
        );
        assert!(
            seg.host[0]
                .findings
                .iter()
                .any(|f| f.matched.contains("最低价")),
            "{:?}",
            seg.host[0].findings
        );
        let invented: Vec<_> = seg.host[1]
            .unknown_numbers
            .iter()
            .map(|u| u.text.as_str())
            .collect();
        assert_eq!(invented, ["三年", "800 件"]);
        // A virtual host may not claim to have used the product (the honesty pack).
        assert!(
            seg.host[1]
                .findings
                .iter()
                .any(|f| f.pack == "virtual_host"),
            "{:?}",
            seg.host[1].findings
        );
        assert!((seg.est_secs - (seg.host[0].est_secs + seg.host[1].est_secs)).abs() < 1e-9);
        assert_eq!(seg.cues, offer.cues);
    }

    #[test]
    fn the_prompt_carries_the_facts_the_goal_the_length_and_the_format() {
        let checker = Checker::builtin().unwrap();
        let show = ShowSettings {
            virtual_host: true,
            ..Default::default()
        };
        let p = product();
        let plan = skeleton::plan(&p, &show);
        let lineup = [ShowProduct {
            product_id: None,
            role: None,
            product: p.clone(),
        }];
        let scope = PromptScope {
            show: &show,
            product: Some(&lineup[0]),
            previous: None,
            lineup: &lineup,
        };
        let prompt = segment_prompt(&scope, &plan[4], &checker).unwrap();
        for needle in [
            "真空保温杯",
            "日常价：199 元（依据：前 7 日最低成交价）",
            "价格福利",
            "约 50 秒",
            "约 183 字",
            "主播：",
            "另一件商品的格式示例",
            "AI 虚拟主播",
        ] {
            assert!(prompt.contains(needle), "missing {needle}:\n{prompt}");
        }
    }

    #[test]
    fn copies_of_the_example_and_repeats_are_scrubbed() {
        let t = parse::segment("主播：冬天一出门手就冰的宝宝扣个 1！\n主播：316 内胆，泡茶不串味。\n备选：316 内胆，泡茶不串味。\n备选：每天早上通勤手冻得发红的，评论区告诉我！副播：x\n主播：316 内胆，泡茶不串味！\n副播：已经挂在屏幕上啦！\n字幕：整个冬天手都暖暖的").unwrap();
        let t = scrub(t).unwrap();
        assert_eq!(
            t.host.iter().map(|h| h.text.as_str()).collect::<Vec<_>>(),
            ["316 内胆，泡茶不串味。"]
        );
        assert!(t.host[0].alts.is_empty());
        assert!(t.assistant.is_empty() && t.screen.is_empty());
        let only_copies = parse::segment(
            "Host: Who here gets cold hands on the way to work? Type 1 if that is you!",
        )
        .unwrap();
        assert_eq!(scrub(only_copies).unwrap_err().kind(), "invalid_input");
    }

    #[test]
    fn a_placeholder_keeps_the_segment_visible() {
        let p = product();
        let plan = skeleton::plan(&p, &ShowSettings::default());
        let s = placeholder(&plan[0], "no host line");
        assert_eq!(
            (s.status, s.kind, s.target_secs),
            (SegmentStatus::Placeholder, SegmentKind::Hook, 20)
        );
        assert!(!s.overruns());
    }
}
