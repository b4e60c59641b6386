//! What a failed command sends to the UI: `{kind, message}`.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct UiError {
    pub kind: String,
    pub message: String,
}

impl UiError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        UiError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl From<atelier_engine::Error> for UiError {
    fn from(e: atelier_engine::Error) -> Self {
        UiError {
            kind: e.kind().into(),
            message: e.to_string(),
        }
    }
}

pub type CmdResult<T> = Result<T, UiError>;
