//! Chat templates rendered as the models expect, from the template text the model files carry.

use atelier_engine::text::chat::{ChatMessage, ChatTemplate, Role};

const SMOLLM2: &str = include_str!("fixtures/smollm2-135m-instruct.chat_template.jinja");

fn user(s: &str) -> ChatMessage {
    ChatMessage::new(Role::User, s)
}

#[test]
fn smollm2_adds_its_default_system_prompt_and_the_generation_prompt() {
    let t = ChatTemplate::new(Some(SMOLLM2), "<|im_start|>", "<|im_end|>").unwrap();
    assert!(t.from_model);
    let out = t.render(&[user("写一句口红广告语")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n写一句口红广告语<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_keeps_a_given_system_prompt_and_multi_turn_history() {
    let t = ChatTemplate::new(Some(SMOLLM2), "", "").unwrap();
    let out = t
        .render(
            &[
                ChatMessage::new(Role::System, "You write ad copy."),
                user("Slogan for tea?"),
                ChatMessage::new(Role::Assistant, "Calm in a cup."),
                user("Shorter."),
            ],
            false,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou write ad copy.<|im_end|>\n<|im_start|>user\nSlogan for tea?<|im_end|>\n\
         <|im_start|>assistant\nCalm in a cup.<|im_end|>\n<|im_start|>user\nShorter.<|im_end|>\n"
    );
}

#[test]
fn no_template_falls_back_to_chatml() {
    let t = ChatTemplate::new(None, "", "").unwrap();
    assert!(!t.from_model);
    assert_eq!(
        t.render(&[user("hi")], true).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn the_helpers_real_templates_call_work() {
    // raise_exception: the template's own message reaches the user.
    let strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}ok";
    let t = ChatTemplate::new(Some(strict), "", "").unwrap();
    let err = t
        .render(&[ChatMessage::new(Role::Assistant, "x")], false)
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
    assert!(
        err.to_string()
            .contains("Conversations must start with a user message"),
        "{err}"
    );
    assert_eq!(t.render(&[user("x")], false).unwrap(), "ok");

    // Python string methods (pycompat), bos_token, strftime_now and a non-escaping tojson.
    let t = ChatTemplate::new(
        Some("{{ bos_token }}{{ messages[0].content.strip().upper() }}|{{ messages[0].content.startswith(' a') }}|{{ strftime_now('%Y') | length }}|{{ {'k': '<b>&'} | tojson }}"),
        "<s>",
        "</s>",
    )
    .unwrap();
    // Booleans print as Python does (True), as templates written for Jinja2 expect.
    assert_eq!(
        t.render(&[user(" a<b> ")], false).unwrap(),
        "<s>A<B>|True|4|{\"k\":\"<b>&\"}"
    );
}

#[test]
fn broken_templates_and_empty_chats_are_clear_errors() {
    let err = ChatTemplate::new(Some("{% for m in messages %}{{ m.content }"), "", "").unwrap_err();
    assert!(err.to_string().contains("does not compile"), "{err}");
    let t = ChatTemplate::new(None, "", "").unwrap();
    assert_eq!(t.render(&[], true).unwrap_err().kind(), "invalid_input");
}
