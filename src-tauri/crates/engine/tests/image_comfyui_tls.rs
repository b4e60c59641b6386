//! A ComfyUI server behind https, as teams put one behind a proxy: the run is followed over
//! `wss://` with the same trust as the HTTP requests, and a certificate nobody here trusts is
//! refused with a message that says so and how to trust a team's own authority. The trust
//! comes from SSL_CERT_FILE, which replaces the system's store; this file holds one test so
//! that setting it races with nothing.

mod comfyui_fake;
mod common;

use comfyui_fake::*;
use common::gallery_len;

use atelier_engine::text::chat::{ChatMessage, Role};
use atelier_engine::text::remote::RemoteConfig;
use atelier_engine::text::{SamplingParams, TextRequest};
use tokio_util::sync::CancellationToken;

#[test]
fn an_https_server_is_followed_over_wss_and_a_stranger_certificate_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let team = Authority::new("Atelier test team CA");
    let stranger = Authority::new("Somebody else's CA");
    let trusted = dir.path().join("team-ca.pem");
    std::fs::write(&trusted, team.pem()).unwrap();
    // SAFETY: this binary's only test, before its runtime starts: no other thread reads the
    // environment yet.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &trusted);
        std::env::remove_var("SSL_CERT_DIR");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            // A certificate from an authority this computer does not trust: refused before
            // anything is sent, with the reason and the way out.
            let (url, fake) = serve_tls(true, stranger.server()).await;
            let home = dir.path().join("stranger");
            let refused = engine(&home, &url);
            let e = refused.comfyui_server().await.unwrap_err();
            assert_eq!(e.kind(), "remote_unreachable");
            let msg = e.to_string();
            assert!(msg.contains("certificate was refused"), "{msg}");
            assert!(msg.contains("SSL_CERT_FILE"), "{msg}");
            let project = refused.store().create_project("stranger").unwrap();
            let ran = run(&refused, project.id, params(3), None).await;
            let (kind, msg) = ran.result.unwrap_err();
            assert_eq!(kind, "remote_unreachable", "{msg}");
            assert!(msg.contains("certificate was refused"), "{msg}");
            assert!(fake.lock().unwrap().prompts.is_empty());
            assert_eq!(gallery_len(&refused, project.id), 0);

            // The text back end says the same of the same server.
            let config = RemoteConfig {
                base_url: format!("{url}/v1"),
                model: "any".into(),
                api_key: None,
                timeout_s: 5,
                extra_sampling: false,
            };
            let request = TextRequest {
                model: "remote".into(),
                messages: vec![ChatMessage::new(Role::User, "hello")],
                params: SamplingParams::default(),
            };
            let e = atelier_engine::text::remote::generate(
                &config,
                &request,
                1,
                &CancellationToken::new(),
                &mut |_: &str| {},
            )
            .await
            .unwrap_err();
            assert_eq!(e.kind(), "remote_unreachable");
            assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");

            // The team's own authority, trusted through SSL_CERT_FILE: the run is followed
            // over wss (its steps and previews arrive) and lands like any other.
            let (url, fake) = serve_tls(true, team.server()).await;
            assert!(url.starts_with("https://"));
            let home = dir.path().join("team");
            let engine = engine(&home, &url);
            let info = engine.comfyui_server().await.unwrap();
            assert_eq!(info.version.as_deref(), Some("0.3.99"));
            let project = engine.store().create_project("team").unwrap();
            let ran = run(&engine, project.id, params(9), None).await;
            let ids = ran.result.unwrap();
            assert_eq!(fake.lock().unwrap().sockets.len(), 1, "no wss connection");
            assert!(ran.previews > 0, "no previews: the run was polled");
            assert_eq!(ran.last_progress, Some((6, 6)));
            let (_, img) = rgb(&engine, ids[0]);
            assert!(img.pixels().all(|px| px.0 == seed_colour(9)));
        });
}
