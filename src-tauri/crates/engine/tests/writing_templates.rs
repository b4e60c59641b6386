//! The template catalogue: every shipped template loads and renders with its sample inputs; bad
//! input and broken files give clear errors and lose nothing else.

use atelier_engine::compliance::{CheckOptions, Checker};
use atelier_engine::writing::templates::{self, BrandVoice, GROUPS, PromptContext, Values};

#[test]
fn the_catalogue_covers_every_group_and_every_template_renders() {
    let (catalogue, problems) = templates::load(None);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(catalogue.len() >= 24, "{} templates", catalogue.len());
    for g in GROUPS {
        assert!(
            catalogue.iter().filter(|t| t.group == g).count() >= 3,
            "group {g} has fewer than 3 templates"
        );
    }
    let checker = Checker::builtin().unwrap();
    let brand = BrandVoice {
        tone_words: vec!["温柔".into()],
        must_mention: vec!["水润".into()],
        banned: vec!["便宜".into()],
        examples: vec!["每一天都水润。".into()],
        trademarks: vec![" 最牛 ".into()],
    };
    for t in &catalogue {
        let samples = t.samples();
        // Every required input has a sample, so the tests (and the form's placeholders) cover it.
        for i in t.inputs.iter().filter(|i| i.required) {
            assert!(
                samples.contains_key(&i.id),
                "{}: required input {} has no sample",
                t.id,
                i.id
            );
        }
        let opts = CheckOptions {
            platform: t.platform.clone(),
            ..Default::default()
        };
        let ctx = PromptContext {
            tone: t.tones.first().cloned(),
            brand: Some(brand.clone()),
            rules: Some(
                checker
                    .prompt_summary(&opts, t.output_language != "en")
                    .unwrap(),
            ),
        };
        let prompt = t
            .render(&samples, &ctx)
            .unwrap_or_else(|e| panic!("{}: {e}", t.id));
        for i in t.inputs.iter().filter(|i| i.required) {
            let v = samples[&i.id].lines().next().unwrap_or_default();
            assert!(
                prompt.contains(v) || i.kind != templates::InputKind::Text,
                "{}: the prompt lacks {}",
                t.id,
                i.id
            );
        }
        assert!(
            prompt.contains("水润"),
            "{}: brand voice not in the prompt",
            t.id
        );
        assert!(!prompt.contains("\n\n\n"), "{}: blank-line runs", t.id);
        assert!(
            !prompt.contains("{{") && !prompt.contains("{%"),
            "{}: unrendered syntax",
            t.id
        );
        // Without optional context the prompt still renders.
        t.render(&samples, &PromptContext::default()).unwrap();
    }
}

#[test]
fn bad_form_values_are_refused_with_the_field_named() {
    let (catalogue, _) = templates::load(None);
    let t = catalogue.iter().find(|t| t.id == "xhs-seeding").unwrap();
    let mut v = t.samples();
    v.remove("product");
    let err = t.render(&v, &PromptContext::default()).unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
    assert!(err.to_string().contains("商品名称"), "{err}");

    let mut v = t.samples();
    v.insert("product".into(), "长".repeat(61));
    assert!(
        t.render(&v, &PromptContext::default())
            .unwrap_err()
            .to_string()
            .contains("at most 60")
    );

    let mut v = t.samples();
    v.insert("category".into(), "weapons".into());
    assert!(
        t.render(&v, &PromptContext::default())
            .unwrap_err()
            .to_string()
            .contains("must be one of")
    );

    let mut v: Values = t.samples();
    v.insert("nonsense".into(), "x".into());
    assert!(t.render(&v, &PromptContext::default()).is_err());

    let d = catalogue
        .iter()
        .find(|t| t.id == "douyin-video-script")
        .unwrap();
    let mut v = d.samples();
    v.insert("duration".into(), "9999".into());
    assert!(
        d.render(&v, &PromptContext::default())
            .unwrap_err()
            .to_string()
            .contains("between")
    );
    v.insert("duration".into(), "NaN".into());
    assert!(d.render(&v, &PromptContext::default()).is_err());
}

const USER_TEMPLATE: &str = r#"
id = "xhs-seeding"
group = "platform"
name_zh = "我的种草笔记"
name_en = "My note"
framework = "STAR"
output_language = "zh"
prompt = "写一篇关于{{ product }}的笔记"
[[inputs]]
id = "product"
type = "text"
label_zh = "商品"
label_en = "Product"
required = true
sample = "面霜"
"#;

#[test]
fn a_broken_user_template_is_reported_and_skipped_and_a_user_copy_replaces_the_shipped_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mine.toml"), USER_TEMPLATE).unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        "id = \"x\"\nprompt = '''unterminated",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("typo.toml"),
        USER_TEMPLATE
            .replace("xhs-seeding", "typo")
            .replace("{{ product }}", "{{ prodcut }}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("badsyntax.toml"),
        USER_TEMPLATE
            .replace("xhs-seeding", "bad")
            .replace("{{ product }}", "{% if %}"),
    )
    .unwrap();
    let (catalogue, problems) = templates::load(Some(dir.path()));
    let mut files: Vec<String> = problems
        .iter()
        .map(|p| p.file.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["badsyntax.toml", "broken.toml", "typo.toml"],
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.message.contains("prodcut")),
        "the typo is named: {problems:?}"
    );
    let mine = catalogue.iter().find(|t| t.id == "xhs-seeding").unwrap();
    assert_eq!(mine.name_zh, "我的种草笔记");
    assert!(mine.source.ends_with("mine.toml"));
    assert!(catalogue.len() >= 24, "the rest still load");
}

#[test]
fn a_template_that_renders_an_overlong_prompt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let long = USER_TEMPLATE.replace("xhs-seeding", "long").replace(
        "写一篇关于{{ product }}的笔记",
        "{% for i in range(20) %}{{ product }}{% endfor %}",
    );
    std::fs::write(dir.path().join("long.toml"), long).unwrap();
    let (catalogue, problems) = templates::load(Some(dir.path()));
    assert!(problems.is_empty(), "{problems:?}");
    let t = catalogue.iter().find(|t| t.id == "long").unwrap();
    let mut v = Values::new();
    v.insert("product".into(), "面".repeat(1000));
    let err = t.render(&v, &PromptContext::default()).unwrap_err();
    assert!(err.to_string().contains("20000 characters"), "{err}");
}

#[test]
#[ignore = "prints one rendered prompt for review: cargo test --test writing_templates -- --ignored --nocapture"]
fn print_a_rendered_prompt() {
    let (catalogue, _) = templates::load(None);
    let t = catalogue.iter().find(|t| t.id == "xhs-seeding").unwrap();
    let checker = Checker::builtin().unwrap();
    let ctx = PromptContext {
        tone: Some("闺蜜聊天".into()),
        brand: None,
        rules: Some(
            checker
                .prompt_summary(
                    &CheckOptions {
                        platform: Some("xiaohongshu".into()),
                        ..Default::default()
                    },
                    true,
                )
                .unwrap(),
        ),
    };
    println!("{}", t.render(&t.samples(), &ctx).unwrap());
}

#[test]
fn a_projects_brand_voice_is_stored_trimmed_and_size_checked() {
    use atelier_engine::{Access, Engine, Home};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine =
        Engine::open(Home::at(dir.path()), Access::Exclusive, rt.handle().clone()).unwrap();
    let p = engine.store().create_project("品牌").unwrap();
    assert!(engine.brand_voice(p.id).unwrap().is_empty());
    let v = BrandVoice {
        tone_words: vec![" 温柔 ".into(), "".into()],
        must_mention: vec!["水润".into()],
        banned: vec!["便宜".into()],
        examples: vec!["每一天都水润。".into()],
        trademarks: vec![" 最牛 ".into()],
    };
    let stored = engine.set_brand_voice(p.id, &v).unwrap();
    assert_eq!(stored.tone_words, ["温柔"]);
    assert_eq!(stored.trademarks, ["最牛"]);
    assert_eq!(engine.brand_voice(p.id).unwrap(), stored);
    let too_many = BrandVoice {
        examples: vec!["x".into(); 4],
        ..Default::default()
    };
    assert_eq!(
        engine.set_brand_voice(p.id, &too_many).unwrap_err().kind(),
        "invalid_input"
    );
    assert_eq!(
        engine.brand_voice(p.id).unwrap(),
        stored,
        "nothing lost on a refused save"
    );
    engine.store().trash_project(p.id).unwrap();
    assert!(
        engine.set_brand_voice(p.id, &v).is_err(),
        "a trashed project is read-only"
    );
    assert_eq!(
        engine.set_brand_voice(999, &v).unwrap_err().kind(),
        "not_found"
    );
}

#[test]
fn a_brands_trademarks_go_into_the_check_scope_of_its_copy() {
    use atelier_engine::writing::compose::{self, CopyRequest};
    let (catalogue, _) = templates::load(None);
    let t = catalogue.iter().find(|t| t.id == "slogan").unwrap();
    let checker = Checker::builtin().unwrap();
    let req: CopyRequest = serde_json::from_value(serde_json::json!({
        "project_id": 1, "template_id": "slogan", "values": {"product": "最牛牌保温杯"}, "model": "m", "variants": 1,
        "brand": {"trademarks": ["最牛"]}
    }))
    .unwrap();
    let jobs = compose::jobs(&req, t, &checker).unwrap();
    let scope: CheckOptions =
        serde_json::from_value(jobs[0].purpose.as_ref().unwrap()["check"].clone()).unwrap();
    assert_eq!(scope.trademarks, ["最牛"]);
    // Checked with that scope, the trademark needs evidence instead of being a violation.
    let report = checker.check("最牛牌保温杯，保温一整天", &scope).unwrap();
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.verdict == atelier_engine::compliance::Verdict::NeedsEvidence),
        "{:?}",
        report.findings
    );
    assert!(!report.findings.is_empty());
}
