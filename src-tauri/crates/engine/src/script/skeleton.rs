//! The shape of a per-product script, decided by code, not by the model: the seven segments in
//! order with target durations from the slot (shares of the 5-minute unit practitioners plan
//! in), and the crew's cues placed from the product facts.

use serde::{Deserialize, Serialize};

use super::product::{Product, ShowSettings, price};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    /// 过款/钩子: stop the scroll, say what is coming.
    Hook,
    /// 痛点/场景.
    Pain,
    /// 卖点: FAB per selling point, demo.
    Selling,
    /// 信任背书: verifiable proof only.
    Proof,
    /// 价格/福利/机制.
    Offer,
    /// 逼单/促单: real stock, real deadline, how to buy.
    Close,
    /// 互动/留人: FAQ, hand-off.
    Interact,
    /// 开场暖场 of a whole show: welcome, preview the deals.
    Opening,
    /// 过款: the hand-off from one product to the next in a whole show.
    Transition,
    /// 收官: recap, follow, preview the next show.
    Closing,
}

impl SegmentKind {
    pub const ALL: [SegmentKind; 7] = [
        SegmentKind::Hook,
        SegmentKind::Pain,
        SegmentKind::Selling,
        SegmentKind::Proof,
        SegmentKind::Offer,
        SegmentKind::Close,
        SegmentKind::Interact,
    ];

    /// Seconds of a 5-minute slot (0:20, 0:30, 1:30, 0:30, 0:50, 0:50, 0:30); the show's own
    /// segments are not part of a product's slot.
    fn seconds_of_five_minutes(self) -> u32 {
        match self {
            SegmentKind::Opening | SegmentKind::Transition | SegmentKind::Closing => 0,
            SegmentKind::Hook => 20,
            SegmentKind::Pain => 30,
            SegmentKind::Selling => 90,
            SegmentKind::Proof => 30,
            SegmentKind::Offer => 50,
            SegmentKind::Close => 50,
            SegmentKind::Interact => 30,
        }
    }

    pub fn name_zh(self) -> &'static str {
        match self {
            SegmentKind::Hook => "过款钩子",
            SegmentKind::Pain => "痛点场景",
            SegmentKind::Selling => "卖点讲解",
            SegmentKind::Proof => "信任背书",
            SegmentKind::Offer => "价格福利",
            SegmentKind::Close => "促单",
            SegmentKind::Interact => "互动答疑",
            SegmentKind::Opening => "开场暖场",
            SegmentKind::Transition => "过款衔接",
            SegmentKind::Closing => "收官",
        }
    }

    pub fn name_en(self) -> &'static str {
        match self {
            SegmentKind::Hook => "Hook",
            SegmentKind::Pain => "Pain point",
            SegmentKind::Selling => "Selling points",
            SegmentKind::Proof => "Proof",
            SegmentKind::Offer => "Price and offer",
            SegmentKind::Close => "Close",
            SegmentKind::Interact => "Q&A",
            SegmentKind::Opening => "Opening",
            SegmentKind::Transition => "Transition",
            SegmentKind::Closing => "Closing",
        }
    }
}

/// Who a cue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 中控/运营: the back-office console.
    Console,
    /// 场控: floor control (comments, rhythm).
    Floor,
    /// 副播: the assistant host.
    Assistant,
    /// Camera and props.
    Studio,
}

/// The crew's actions, from the cue vocabulary of the domain note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum CueAction {
    ListOn { link_no: Option<u32> },
    ListOff,
    PriceChange { price: f64 },
    CouponOn { detail: String },
    StockRelease { count: u64 },
    LuckyBag,
    Draw,
    PinCard { link_no: Option<u32> },
    ShowProp { name: String },
    Camera { shot: String },
    ScreenText { text: String },
    Timer { secs: u32 },
    Qa { topic: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cue {
    pub role: Role,
    #[serde(flatten)]
    pub action: CueAction,
    /// Seconds from the segment's start.
    pub at_secs: u32,
    /// What the crew reads (zh).
    pub label: String,
}

/// A segment before the model has written it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    pub kind: SegmentKind,
    pub start_secs: u32,
    pub target_secs: u32,
    pub cues: Vec<Cue>,
}

/// Splits `slot_secs` over the segments by their shares, rounding so the parts sum exactly to
/// the slot (largest remainder).
pub fn durations(slot_secs: u32) -> Vec<(SegmentKind, u32)> {
    let total: u32 = SegmentKind::ALL
        .iter()
        .map(|k| k.seconds_of_five_minutes())
        .sum();
    let exact: Vec<f64> = SegmentKind::ALL
        .iter()
        .map(|k| f64::from(slot_secs) * f64::from(k.seconds_of_five_minutes()) / f64::from(total))
        .collect();
    let mut parts: Vec<u32> = exact.iter().map(|x| x.floor() as u32).collect();
    let short = slot_secs - parts.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    for &i in order.iter().take(short as usize) {
        parts[i] += 1;
    }
    SegmentKind::ALL.iter().copied().zip(parts).collect()
}

fn cue(role: Role, action: CueAction, at_secs: u32, label: String) -> Cue {
    Cue {
        role,
        action,
        at_secs,
        label,
    }
}

/// The cues a segment gets from the facts.
fn cues_for(kind: SegmentKind, target: u32, p: &Product) -> Vec<Cue> {
    let link = |n: Option<u32>| {
        n.map(|n| format!("{n} 号链接"))
            .unwrap_or_else(|| "商品链接".into())
    };
    let mut out = Vec::new();
    match kind {
        SegmentKind::Hook => {
            out.push(cue(
                Role::Console,
                CueAction::PinCard { link_no: p.link_no },
                0,
                format!("弹讲解卡：{}", link(p.link_no)),
            ));
            out.push(cue(
                Role::Floor,
                CueAction::ScreenText {
                    text: "新进来的宝宝扣 1".into(),
                },
                0,
                "评论区引导：新进来的扣 1".into(),
            ));
        }
        SegmentKind::Pain => {
            if let Some(s) = p.scenarios.first() {
                out.push(cue(
                    Role::Studio,
                    CueAction::ShowProp { name: s.clone() },
                    0,
                    format!("道具/场景演示：{s}"),
                ));
            }
        }
        SegmentKind::Selling => {
            out.push(cue(
                Role::Studio,
                CueAction::Camera {
                    shot: "closeup".into(),
                },
                0,
                "镜头：产品特写".into(),
            ));
            let step = target / (p.selling_points.len() as u32 + 1).max(1);
            for (i, sp) in p.selling_points.iter().enumerate() {
                out.push(cue(
                    Role::Assistant,
                    CueAction::ShowProp {
                        name: sp.feature.clone(),
                    },
                    step * i as u32,
                    format!("副播展示：{}", sp.feature),
                ));
            }
        }
        SegmentKind::Proof => {
            for c in &p.certificates {
                out.push(cue(
                    Role::Studio,
                    CueAction::ScreenText {
                        text: format!("{} {}", c.name, c.number),
                    },
                    0,
                    format!("出示证书：{} {}", c.name, c.number),
                ));
            }
            for sp in p.selling_points.iter().filter(|sp| !sp.proof.is_empty()) {
                out.push(cue(
                    Role::Studio,
                    CueAction::ScreenText {
                        text: sp.proof.clone(),
                    },
                    0,
                    format!("出示依据：{}", sp.proof),
                ));
            }
        }
        SegmentKind::Offer => {
            if let Some(lp) = p.live_price {
                out.push(cue(
                    Role::Console,
                    CueAction::PriceChange { price: lp },
                    target / 2,
                    format!("改价：直播价 {} 元", price(lp)),
                ));
            }
            for m in p
                .mechanism
                .iter()
                .filter(|m| m.contains('券') || m.to_ascii_lowercase().contains("coupon"))
            {
                out.push(cue(
                    Role::Console,
                    CueAction::CouponOn { detail: m.clone() },
                    target / 2,
                    format!("上券：{m}"),
                ));
            }
            out.push(cue(
                Role::Console,
                CueAction::ListOn { link_no: p.link_no },
                target.saturating_sub(5),
                format!("上架：{}", link(p.link_no)),
            ));
        }
        SegmentKind::Close => {
            if let Some(s) = p.stock {
                out.push(cue(
                    Role::Console,
                    CueAction::StockRelease { count: s },
                    0,
                    format!("放库存：{s} 件"),
                ));
            }
            out.push(cue(
                Role::Assistant,
                CueAction::ScreenText {
                    text: link(p.link_no),
                },
                0,
                format!("副播喊：{}", link(p.link_no)),
            ));
            out.push(cue(
                Role::Floor,
                CueAction::Timer { secs: target },
                0,
                format!("倒计时 {target} 秒"),
            ));
        }
        SegmentKind::Interact => {
            for f in p.faq.iter().take(3) {
                out.push(cue(
                    Role::Floor,
                    CueAction::Qa {
                        topic: f.question.clone(),
                    },
                    0,
                    format!("置顶问答：{}", f.question),
                ));
            }
        }
        // The show's own segments get their cues in `plan_show`.
        SegmentKind::Opening | SegmentKind::Transition | SegmentKind::Closing => {}
    }
    out
}

/// The per-product skeleton: every segment, its start, target and cues.
pub fn plan(p: &Product, show: &ShowSettings) -> Vec<Planned> {
    let mut start = 0;
    durations(show.slot_min * 60)
        .into_iter()
        .map(|(kind, target)| {
            let s = Planned {
                kind,
                start_secs: start,
                target_secs: target,
                cues: cues_for(kind, target, p),
            };
            start += target;
            s
        })
        .collect()
}

/// A whole show's segments: the opening, each product's slot (in the order given) with a
/// transition between products, and the closing. Each entry names the product it belongs to.
pub fn plan_show(products: &[&Product], show: &ShowSettings) -> Vec<(Option<usize>, Planned)> {
    let mut out = Vec::new();
    let link = |n: Option<u32>| {
        n.map(|n| format!("{n} 号链接"))
            .unwrap_or_else(|| "商品链接".into())
    };
    let mut opening_cues = vec![cue(
        Role::Floor,
        CueAction::ScreenText {
            text: "欢迎来到直播间".into(),
        },
        0,
        "评论区欢迎新进来的朋友".into(),
    )];
    if let Some(first) = products.first() {
        opening_cues.push(cue(
            Role::Console,
            CueAction::PinCard {
                link_no: first.link_no,
            },
            OPENING_SECS / 2,
            format!("预告首款：{}", link(first.link_no)),
        ));
    }
    out.push((
        None,
        Planned {
            kind: SegmentKind::Opening,
            start_secs: 0,
            target_secs: OPENING_SECS,
            cues: opening_cues,
        },
    ));
    for (i, p) in products.iter().enumerate() {
        if i > 0 {
            let cues = vec![cue(
                Role::Console,
                CueAction::PinCard { link_no: p.link_no },
                0,
                format!("切换讲解卡：{}", link(p.link_no)),
            )];
            out.push((
                Some(i),
                Planned {
                    kind: SegmentKind::Transition,
                    start_secs: 0,
                    target_secs: TRANSITION_SECS,
                    cues,
                },
            ));
        }
        out.extend(plan(p, show).into_iter().map(|s| (Some(i), s)));
    }
    let closing_cues = vec![cue(
        Role::Floor,
        CueAction::ScreenText {
            text: "关注主播，下场见".into(),
        },
        0,
        "评论区引导关注，预告下一场".into(),
    )];
    out.push((
        None,
        Planned {
            kind: SegmentKind::Closing,
            start_secs: 0,
            target_secs: CLOSING_SECS,
            cues: closing_cues,
        },
    ));
    let mut start = 0;
    for (_, s) in &mut out {
        s.start_secs = start;
        start += s.target_secs;
    }
    out
}

/// The whole show's own segments (seconds).
pub const OPENING_SECS: u32 = 60;
pub const TRANSITION_SECS: u32 = 20;
pub const CLOSING_SECS: u32 = 60;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::product::{Certificate, Faq, SellingPoint};

    #[test]
    fn the_five_minute_slot_follows_the_note() {
        let d = durations(300);
        assert_eq!(
            d.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            [20, 30, 90, 30, 50, 50, 30]
        );
    }

    #[test]
    fn every_slot_length_sums_exactly_and_keeps_every_segment() {
        for min in 1..=15 {
            let d = durations(min * 60);
            assert_eq!(d.len(), 7);
            assert_eq!(d.iter().map(|(_, s)| s).sum::<u32>(), min * 60, "{min} min");
            assert!(d.iter().all(|(_, s)| *s > 0));
            assert_eq!(
                d.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                SegmentKind::ALL
            );
        }
    }

    #[test]
    fn a_show_opens_hands_over_between_products_and_closes() {
        let a = Product {
            name: "a".into(),
            link_no: Some(1),
            ..Default::default()
        };
        let b = Product {
            name: "b".into(),
            link_no: Some(2),
            ..Default::default()
        };
        let show = ShowSettings {
            slot_min: 2,
            ..Default::default()
        };
        let plan = plan_show(&[&a, &b], &show);
        let kinds: Vec<_> = plan.iter().map(|(p, s)| (*p, s.kind)).collect();
        assert_eq!(kinds.first(), Some(&(None, SegmentKind::Opening)));
        assert_eq!(kinds.last(), Some(&(None, SegmentKind::Closing)));
        assert_eq!(
            kinds
                .iter()
                .filter(|(_, k)| *k == SegmentKind::Transition)
                .count(),
            1
        );
        assert_eq!(kinds.iter().filter(|(p, _)| *p == Some(1)).count(), 8);
        let total: u32 = plan.iter().map(|(_, s)| s.target_secs).sum();
        assert_eq!(
            total,
            OPENING_SECS + 2 * 120 + TRANSITION_SECS + CLOSING_SECS
        );
        // Starts run on across the whole show.
        for w in plan.windows(2) {
            assert_eq!(w[1].1.start_secs, w[0].1.start_secs + w[0].1.target_secs);
        }
        let transition = &plan
            .iter()
            .find(|(_, s)| s.kind == SegmentKind::Transition)
            .unwrap()
            .1;
        assert_eq!(
            transition.cues[0].action,
            CueAction::PinCard { link_no: Some(2) }
        );
    }

    #[test]
    fn cues_come_from_the_facts() {
        let p = Product {
            name: "保温杯".into(),
            selling_points: vec![SellingPoint {
                feature: "316 内胆".into(),
                proof: "SGS 报告".into(),
                ..Default::default()
            }],
            live_price: Some(129.0),
            mechanism: vec!["满 200 减 20 券".into(), "送杯套".into()],
            stock: Some(500),
            link_no: Some(3),
            certificates: vec![Certificate {
                name: "食品接触材料检测".into(),
                number: "A2024-001".into(),
                issuer: "SGS".into(),
            }],
            faq: vec![Faq {
                question: "能装热水吗".into(),
                answer: "能".into(),
            }],
            ..Default::default()
        };
        let segs = plan(&p, &ShowSettings::default());
        let starts: Vec<u32> = segs.iter().map(|s| s.start_secs).collect();
        assert_eq!(starts, [0, 20, 50, 140, 170, 220, 270]);
        let actions = |k: SegmentKind| {
            segs.iter()
                .find(|s| s.kind == k)
                .unwrap()
                .cues
                .iter()
                .map(|c| c.action.clone())
                .collect::<Vec<_>>()
        };
        assert!(actions(SegmentKind::Hook).contains(&CueAction::PinCard { link_no: Some(3) }));
        assert!(actions(SegmentKind::Offer).contains(&CueAction::PriceChange { price: 129.0 }));
        assert!(actions(SegmentKind::Offer).contains(&CueAction::CouponOn {
            detail: "满 200 减 20 券".into()
        }));
        assert!(actions(SegmentKind::Offer).contains(&CueAction::ListOn { link_no: Some(3) }));
        assert!(actions(SegmentKind::Close).contains(&CueAction::StockRelease { count: 500 }));
        assert!(
            actions(SegmentKind::Proof)
                .iter()
                .any(|a| matches!(a, CueAction::ScreenText { text } if text.contains("A2024-001")))
        );
        assert!(actions(SegmentKind::Interact).contains(&CueAction::Qa {
            topic: "能装热水吗".into()
        }));
        // Cues stay inside their segment.
        for s in &segs {
            assert!(
                s.cues.iter().all(|c| c.at_secs < s.target_secs.max(1)),
                "{:?}",
                s
            );
        }
        // No price, no stock: no price change, no stock release (never invented).
        let bare = Product {
            name: "x".into(),
            ..Default::default()
        };
        let segs = plan(&bare, &ShowSettings::default());
        assert!(segs.iter().flat_map(|s| &s.cues).all(|c| !matches!(
            c.action,
            CueAction::PriceChange { .. } | CueAction::StockRelease { .. }
        )));
    }
}
