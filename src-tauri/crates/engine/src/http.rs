//! What the remote back ends (an OpenAI-compatible text server, a ComfyUI image server) share:
//! how a server address is checked and how the HTTP client is set up.

use std::sync::Arc;
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
    install_crypto();
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

/// reqwest and the WebSocket client are built without a default TLS provider; ring is ours.
/// Installing it twice is harmless.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS for connections reqwest does not make (ComfyUI's `wss://`), verified as reqwest
/// verifies `https://`: against the system's certificate store, which `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` can replace for a team's own certificate authority.
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    use rustls_platform_verifier::ConfigVerifierExt;
    install_crypto();
    let config = rustls::ClientConfig::with_platform_verifier()
        .map_err(|e| Error::Internal(format!("TLS set-up: {e}")))?;
    Ok(Arc::new(config))
}

/// When a request failed because the server's certificate was refused, what to tell the user
/// (the certificate problem and how to trust a team's own authority); `None` for other failures.
/// reqwest's message alone says only "error sending request", whatever the cause.
pub fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(why)) = e.downcast_ref::<rustls::Error>() {
            let mut message = format!("its certificate was refused ({why})");
            if matches!(why, rustls::CertificateError::UnknownIssuer) {
                message.push_str(
                    ": no authority this computer trusts signed it. If the server uses your \
                     team's own certificate authority, add that authority to this computer's \
                     certificates, or start Atelier with SSL_CERT_FILE naming a PEM file of \
                     the authorities to trust",
                );
            }
            return Some(message);
        }
        // io::Error's `source()` skips the error it wraps (hyper wraps rustls's error in two
        // of them), so step into it instead.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}
