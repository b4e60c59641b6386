//! The live-script studio's engine: a product's facts and the show settings become a timed
//! per-product script (单品脚本 / 手卡).
//!
//! Code decides the shape ([`skeleton`]: segments, target durations, the crew's cues from the
//! facts); the model writes each segment's lines from the facts only ([`segment_prompt`], parsed
//! by [`parse`]); code then annotates every line: its spoken duration ([`timing`]), numbers the
//! facts do not contain ([`facts`]) and compliance findings (the product's category pack, the
//! platform pack and, for a virtual host, the honesty pack).

pub mod facts;
pub mod parse;
pub mod product;
pub mod skeleton;
pub mod timing;

use serde::{Deserialize, Serialize};

use crate::compliance::{CheckOptions, Checker, Finding};
use crate::error::Result;
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
pub fn annotate(text: &str, alts: Vec<String>, rate: f64, known: &KnownNumbers, checker: &Checker, opts: &CheckOptions) -> Result<Line> {
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
        Annotator { checker, opts: check_options(p, show), known: KnownNumbers::from_facts(facts.iter().map(String::as_str)), rate: show.rate() }
    }

    pub fn line(&self, text: &str, alts: Vec<String>) -> Result<Line> {
        annotate(text, alts, self.rate, &self.known, self.checker, &self.opts)
    }

    /// A written segment from the model's parsed text.
    pub fn written(&self, planned: &Planned, text: SegmentText) -> Result<Segment> {
        let host = text.host.into_iter().map(|h| self.line(&h.text, h.alts)).collect::<Result<Vec<_>>>()?;
        let assistant = text.assistant.iter().map(|a| self.line(a, Vec::new())).collect::<Result<Vec<_>>>()?;
        Ok(Segment {
            kind: planned.kind,
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

fn goal(kind: SegmentKind) -> &'static str {
    match kind {
        SegmentKind::Hook => "过款钩子：一两句话留住刚进直播间的人，说清接下来讲什么商品、有什么福利，引导扣 1。",
        SegmentKind::Pain => "痛点场景：用买家自己的话说出他们遇到的问题和具体场景。",
        SegmentKind::Selling => "卖点讲解：逐个讲卖点，每个卖点按“特点—优势—好处”讲，可以描述演示动作。",
        SegmentKind::Proof => "信任背书：只讲下面给出的证书、检测报告和品牌事实；没有给出的一律不说。",
        SegmentKind::Offer => "价格福利：说明日常价与直播价（必须说出日常价的依据）、赠品和优惠券。",
        SegmentKind::Close => "促单：说真实库存和购买方式（几号链接），不制造虚假的紧迫感。",
        SegmentKind::Interact => "互动答疑：回答常见问题，引导互动，预告下一个环节。",
    }
}

/// The prompt for one segment: the host, the facts, the segment's goal and length, the format,
/// and the rules in scope.
pub fn segment_prompt(p: &Product, show: &ShowSettings, planned: &Planned, checker: &Checker) -> Result<String> {
    let chars = (f64::from(planned.target_secs) * show.rate() / 60.0).round().max(10.0);
    let mut s = String::new();
    let host = if show.host_name.is_empty() { "主播".to_owned() } else { show.host_name.clone() };
    s.push_str(&format!("你在为直播间写带货话术。主播：{host}"));
    if !show.host_style.is_empty() {
        s.push_str(&format!("，风格：{}", show.host_style));
    }
    if !show.catch_phrases.is_empty() {
        s.push_str(&format!("，口头禅：{}", show.catch_phrases.join("、")));
    }
    s.push_str("。\n");
    if show.virtual_host {
        s.push_str("主播是 AI 虚拟主播：不能说“我用过”“亲测”“我自己也在用”这类亲身体验，不冒充真人。\n");
    }
    s.push_str("商品事实（只能使用这些事实，不能编造数字、销量、证书或评价）：\n");
    for f in p.fact_lines() {
        s.push_str(&format!("- {f}\n"));
    }
    if !p.forbidden_claims.is_empty() {
        s.push_str(&format!("品牌禁止的说法：{}\n", p.forbidden_claims.join("、")));
    }
    s.push_str(&format!("\n现在只写这一段——{}\n", goal(planned.kind)));
    s.push_str(&format!("这一段约 {} 秒，主播台词合计约 {chars:.0} 字。\n", planned.target_secs));
    s.push_str("按下面的格式输出，每行一个标签，不要输出别的内容：\n主播：（主播台词，可以多行，每行以“主播：”开头）\n备选：（上一句主播台词的另一种说法，1 到 2 句）\n副播：（副播的台词，可选）\n字幕：（屏幕上显示的短文字，可选）\n");
    s.push('\n');
    s.push_str(&checker.prompt_summary(&check_options(p, show), true)?);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Product {
        Product { category: "food".into(), ..product::sample() }.normalized().unwrap()
    }

    #[test]
    fn a_parsed_segment_is_timed_checked_and_fact_checked() {
        let checker = Checker::builtin().unwrap();
        let show = ShowSettings { virtual_host: true, platform: "douyin".into(), ..Default::default() };
        let p = product();
        let plan = skeleton::plan(&p, &show);
        let offer = plan.iter().find(|s| s.kind == SegmentKind::Offer).unwrap();
        let text = parse::segment("主播：日常价 199，今天只要 129 元，全网最低价！\n备选：今天 129 元\n主播：我自己用了三年，库存 800 件\n副播：3 号链接！").unwrap();
        let a = Annotator::new(&checker, &p, &show);
        let seg = a.written(offer, text).unwrap();
        assert_eq!(seg.status, SegmentStatus::Written);
        assert_eq!(seg.host.len(), 2);
        assert!(seg.host[0].est_secs > 3.0 && seg.host[0].est_secs < 10.0, "{}", seg.host[0].est_secs);
        assert!(seg.host[0].unknown_numbers.is_empty(), "{:?}", seg.host[0].unknown_numbers);
        assert!(seg.host[0].findings.iter().any(|f| f.matched.contains("最低价")), "{:?}", seg.host[0].findings);
        let invented: Vec<_> = seg.host[1].unknown_numbers.iter().map(|u| u.text.as_str()).collect();
        assert_eq!(invented, ["三年", "800 件"]);
        // A virtual host may not claim to have used the product (the honesty pack).
        assert!(seg.host[1].findings.iter().any(|f| f.pack == "virtual_host"), "{:?}", seg.host[1].findings);
        assert!((seg.est_secs - (seg.host[0].est_secs + seg.host[1].est_secs)).abs() < 1e-9);
        assert_eq!(seg.cues, offer.cues);
    }

    #[test]
    fn the_prompt_carries_the_facts_the_goal_the_length_and_the_format() {
        let checker = Checker::builtin().unwrap();
        let show = ShowSettings { virtual_host: true, ..Default::default() };
        let p = product();
        let plan = skeleton::plan(&p, &show);
        let prompt = segment_prompt(&p, &show, &plan[4], &checker).unwrap();
        for needle in ["真空保温杯", "日常价：199 元（依据：前 7 日最低成交价）", "价格福利", "约 50 秒", "约 183 字", "主播：", "AI 虚拟主播"] {
            assert!(prompt.contains(needle), "missing {needle}:\n{prompt}");
        }
    }

    #[test]
    fn a_placeholder_keeps_the_segment_visible() {
        let p = product();
        let plan = skeleton::plan(&p, &ShowSettings::default());
        let s = placeholder(&plan[0], "no host line");
        assert_eq!((s.status, s.kind, s.target_secs), (SegmentStatus::Placeholder, SegmentKind::Hook, 20));
        assert!(!s.overruns());
    }
}
