//! ComfyUI as the image backend, against the loopback server in `comfyui_fake`, which speaks
//! ComfyUI's HTTP API and WebSocket and paints each picture from the graph it was sent.

mod comfyui_fake;
mod common;

use comfyui_fake::*;
use common::{gallery_len, image_statuses};

use atelier_engine::image::{InitImage, Variation, metadata};
use atelier_engine::store::SettingsPatch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_runs_land_in_the_gallery_with_atelier_metadata() {
    let (url, fake) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let server = engine.comfyui_server().await.unwrap();
    assert_eq!(server.checkpoints, CHECKPOINTS);
    assert_eq!(server.version.as_deref(), Some("0.3.99"));
    assert_eq!(server.devices.len(), 1);

    let project = engine.store().create_project("remote").unwrap();
    let mut p = params(40);
    p.batch_count = 2;
    let ran = run(&engine, project.id, p.clone(), None).await;
    let ids = ran.result.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(ran.last_progress, Some((12, 12)), "steps of both images");
    assert!(ran.previews >= 2, "{} previews", ran.previews);
    assert!(
        ran.waiting.contains(&1),
        "the server's queue size did not reach the job: {:?}",
        ran.waiting
    );

    // What went to the server: Atelier's settings in ComfyUI's names, one prompt per image.
    let prompts = fake.lock().unwrap().prompts.clone();
    assert_eq!(prompts.len(), 2);
    let k = &prompts[0]["5"]["inputs"];
    assert_eq!(k["sampler_name"], "dpmpp_2m");
    assert_eq!(k["scheduler"], "karras");
    assert_eq!(
        (k["steps"].as_u64(), k["cfg"].as_f64()),
        (Some(6), Some(6.5))
    );
    assert_eq!(
        (
            k["seed"].as_u64(),
            prompts[1]["5"]["inputs"]["seed"].as_u64()
        ),
        (Some(40), Some(41))
    );
    assert_eq!(prompts[0]["1"]["inputs"]["ckpt_name"], "sd15.safetensors");
    assert_eq!(prompts[0]["2"]["inputs"]["text"], p.prompt);
    assert_eq!(prompts[0]["3"]["inputs"]["text"], "blurry");
    assert_eq!(prompts[0]["4"]["inputs"]["width"], 96);

    // What came back: the server's pixels, in a PNG with Atelier's record, A1111's text and
    // the AI label, like a local image.
    for (id, seed) in ids.iter().zip([40u64, 41]) {
        let (png, img) = rgb(&engine, *id);
        assert_eq!(img.dimensions(), (96, 64));
        assert!(img.pixels().all(|px| px.0 == seed_colour(seed)));
        let recalled = metadata::recall(&png).unwrap();
        let record = recalled.record.unwrap();
        assert_eq!(record.params.model, "comfyui:sd15.safetensors");
        assert_eq!(record.params.seed, Some(seed));
        assert_eq!(record.rng, "ComfyUI");
        let a1111 = metadata::a1111_parameters(&record);
        assert!(a1111.contains(&format!("Seed: {seed}")), "{a1111}");
        assert!(!a1111.contains("Model hash"), "{a1111}");
        let text = String::from_utf8_lossy(&png);
        assert!(
            text.contains("TC260:AIGC") || text.contains("AIGC"),
            "no AI label in the PNG"
        );
        let row = engine.store().generation(*id).unwrap();
        assert_eq!(row.model_id, "comfyui:sd15.safetensors");
    }

    // Same seed again: the same request, so the same picture (the server's determinism).
    let again = run(&engine, project.id, params(40), None)
        .await
        .result
        .unwrap();
    assert_eq!(rgb(&engine, again[0]).1, rgb(&engine, ids[0]).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_inpainting_sends_the_mask_as_alpha_and_keeps_the_rest_exactly() {
    let (url, fake) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("remote").unwrap();
    let source = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([x as u8, y as u8, 77]));
    let src_asset = engine
        .add_image_asset(
            project.id,
            &png(image::DynamicImage::ImageRgb8(source.clone())),
        )
        .unwrap();
    let mask =
        image::GrayImage::from_fn(96, 64, |x, _| image::Luma([if x < 48 { 255 } else { 0 }]));
    let mask_asset = engine
        .add_image_asset(
            project.id,
            &png(image::DynamicImage::ImageLuma8(mask.clone())),
        )
        .unwrap();

    // img2img without a mask: the source is encoded, denoised by the strength.
    let mut p = params(3);
    p.init_image = Some(InitImage {
        asset_id: src_asset.id,
        strength: 0.55,
        mask_asset_id: None,
    });
    let plain = run(&engine, project.id, p.clone(), None)
        .await
        .result
        .unwrap();
    let g = fake.lock().unwrap().prompts.last().unwrap().clone();
    assert_eq!(g["5"]["inputs"]["denoise"], 0.55);
    assert_eq!(g["9"]["class_type"], "VAEEncode");
    let mut inverted = source.clone();
    image::imageops::invert(&mut inverted);
    assert_eq!(rgb(&engine, plain[0]).1, inverted);

    // With a mask: uploaded as the source's alpha (transparent = repaint), and outside the
    // mask the result keeps the source's pixels exactly.
    p.init_image.as_mut().unwrap().mask_asset_id = Some(mask_asset.id);
    let out = run(&engine, project.id, p, None).await.result.unwrap();
    let g = fake.lock().unwrap().prompts.last().unwrap().clone();
    assert_eq!(g["10"]["class_type"], "InpaintModelConditioning");
    let name = g["8"]["inputs"]["image"].as_str().unwrap().to_owned();
    let uploaded = image::load_from_memory(&fake.lock().unwrap().uploads[&name])
        .unwrap()
        .to_rgba8();
    for (u, (s, m)) in uploaded.pixels().zip(source.pixels().zip(mask.pixels())) {
        assert_eq!(u.0, [s.0[0], s.0[1], s.0[2], 255 - m.0[0]]);
    }
    let (_, result) = rgb(&engine, out[0]);
    for (x, y, px) in result.enumerate_pixels() {
        let expect = if x < 48 {
            inverted.get_pixel(x, y)
        } else {
            source.get_pixel(x, y)
        };
        assert_eq!(px, expect, "pixel {x},{y}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_failures_are_clear_and_leave_no_image() {
    let (url, fake) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("remote").unwrap();
    let fails = |r: Ran| r.result.unwrap_err();

    let mut p = params(1);
    p.model = "comfyui:missing.safetensors".into();
    let (kind, msg) = fails(run(&engine, project.id, p, None).await);
    assert_eq!(kind, "remote_rejected");
    assert!(
        msg.contains("CheckpointLoaderSimple") && msg.contains("missing.safetensors"),
        "{msg}"
    );

    let mut p = params(1);
    p.prompt = "explode".into();
    let (kind, msg) = fails(run(&engine, project.id, p, None).await);
    assert_eq!(kind, "remote_server");
    assert!(
        msg.contains("KSampler") && msg.contains("CUDA out of memory"),
        "{msg}"
    );

    let mut p = params(1);
    p.prompt = "garbled".into();
    let (kind, msg) = fails(run(&engine, project.id, p, None).await);
    assert_eq!(kind, "remote_protocol");
    assert!(msg.contains("cannot be read"), "{msg}");

    // Refused before queueing.
    let mut p = params(1);
    p.variation = Some(Variation {
        seed: 2,
        strength: 0.1,
    });
    let (kind, msg) = fails(run(&engine, project.id, p, None).await);
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("variation"), "{msg}");
    assert_eq!(
        fake.lock().unwrap().prompts.len(),
        2,
        "the refused ones were not queued"
    );

    assert_eq!(gallery_len(&engine, project.id), 0);
    assert_eq!(image_statuses(&engine), ["failed"; 3]);

    // A server that is down, and none set up at all.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_url: Some(down),
            ..Default::default()
        })
        .unwrap();
    let (kind, msg) = fails(run(&engine, project.id, params(1), None).await);
    assert_eq!(kind, "remote_unreachable");
    assert!(msg.contains("cannot reach ComfyUI"), "{msg}");
    assert!(engine.comfyui_server().await.is_err());
    engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_url: Some(String::new()),
            ..Default::default()
        })
        .unwrap();
    let (kind, msg) = fails(run(&engine, project.id, params(1), None).await);
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("no ComfyUI server is set up"), "{msg}");
    assert!(
        engine
            .store()
            .update_settings(&SettingsPatch {
                comfyui_url: Some("ftp://example".into()),
                ..Default::default()
            })
            .is_err()
    );
    assert_eq!(gallery_len(&engine, project.id), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_cancel_interrupts_only_our_prompt() {
    let (url, fake) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("remote").unwrap();
    let mut p = params(8);
    p.prompt = "slow".into();
    p.steps = 40;
    let ran = run(&engine, project.id, p, Some(2)).await;
    assert_eq!(ran.result.unwrap_err().0, "cancelled");
    let (done, _) = ran.last_progress.unwrap();
    assert!(done < 10, "cancel took until step {done}");
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.interrupted, ["prompt-1"]);
        assert_eq!(f.deleted, ["prompt-1"]);
    }
    assert_eq!(gallery_len(&engine, project.id), 0);
    assert_eq!(image_statuses(&engine)[0], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_websocket_the_run_is_followed_by_polling() {
    let (url, fake) = serve(false).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("remote").unwrap();
    let ran = run(&engine, project.id, params(77), None).await;
    let ids = ran.result.unwrap();
    assert_eq!(ran.previews, 0);
    assert!(fake.lock().unwrap().sockets.is_empty());
    let (_, img) = rgb(&engine, ids[0]);
    assert!(img.pixels().all(|px| px.0 == seed_colour(77)));
}

/// A server behind an authenticating proxy: without the key, a clear refusal that says where
/// to enter it and nothing queued; with it, every request carries it (the WebSocket too: the
/// run's steps and previews arrive) and the settings never give it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_behind_a_key_gets_it_on_every_request() {
    let (url, fake) = serve_with(true, Some("s3cret-token")).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("keyed").unwrap();
    let ran = run(&engine, project.id, params(5), None).await;
    let (kind, msg) = ran.result.unwrap_err();
    assert_eq!(kind, "remote_auth", "{msg}");
    assert!(msg.contains("Settings"), "{msg}");
    assert!(fake.lock().unwrap().prompts.is_empty());
    assert_eq!(gallery_len(&engine, project.id), 0);

    let settings = engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_api_key: Some(" s3cret-token ".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(settings.comfyui_api_key_set);
    assert!(!serde_json::to_string(&settings).unwrap().contains("s3cret"));
    let refused = fake.lock().unwrap().refused;
    let ran = run(&engine, project.id, params(6), None).await;
    let ids = ran.result.unwrap();
    assert!(
        ran.previews > 0,
        "no previews: the WebSocket went without the key"
    );
    assert_eq!(
        fake.lock().unwrap().refused,
        refused,
        "a request went without the key"
    );
    let (_, img) = rgb(&engine, ids[0]);
    assert!(img.pixels().all(|px| px.0 == seed_colour(6)));
    // The server check sends it too.
    engine.comfyui_server().await.unwrap();

    // Removing it: refused again.
    engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_api_key: Some(String::new()),
            ..Default::default()
        })
        .unwrap();
    assert!(!engine.store().settings().unwrap().comfyui_api_key_set);
    let e = engine.comfyui_server().await.unwrap_err();
    assert_eq!(e.kind(), "remote_auth");
}
