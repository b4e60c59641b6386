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
    client_with_bearer(timeout_s, None)
}

/// [`client`] that sends `Authorization: Bearer <key>` with every request (marked sensitive,
/// so it never appears in reqwest's debug output).
pub fn client_with_bearer(timeout_s: u32, key: Option<&str>) -> Result<reqwest::Client> {
    // reqwest is built without a default TLS provider; ring is ours. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timeout = Duration::from_secs(timeout_s.max(1) as u64);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        headers.insert(reqwest::header::AUTHORIZATION, bearer(key)?);
    }
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(30)))
        .read_timeout(timeout)
        .default_headers(headers)
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client: {e}")))
}

/// `Bearer <key>` as a sensitive header value; a key with characters a header cannot carry
/// (line breaks, control characters) is refused with the reason.
pub fn bearer(key: &str) -> Result<reqwest::header::HeaderValue> {
    let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(
        |_| Error::invalid("the API key contains characters an HTTP header cannot carry"),
    )?;
    v.set_sensitive(true);
    Ok(v)
}
