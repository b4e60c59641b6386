//! The image pipeline end to end on a tiny random-weight Stable Diffusion written to disk in
//! the diffusers layout and loaded through the real loader: determinism, every scheduler,
//! img2img, cancel, the files written (read back by exiftool too) and bad input.

mod common;

use std::path::Path;
use std::process::Command;

use atelier_engine::image::model;
use atelier_engine::image::random::{Arch, write_random_model};
use atelier_engine::image::service::ImageJob;
use atelier_engine::image::{ImageParams, InitImage, Scheduler, metadata};
use atelier_engine::store::{GalleryQuery, GenerationKind, HistoryQuery};
use atelier_engine::{Access, Engine, Home, JobEvent};

fn params(seed: u64) -> ImageParams {
    ImageParams {
        model: "tiny-sd".into(),
        prompt: "a red apple on a wooden table, (studio light:1.3)".into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 64,
        steps: 4,
        cfg_scale: 7.0,
        scheduler: Scheduler::DpmPp2mKarras,
        seed: Some(seed),
        batch_count: 1,
        init_image: None,
        variation: None,
        translated_prompt: None,
    }
}

/// An engine on a new data folder with the tiny model imported.
fn engine(dir: &Path) -> Engine {
    let src = dir.join("src").join("tiny-sd");
    write_random_model(&src, Arch::Tiny).unwrap();
    let home = Home::at(dir.join("home"));
    let engine = Engine::open(home, Access::Exclusive, tokio::runtime::Handle::current()).unwrap();
    let info = engine.import_image_model(&src).unwrap();
    assert_eq!(info.id, "tiny-sd");
    assert_eq!(info.unet_in_channels, 4);
    assert_eq!(info.pieces.len(), 3);
    engine
}

async fn run(
    engine: &Engine,
    project_id: i64,
    p: ImageParams,
) -> Result<Vec<i64>, (String, String)> {
    let (sink, mut rx) = common::sink();
    engine
        .generate_image(
            ImageJob {
                project_id,
                params: p,
            },
            Some(sink),
        )
        .map_err(|e| (e.kind().to_owned(), e.to_string()))?;
    while let Some(e) = rx.recv().await {
        match e {
            JobEvent::Finished { result } => {
                return Ok(result["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["generation_id"].as_i64().unwrap())
                    .collect());
            }
            JobEvent::Failed { kind, message } => return Err((kind, message)),
            JobEvent::Cancelled => return Err(("cancelled".into(), String::new())),
            _ => {}
        }
    }
    unreachable!("the job ended without a terminal event")
}

/// A file's tags as exiftool, an independent reader, sees them (`Group1:Tag` keys).
fn exiftool(file: &Path) -> serde_json::Value {
    let out = Command::new("exiftool")
        .args(["-j", "-a", "-G1"])
        .arg(file)
        .output()
        .expect("exiftool (Debian libimage-exiftool-perl; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json[0].take()
}

fn pixels(engine: &Engine, generation_id: i64) -> (Vec<u8>, Vec<u8>) {
    let img = engine.store().gallery_image(generation_id).unwrap();
    let png = engine.asset_bytes(img.asset_id).unwrap();
    let rgb = image::load_from_memory(&png).unwrap().to_rgb8().into_raw();
    (png, rgb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_model_generates_reproducibly_with_every_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let project = engine.store().create_project("images").unwrap();

    // Same seed, same settings: the same pixels. Another seed: other pixels.
    let a = run(&engine, project.id, params(11)).await.unwrap();
    let b = run(&engine, project.id, params(11)).await.unwrap();
    let c = run(&engine, project.id, params(12)).await.unwrap();
    let (png_a, rgb_a) = pixels(&engine, a[0]);
    let (png_b, rgb_b) = pixels(&engine, b[0]);
    let (_, rgb_c) = pixels(&engine, c[0]);
    assert_eq!(rgb_a, rgb_b, "same seed, different pixels");
    assert_ne!(rgb_a, rgb_c, "another seed gave the same pixels");
    assert_eq!(rgb_a.len(), 64 * 64 * 3);
    // The files differ only in the label's ProduceID (unique per image, by design).
    let label_a = metadata::recall(&png_a).unwrap().label.unwrap();
    let label_b = metadata::recall(&png_b).unwrap().label.unwrap();
    assert_ne!(label_a.produce_id, label_b.produce_id);
    assert_eq!(png_a.len(), png_b.len());

    // Every scheduler runs and gives a picture that is not flat.
    for s in Scheduler::ALL {
        let mut p = params(3);
        p.scheduler = s;
        p.steps = 3;
        let ids = run(&engine, project.id, p).await.unwrap();
        let (_, rgb) = pixels(&engine, ids[0]);
        let first = rgb[0];
        assert!(rgb.iter().any(|&v| v != first), "{s:?} made a flat image");
    }

    // A batch uses seed, seed + 1, ...; a prompt over 77 tokens is encoded in windows; no CFG.
    let mut p = params(40);
    p.batch_count = 2;
    p.prompt = "a very long prompt with many words ".repeat(20);
    p.cfg_scale = 1.0;
    let ids = run(&engine, project.id, p).await.unwrap();
    let seeds: Vec<u64> = ids
        .iter()
        .map(|id| engine.image_record(*id).unwrap().params.seed.unwrap())
        .collect();
    assert_eq!(seeds, vec![40, 41]);

    // img2img: strength 0.5 of 4 steps runs 2 steps; the source must be an image.
    let src = engine.store().gallery_image(a[0]).unwrap();
    let mut p = params(5);
    p.init_image = Some(InitImage {
        asset_id: src.asset_id,
        strength: 0.5,
        mask_asset_id: None,
    });
    let i2i = run(&engine, project.id, p.clone()).await.unwrap();
    let again = run(&engine, project.id, p.clone()).await.unwrap();
    assert_eq!(
        pixels(&engine, i2i[0]).1,
        pixels(&engine, again[0]).1,
        "img2img is not reproducible"
    );
    let rec = engine.image_record(i2i[0]).unwrap();
    assert_eq!(rec.params.init_image.as_ref().unwrap().strength, 0.5);
    let text = engine
        .add_image_asset(project.id, b"plain text, not a picture")
        .unwrap_err()
        .to_string();
    assert!(text.contains("not an image"), "{text}");

    // The gallery pages newest first, finds by prompt words, and the trash hides.
    let all = engine
        .store()
        .gallery(&GalleryQuery {
            project_id: project.id,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.items.len(), 3 + Scheduler::ALL.len() + 2 + 2);
    assert!(
        all.items
            .windows(2)
            .all(|w| w[0].generation_id > w[1].generation_id)
    );
    let page = engine
        .store()
        .gallery(&GalleryQuery {
            project_id: project.id,
            limit: 4,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 4);
    assert_eq!(page.next_before, Some(page.items[3].generation_id));
    let long = engine
        .store()
        .gallery(&GalleryQuery {
            project_id: project.id,
            text: "very long".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(long.items.len(), 2);
    engine.store().set_images_trashed(&[a[0]], true).unwrap();
    let after = engine
        .store()
        .gallery(&GalleryQuery {
            project_id: project.id,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(after.items.len(), all.items.len() - 1);
    let board = engine.store().create_board(project.id, "封面").unwrap();
    engine
        .store()
        .set_image_board(b[0], Some(board.id))
        .unwrap();
    assert_eq!(engine.store().boards(project.id).unwrap()[0].image_count, 1);
    // Images are generations too: History finds them.
    let history = engine
        .store()
        .history(&HistoryQuery {
            kind: Some(GenerationKind::Image),
            ..Default::default()
        })
        .unwrap();
    assert!(history.items.len() >= all.items.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpainting_repaints_the_mask_and_keeps_the_rest_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let project = engine.store().create_project("inpaint").unwrap();
    let base = run(&engine, project.id, params(5)).await.unwrap();
    let src = engine.store().gallery_image(base[0]).unwrap();
    let (_, src_rgb) = pixels(&engine, base[0]);
    let png = |img: image::GrayImage| {
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        engine.add_image_asset(project.id, &out).unwrap().id
    };
    // Repaint the left half.
    let left = png(image::GrayImage::from_fn(64, 64, |x, _| {
        image::Luma([if x < 32 { 255 } else { 0 }])
    }));
    let inpaint = |mask: i64| {
        let mut p = params(7);
        p.init_image = Some(InitImage {
            asset_id: src.asset_id,
            strength: 0.9,
            mask_asset_id: Some(mask),
        });
        p
    };
    let out = run(&engine, project.id, inpaint(left)).await.unwrap();
    let (_, rgb) = pixels(&engine, out[0]);
    let (mut kept, mut changed) = (0, 0);
    for (i, (a, b)) in rgb.chunks(3).zip(src_rgb.chunks(3)).enumerate() {
        if i % 64 >= 32 {
            assert_eq!(a, b, "pixel {i} outside the mask changed");
            kept += 1;
        } else if a != b {
            changed += 1;
        }
    }
    assert_eq!(kept, 64 * 32);
    assert!(
        changed > 64 * 32 / 2,
        "only {changed} masked pixels changed"
    );
    let again = run(&engine, project.id, inpaint(left)).await.unwrap();
    assert_eq!(pixels(&engine, again[0]).1, rgb);
    let rec = engine.image_record(out[0]).unwrap();
    assert_eq!(rec.params.init_image.unwrap().mask_asset_id, Some(left));

    // A mask of another size, or an empty one: refused before queueing, nothing written.
    let before = engine
        .store()
        .gallery(&GalleryQuery {
            project_id: project.id,
            ..Default::default()
        })
        .unwrap()
        .items
        .len();
    let small = png(image::GrayImage::from_pixel(32, 32, image::Luma([255])));
    let err = run(&engine, project.id, inpaint(small)).await.unwrap_err();
    assert_eq!(err.0, "invalid_input");
    assert!(
        err.1.contains("32×32") && err.1.contains("64×64"),
        "{}",
        err.1
    );
    let empty = png(image::GrayImage::new(64, 64));
    let err = run(&engine, project.id, inpaint(empty)).await.unwrap_err();
    assert!(err.1.contains("mask is empty"), "{}", err.1);
    let after = engine
        .store()
        .gallery(&GalleryQuery {
            project_id: project.id,
            ..Default::default()
        })
        .unwrap()
        .items
        .len();
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variations_stay_near_their_image_and_reproduce() {
    use atelier_engine::image::Variation;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let project = engine.store().create_project("variations").unwrap();
    let base = run(&engine, project.id, params(5)).await.unwrap();
    let (_, base_rgb) = pixels(&engine, base[0]);
    let other = run(&engine, project.id, params(6)).await.unwrap();
    let (_, other_rgb) = pixels(&engine, other[0]);

    let with = |seed: u64, strength: f64, batch: u32| {
        let mut p = params(5);
        p.variation = Some(Variation { seed, strength });
        p.batch_count = batch;
        p
    };
    // Strength 0 is the image itself.
    let same = run(&engine, project.id, with(99, 0.0, 1)).await.unwrap();
    assert_eq!(pixels(&engine, same[0]).1, base_rgb);

    // A batch of variations keeps the seed and counts the variation seed up.
    let vars = run(&engine, project.id, with(99, 0.05, 2)).await.unwrap();
    let records: Vec<_> = vars
        .iter()
        .map(|g| engine.image_record(*g).unwrap())
        .collect();
    assert_eq!(records[0].params.seed, Some(5));
    assert_eq!(records[1].params.seed, Some(5));
    assert_eq!(records[0].params.variation.unwrap().seed, 99);
    assert_eq!(records[1].params.variation.unwrap().seed, 100);
    let mean_diff = |a: &[u8], b: &[u8]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum::<f64>()
            / a.len() as f64
    };
    let (png0, v0) = pixels(&engine, vars[0]);
    let (_, v1) = pixels(&engine, vars[1]);
    assert_ne!(v0, base_rgb);
    assert_ne!(v0, v1);
    let near = mean_diff(&v0, &base_rgb);
    let far = mean_diff(&other_rgb, &base_rgb);
    assert!(
        near < far / 2.0,
        "a variation ({near:.1}) should be nearer than another seed ({far:.1})"
    );

    // Reproducible, and written the way A1111 writes it.
    let again = run(&engine, project.id, with(99, 0.05, 1)).await.unwrap();
    assert_eq!(pixels(&engine, again[0]).1, v0);
    let back = metadata::recall(&png0).unwrap();
    assert_eq!(
        back.variation,
        Some(Variation {
            seed: 99,
            strength: 0.05
        })
    );
    let text = metadata::png_text(&png0).unwrap();
    let params_text = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    let parsed = metadata::parse_a1111(params_text);
    assert_eq!(parsed.settings["Variation seed"], "99");
    assert_eq!(parsed.settings["Variation seed strength"], "0.05");

    let err = run(&engine, project.id, with(99, 1.5, 1))
        .await
        .unwrap_err();
    assert_eq!(err.0, "invalid_input");
    assert!(err.1.contains("variation strength"), "{}", err.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_carry_a1111_parameters_and_the_label_for_other_readers() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let project = engine.store().create_project("images").unwrap();
    let mut p = params(1234);
    p.prompt = "一只红色的苹果, still life".into();
    let ids = run(&engine, project.id, p.clone()).await.unwrap();
    let img = engine.store().gallery_image(ids[0]).unwrap();
    let asset = engine.store().asset(img.asset_id).unwrap();
    let file = engine.home().root().join(&asset.path);

    let png = std::fs::read(&file).unwrap();
    let back = metadata::recall(&png).unwrap();
    assert_eq!(back.source, "atelier");
    assert_eq!(back.prompt, p.prompt);
    assert_eq!(back.seed, Some(1234));
    let rec = back.record.unwrap();
    assert_eq!(rec.params.scheduler, Scheduler::DpmPp2mKarras);
    assert_eq!(rec.model_hash.len(), 10);

    // exiftool, an independent reader, sees the same.
    let tags = &exiftool(&file);
    let params_text = tags["PNG:Parameters"].as_str().expect("parameters chunk");
    let parsed = metadata::parse_a1111(params_text);
    assert_eq!(parsed.prompt, p.prompt);
    assert_eq!(parsed.negative_prompt, "blurry");
    assert_eq!(parsed.settings["Seed"], "1234");
    assert_eq!(parsed.settings["Sampler"], "DPM++ 2M");
    assert_eq!(parsed.settings["Schedule type"], "Karras");
    assert_eq!(parsed.settings["Size"], "64x64");
    assert_eq!(parsed.settings["Model hash"], rec.model_hash);
    let aigc = tags["XMP-TC260:Aigc"]
        .as_str()
        .unwrap_or_else(|| panic!("no XMP TC260 AIGC tag in {tags}"));
    let label: serde_json::Value = serde_json::from_str(aigc).unwrap();
    assert_eq!(label["Label"], "1");
    assert_eq!(label["ProduceID"], back.label.unwrap().produce_id);
    assert_eq!(
        tags["XMP-iptcExt:DigitalSourceType"].as_str(),
        Some(metadata::DIGITAL_SOURCE_TYPE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_draws_the_visible_label_and_keeps_the_metadata() {
    use atelier_engine::image::label::Corner;
    use atelier_engine::image::metadata::ExportFormat;
    use atelier_engine::store::SettingsPatch;

    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let project = engine.store().create_project("export").unwrap();
    let mut p = params(77);
    p.width = 128;
    p.height = 96;
    let ids = run(&engine, project.id, p.clone()).await.unwrap();
    let (_, original) = pixels(&engine, ids[0]);

    // Wording that drops "AI" or "生成" is refused and writes nothing.
    let exports = engine.home().exports_dir();
    let err = engine
        .export_image(ids[0], Some("仅供参考"), Corner::TopLeft, ExportFormat::Png)
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
    assert!(!exports.exists() || std::fs::read_dir(&exports).unwrap().count() == 0);

    let out = engine
        .export_image(ids[0], None, Corner::TopLeft, ExportFormat::Png)
        .unwrap();
    assert!(out.path.starts_with(&exports));
    let b = out.visible_label.expect("labels are on by default");
    assert!(b.text_height as f32 >= 96.0 * 0.05);
    let png = std::fs::read(&out.path).unwrap();
    let labelled = image::load_from_memory(&png).unwrap().to_rgb8();
    // Only the label's box differs from the gallery image.
    let mut changed_inside = 0;
    for (x, y, px) in labelled.enumerate_pixels() {
        let i = ((y * 128 + x) * 3) as usize;
        let same = px.0[..] == original[i..i + 3];
        let inside = x >= b.x && x < b.x + b.width && y >= b.y && y < b.y + b.height;
        assert!(inside || same, "pixel {x},{y} outside the label changed");
        changed_inside += usize::from(!same);
    }
    assert!(changed_inside > (b.width * b.height / 2) as usize);
    // The metadata travels with the export, read by exiftool as well.
    let back = metadata::recall(&png).unwrap();
    assert_eq!(back.record.unwrap().params.seed, Some(77));
    let tags = exiftool(&out.path);
    assert!(
        tags["XMP-TC260:Aigc"]
            .as_str()
            .unwrap()
            .contains("\"Label\":\"1\"")
    );
    assert!(
        tags["PNG:Parameters"]
            .as_str()
            .unwrap()
            .contains("Seed: 77")
    );

    // JPEG: the same label pixels (lossy, so compared loosely), the XMP label and the
    // parameters as the comment, both read by exiftool.
    let jpg = engine
        .export_image(ids[0], None, Corner::TopLeft, ExportFormat::Jpeg)
        .unwrap();
    assert_eq!(jpg.path.extension().unwrap(), "jpg");
    assert_eq!(jpg.visible_label, out.visible_label);
    let tags = exiftool(&jpg.path);
    assert!(
        tags["XMP-TC260:Aigc"]
            .as_str()
            .unwrap_or_default()
            .contains("\"Label\":\"1\""),
        "{tags}"
    );
    assert!(
        tags["File:Comment"]
            .as_str()
            .unwrap_or_default()
            .contains("Seed: 77"),
        "{tags}"
    );
    let decoded = image::open(&jpg.path).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (128, 96));

    // Labels off (acknowledged in Settings): no visible label, and the export is logged.
    engine
        .store()
        .update_settings(&SettingsPatch {
            label_explicit: Some(false),
            acknowledge_unlabelled: Some(true),
            ..Default::default()
        })
        .unwrap();
    let plain = engine
        .export_image(ids[0], None, Corner::BottomRight, ExportFormat::Png)
        .unwrap();
    assert!(plain.visible_label.is_none());
    let rgb = image::open(&plain.path).unwrap().to_rgb8().into_raw();
    assert_eq!(rgb, original);
    let events = engine.store().label_events(5).unwrap();
    assert_eq!(events[0].1, "export_unlabelled");
    assert!(events[0].2.contains(&plain.path.display().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_between_steps_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let project = engine.store().create_project("images").unwrap();
    let mut p = params(9);
    p.steps = 150;
    p.width = 256;
    p.height = 256;
    let (sink, mut rx) = common::sink();
    let job = engine
        .generate_image(
            ImageJob {
                project_id: project.id,
                params: p,
            },
            Some(sink),
        )
        .unwrap();
    let mut previews = 0;
    loop {
        match rx.recv().await.unwrap() {
            JobEvent::Preview { data_url, .. } => {
                assert!(data_url.starts_with("data:image/png;base64,"));
                previews += 1;
                if previews == 2 {
                    engine.jobs().cancel(job).unwrap();
                }
            }
            JobEvent::Cancelled => break,
            JobEvent::Finished { .. } | JobEvent::Failed { .. } => panic!("not cancelled"),
            _ => {}
        }
    }
    assert!(previews < 10, "cancel took {previews} steps");
    let page = engine
        .store()
        .gallery(&GalleryQuery {
            project_id: project.id,
            ..Default::default()
        })
        .unwrap();
    assert!(
        page.items.is_empty(),
        "a cancelled image reached the gallery"
    );
    let history = engine
        .store()
        .history(&HistoryQuery {
            kind: Some(GenerationKind::Image),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        serde_json::to_value(history.items[0].status).unwrap(),
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_models_and_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let project = engine.store().create_project("images").unwrap();
    let models = engine.home().image_models_dir();

    // A pickle is refused by name, whatever it holds.
    let ckpt = dir.path().join("v1-5.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 pickled").unwrap();
    let e = engine.import_image_model(&ckpt).unwrap_err().to_string();
    assert!(e.contains("pickled") && e.contains("safetensors"), "{e}");

    // Truncated weights, an absurd header, mismatched components: refused on import, and the
    // models folder is left as it was.
    let before: Vec<_> = std::fs::read_dir(&models).unwrap().collect();
    let cases: Vec<(&str, Box<dyn Fn(&Path)>, &str)> = vec![
        (
            "truncated",
            Box::new(|m: &Path| {
                let f = m.join("unet/diffusion_pytorch_model.safetensors");
                let bytes = std::fs::read(&f).unwrap();
                std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
            }),
            "truncated",
        ),
        (
            "absurd",
            Box::new(|m: &Path| {
                let f = m.join("vae/diffusion_pytorch_model.safetensors");
                let mut bytes = std::fs::read(&f).unwrap();
                bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                std::fs::write(&f, &bytes).unwrap();
            }),
            "header claims",
        ),
        (
            "mismatched",
            Box::new(|m: &Path| {
                // A UNet config that does not fit the weights beside it.
                let f = m.join("unet/config.json");
                let mut cfg: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
                cfg["block_out_channels"] = serde_json::json!([32, 128]);
                std::fs::write(&f, cfg.to_string()).unwrap();
            }),
            "",
        ),
    ];
    for (name, damage, needle) in cases {
        let m = dir.path().join(name);
        write_random_model(&m, Arch::Tiny).unwrap();
        damage(&m);
        match engine.import_image_model(&m) {
            Err(e) => assert!(e.to_string().contains(needle), "{name}: {e}"),
            Ok(info) => {
                // The header is fine; loading finds the mismatch and says which part.
                assert_eq!(name, "mismatched");
                let dev = candle_core::Device::Cpu;
                let e = model::load(info, &dev).err().unwrap().to_string();
                assert!(
                    e.contains("UNet weights") && e.contains("do not match"),
                    "{e}"
                );
                std::fs::remove_dir_all(models.join("mismatched")).unwrap();
            }
        }
    }
    let after: Vec<_> = std::fs::read_dir(&models).unwrap().collect();
    assert_eq!(
        before.len(),
        after.len(),
        "a refused import left files behind"
    );

    // Requests: a clear message before anything is queued.
    let mut p = params(1);
    p.width = 100;
    let (kind, msg) = run(&engine, project.id, p).await.unwrap_err();
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("multiple of 8"), "{msg}");
    let mut p = params(1);
    p.model = "nope".into();
    let (_, msg) = run(&engine, project.id, p).await.unwrap_err();
    assert!(msg.contains("no image model"), "{msg}");
    let mut p = params(1);
    p.prompt = "word ".repeat(700);
    let (_, msg) = run(&engine, project.id, p).await.unwrap_err();
    assert!(msg.contains("CLIP tokens"), "{msg}");
}
