//! Chat templates: the Jinja template a model ships in `tokenizer.chat_template`, rendered with
//! minijinja, with the helpers real templates call (`raise_exception`, `strftime_now`, Python
//! string and dict methods, a `tojson` that does not HTML-escape). Files without a template get
//! ChatML, which SmolLM2 and Qwen use.

use minijinja::value::Value;
use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// ChatML, used when a model file carries no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the model's own template is used (false: the ChatML fallback).
    pub from_model: bool,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("from_model", &self.from_model)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source` (or ChatML when `None`). A template that does not compile is an error
    /// naming the problem, not a silent fallback: the model would be prompted wrongly.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function(
            "strftime_now",
            |format: String| -> std::result::Result<String, JinjaError> {
                strftime_now(&format).ok_or_else(|| {
                    JinjaError::new(
                        ErrorKind::InvalidOperation,
                        format!("unsupported date format {format}"),
                    )
                })
            },
        );
        // Hugging Face's tojson does not HTML-escape; minijinja's does. Tool schemas and JSON
        // examples in prompts must reach the model unchanged.
        env.add_filter(
            "tojson",
            |v: Value, indent: Option<usize>| -> std::result::Result<String, JinjaError> {
                let json = serde_json::to_value(&v)
                    .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
                let out = match indent {
                    Some(n) => {
                        let mut buf = Vec::new();
                        let indent = " ".repeat(n);
                        let fmt = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
                        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
                        json.serialize(&mut ser).map_err(|e| {
                            JinjaError::new(ErrorKind::InvalidOperation, e.to_string())
                        })?;
                        String::from_utf8(buf).unwrap_or_default()
                    }
                    None => serde_json::to_string(&json)
                        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?,
                };
                Ok(out)
            },
        );
        let from_model = source.is_some();
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_owned())
            .map_err(|e| {
                Error::invalid(format!("the model's chat template does not compile: {e}"))
            })?;
        Ok(ChatTemplate {
            env,
            from_model,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid("a chat needs at least one message"));
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Internal(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| {
            // raise_exception's message is the template author's explanation; show it as is.
            let detail = e
                .detail()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string());
            Error::invalid(format!(
                "the model's chat template refused these messages: {detail}"
            ))
        })
    }
}

/// The subset of strftime that chat templates use (`%d %b %Y`, `%Y-%m-%d`, ...), for today (UTC).
fn strftime_now(format: &str) -> Option<String> {
    let now = time::OffsetDateTime::now_utc();
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[now.month() as usize - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'Y' => out.push_str(&now.year().to_string()),
            'm' => out.push_str(&format!("{:02}", now.month() as u8)),
            'd' => out.push_str(&format!("{:02}", now.day())),
            'B' => out.push_str(month),
            'b' => out.push_str(&month[..3]),
            'H' => out.push_str(&format!("{:02}", now.hour())),
            'M' => out.push_str(&format!("{:02}", now.minute())),
            '%' => out.push('%'),
            _ => return None,
        }
    }
    Some(out)
}
