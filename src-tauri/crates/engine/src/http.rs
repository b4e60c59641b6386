//! What the remote back ends (an OpenAI-compatible text server, a ComfyUI image server) share:
//! how a server address is checked and how the HTTP client is set up.

use std::time::Duration;

use crate::error::{Error, Result};

/// Checks a server address the user typed; `what` names it in the messages ("server
/// address", "ComfyUI address").
pub fn check_url(address: &str, what: &str) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(address.trim())
        .map_err(|e| Error::invalid(format!("the {what} “{address}” is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(format!(
            "the {what} must start with http:// or https://"
        )));
    }
    Ok(url)
}

/// A client that waits `timeout_s` for each reply (at most 30 s for the connection).
pub fn client(timeout_s: u32) -> Result<reqwest::Client> {
    // reqwest is built without a default TLS provider; ring is ours. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timeout = Duration::from_secs(timeout_s.max(1) as u64);
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(30)))
        .read_timeout(timeout)
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client: {e}")))
}
