//! The writing studio's engine: the template catalogue (data in `assets/templates/`) and prompt
//! building. Generation itself goes through [`crate::text`]; checking through
//! [`crate::compliance`].

pub mod compose;
pub mod templates;
pub mod user_templates;
