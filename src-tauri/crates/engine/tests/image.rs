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
    let info = engine.import_image_model(&src, None).unwrap();
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
                return Ok(common::generation_ids(&result));
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
    // Tags: many per image, normalised and deduplicated; the gallery filters by one, and the
    // counts leave the trash out. A bad tag changes nothing.
    let store = engine.store();
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let img = store
        .set_image_tags(b[0], &tags(&["主图", "  双十一   首页 ", "主图"]))
        .unwrap();
    assert_eq!(img.tags, ["主图", "双十一 首页"]);
    store.set_image_tags(c[0], &tags(&["主图"])).unwrap();
    store.set_image_tags(a[0], &tags(&["主图"])).unwrap(); // a[0] is in the trash
    let by_tag = |tag: &str| {
        store
            .gallery(&GalleryQuery {
                project_id: project.id,
                tag: Some(tag.into()),
                ..Default::default()
            })
            .unwrap()
            .items
    };
    assert_eq!(by_tag("主图").len(), 2);
    assert_eq!(by_tag(" 双十一 首页").len(), 1);
    let counts = store.image_tags(project.id).unwrap();
    assert_eq!((counts[0].tag.as_str(), counts[0].image_count), ("主图", 2));
    for bad in [
        tags(&[""]),
        tags(&[&"长".repeat(41)]),
        (0..21).map(|i| i.to_string()).collect(),
    ] {
        let err = store.set_image_tags(b[0], &bad).unwrap_err();
        assert_eq!(err.kind(), "invalid_input");
    }
    assert_eq!(
        store.gallery_image(b[0]).unwrap().tags,
        ["主图", "双十一 首页"]
    );
    assert_eq!(
        store.set_image_tags(999_999, &[]).unwrap_err().kind(),
        "not_found"
    );
    // Rated up: the thumbs of History, filterable in the gallery.
    store.rate_generation(b[0], 1).unwrap();
    let up = store
        .gallery(&GalleryQuery {
            project_id: project.id,
            rated_up_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(up.items.len(), 1);
    assert_eq!(up.items[0].rating, 1);
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

/// An inpainting UNet (9 input channels) reads the mask and the masked source beside the
/// latents: what it is given follows the mask exactly, and the picture keeps every pixel
/// outside the mask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpainting_models_read_the_mask_and_the_masked_source() {
    use atelier_engine::image::pipeline;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let src_dir = dir.path().join("src").join("tiny-inpaint");
    write_random_model(&src_dir, Arch::TinyInpaint).unwrap();
    let info = engine.import_image_model(&src_dir, None).unwrap();
    assert_eq!(info.unet_in_channels, model::INPAINT_IN_CHANNELS);
    let project = engine.store().create_project("inpaint model").unwrap();
    let base = run(&engine, project.id, params(5)).await.unwrap();
    let src = engine.store().gallery_image(base[0]).unwrap();
    let (_, src_rgb) = pixels(&engine, base[0]);
    let mask_png = |img: &image::GrayImage| {
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        engine.add_image_asset(project.id, &out).unwrap().id
    };
    let left =
        image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x < 32 { 255 } else { 0 }]));
    let left_id = mask_png(&left);
    let inpaint = |seed: u64| {
        let mut p = params(seed);
        p.model = "tiny-inpaint".into();
        p.init_image = Some(InitImage {
            asset_id: src.asset_id,
            strength: 1.0,
            mask_asset_id: Some(left_id),
        });
        p
    };

    // Txt2img runs on it too (a full mask over grey), reproducibly.
    let mut txt = params(3);
    txt.model = "tiny-inpaint".into();
    let a = run(&engine, project.id, txt.clone()).await.unwrap();
    let b = run(&engine, project.id, txt).await.unwrap();
    assert_eq!(pixels(&engine, a[0]).1, pixels(&engine, b[0]).1);

    let out = run(&engine, project.id, inpaint(7)).await.unwrap();
    let (_, rgb) = pixels(&engine, out[0]);
    let mut changed = 0;
    for (i, (a, b)) in rgb.chunks(3).zip(src_rgb.chunks(3)).enumerate() {
        if i % 64 >= 32 {
            assert_eq!(a, b, "pixel {i} outside the mask changed");
        } else if a != b {
            changed += 1;
        }
    }
    assert!(
        changed > 64 * 32 / 2,
        "only {changed} masked pixels changed"
    );
    let again = run(&engine, project.id, inpaint(7)).await.unwrap();
    assert_eq!(pixels(&engine, again[0]).1, rgb);
    let other = run(&engine, project.id, inpaint(8)).await.unwrap();
    assert_ne!(pixels(&engine, other[0]).1, rgb);

    // What the UNet is given: channel 0 is the mask at latent size; channels 1-4 are the
    // latents of the source with the masked part blanked, so they do not change when only
    // the masked half of the source does, and they do when the kept half does.
    let loaded = model::load(info, &candle_core::Device::Cpu).unwrap();
    let source = image::RgbImage::from_raw(64, 64, src_rgb.clone()).unwrap();
    let cond = |img: &image::RgbImage, mask: Option<&image::GrayImage>| {
        pipeline::inpaint_conditioning(&loaded, 64, 64, Some(img), mask).unwrap()
    };
    let c = cond(&source, Some(&left));
    assert_eq!(c.dims(), &[1, 5, 8, 8]);
    let mask_ch: Vec<f32> = c
        .narrow(1, 0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (i, v) in mask_ch.iter().enumerate() {
        assert_eq!(*v, if i % 8 < 4 { 1.0 } else { 0.0 }, "mask cell {i}");
    }
    let latents = |t: &candle_core::Tensor| -> Vec<f32> {
        t.narrow(1, 1, 4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut masked_half_edited = source.clone();
    let mut kept_half_edited = source.clone();
    for y in 0..64 {
        masked_half_edited.put_pixel(5, y, image::Rgb([255, 0, 255]));
        kept_half_edited.put_pixel(60, y, image::Rgb([255, 0, 255]));
    }
    assert_eq!(
        latents(&cond(&masked_half_edited, Some(&left))),
        latents(&c)
    );
    assert_ne!(latents(&cond(&kept_half_edited, Some(&left))), latents(&c));
    // With no mask everything is repainted: an all-ones mask and the same grey latents
    // whatever the source, as for txt2img.
    let full = cond(&kept_half_edited, None);
    let none = pipeline::inpaint_conditioning(&loaded, 64, 64, None, None).unwrap();
    assert_eq!(
        full.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        none.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert!(
        none.narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| *v == 1.0)
    );
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
    // ...and as an EXIF UserComment, where A1111 writes (and its PNG Info reads) them.
    assert!(
        tags["ExifIFD:UserComment"]
            .as_str()
            .unwrap_or_default()
            .contains("Seed: 77"),
        "{tags}"
    );

    // WebP (lossless): exactly the labelled PNG's pixels, with the same EXIF and XMP.
    let webp = engine
        .export_image(ids[0], None, Corner::TopLeft, ExportFormat::Webp)
        .unwrap();
    assert_eq!(webp.path.extension().unwrap(), "webp");
    let tags = exiftool(&webp.path);
    assert!(
        tags["XMP-TC260:Aigc"]
            .as_str()
            .unwrap_or_default()
            .contains("\"Label\":\"1\""),
        "{tags}"
    );
    assert!(
        tags["ExifIFD:UserComment"]
            .as_str()
            .unwrap_or_default()
            .contains("Seed: 77"),
        "{tags}"
    );
    assert_eq!(
        image::open(&webp.path).unwrap().to_rgb8().into_raw(),
        image::open(&out.path).unwrap().to_rgb8().into_raw(),
        "the WebP is not the labelled image"
    );

    // Dropped back on the image screen, both give their settings and label back.
    for file in [&jpg.path, &webp.path] {
        let r = metadata::recall(&std::fs::read(file).unwrap()).unwrap();
        assert_eq!(r.source, "a1111", "{}", file.display());
        assert_eq!((r.prompt.as_str(), r.seed), (p.prompt.as_str(), Some(77)));
        assert_eq!(
            (r.width, r.height, r.steps),
            (Some(128), Some(96), Some(p.steps))
        );
        assert_eq!(r.scheduler, Some(Scheduler::DpmPp2mKarras));
        assert_eq!(r.label.unwrap().label, "1");
    }
    // A JPEG whose EXIF another tool wrote (exiftool, little-endian, non-ASCII text) reads too.
    let peer = dir.path().join("peer.jpg");
    image::RgbImage::new(16, 16).save(&peer).unwrap();
    let status = Command::new("exiftool")
        .args(["-q", "-overwrite_original", "-ExifByteOrder=Little-endian"])
        .arg("-UserComment=一只猫\nNegative prompt: 模糊\nSteps: 12, Sampler: UniPC, CFG scale: 5, Seed: 9, Size: 16x16")
        .arg(&peer)
        .status()
        .unwrap();
    assert!(status.success());
    let r = metadata::recall(&std::fs::read(&peer).unwrap()).unwrap();
    assert_eq!(
        (r.prompt.as_str(), r.negative_prompt.as_str()),
        ("一只猫", "模糊")
    );
    assert_eq!(
        (r.steps, r.seed, r.scheduler),
        (Some(12), Some(9), Some(Scheduler::UniPc))
    );
    let err = metadata::recall(
        &std::fs::read(dir.path().join("peer.jpg"))
            .map(|mut b| {
                b.truncate(20);
                b
            })
            .unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), "invalid_input");

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
    assert_eq!(
        common::gallery_len(&engine, project.id),
        0,
        "a cancelled image reached the gallery"
    );
    assert_eq!(common::image_statuses(&engine)[0], "cancelled");
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
    let e = engine
        .import_image_model(&ckpt, None)
        .unwrap_err()
        .to_string();
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
        match engine.import_image_model(&m, None) {
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

/// The LDM name of a diffusers tensor of the tiny model (1 ResNet per UNet block, 2 UNet
/// blocks, the first without attention; 4 VAE blocks), written from the original LDM layout
/// independently of the engine's mapping, which this test checks by round trip.
fn ldm_name(part: &str, name: &str) -> String {
    const LPB: usize = 1;
    let num = |s: &str| -> (usize, String) {
        let (n, r) = s.split_once('.').unwrap();
        (n.parse().unwrap(), r.to_owned())
    };
    let resnet = |x: &str| {
        x.replace("norm1.", "in_layers.0.")
            .replace("conv1.", "in_layers.2.")
            .replace("time_emb_proj.", "emb_layers.1.")
            .replace("norm2.", "out_layers.0.")
            .replace("conv2.", "out_layers.3.")
            .replace("conv_shortcut.", "skip_connection.")
    };
    match part {
        "unet" => {
            let n = if let Some(r) = name.strip_prefix("down_blocks.") {
                let (b, r) = num(r);
                if let Some(r) = r.strip_prefix("resnets.") {
                    let (l, x) = num(r);
                    format!("input_blocks.{}.0.{}", 1 + b * (LPB + 1) + l, resnet(&x))
                } else if let Some(r) = r.strip_prefix("attentions.") {
                    let (l, x) = num(r);
                    format!("input_blocks.{}.1.{x}", 1 + b * (LPB + 1) + l)
                } else {
                    let x = r.strip_prefix("downsamplers.0.conv.").unwrap();
                    format!("input_blocks.{}.0.op.{x}", (b + 1) * (LPB + 1))
                }
            } else if let Some(r) = name.strip_prefix("up_blocks.") {
                let (b, r) = num(r);
                if let Some(r) = r.strip_prefix("resnets.") {
                    let (l, x) = num(r);
                    format!("output_blocks.{}.0.{}", b * (LPB + 1) + l, resnet(&x))
                } else if let Some(r) = r.strip_prefix("attentions.") {
                    let (l, x) = num(r);
                    format!("output_blocks.{}.1.{x}", b * (LPB + 1) + l)
                } else {
                    // Up block 0 has attention, so its upsampler comes third.
                    let x = r.strip_prefix("upsamplers.0.conv.").unwrap();
                    let slot = if b == 0 { 2 } else { 1 };
                    format!("output_blocks.{}.{slot}.conv.{x}", b * (LPB + 1) + LPB)
                }
            } else if let Some(r) = name.strip_prefix("mid_block.") {
                if let Some(x) = r.strip_prefix("resnets.0.") {
                    format!("middle_block.0.{}", resnet(x))
                } else if let Some(x) = r.strip_prefix("resnets.1.") {
                    format!("middle_block.2.{}", resnet(x))
                } else {
                    format!(
                        "middle_block.1.{}",
                        r.strip_prefix("attentions.0.").unwrap()
                    )
                }
            } else {
                name.replace("conv_in.", "input_blocks.0.0.")
                    .replace("add_embedding.linear_1.", "label_emb.0.0.")
                    .replace("add_embedding.linear_2.", "label_emb.0.2.")
                    .replace("time_embedding.linear_1.", "time_embed.0.")
                    .replace("time_embedding.linear_2.", "time_embed.2.")
                    .replace("conv_norm_out.", "out.0.")
                    .replace("conv_out.", "out.2.")
            };
            format!("model.diffusion_model.{n}")
        }
        "vae" => {
            let n = name
                .replace("conv_norm_out.", "norm_out.")
                .replace("mid_block.resnets.0.", "mid.block_1.")
                .replace("mid_block.resnets.1.", "mid.block_2.")
                .replace("mid_block.attentions.0.group_norm.", "mid.attn_1.norm.")
                .replace("mid_block.attentions.0.to_q.", "mid.attn_1.q.")
                .replace("mid_block.attentions.0.to_k.", "mid.attn_1.k.")
                .replace("mid_block.attentions.0.to_v.", "mid.attn_1.v.")
                .replace("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out.")
                // candle writes the older diffusers names.
                .replace("mid_block.attentions.0.query.", "mid.attn_1.q.")
                .replace("mid_block.attentions.0.key.", "mid.attn_1.k.")
                .replace("mid_block.attentions.0.value.", "mid.attn_1.v.")
                .replace("mid_block.attentions.0.proj_attn.", "mid.attn_1.proj_out.")
                .replace("conv_shortcut.", "nin_shortcut.")
                .replace("downsamplers.0.", "downsample.")
                .replace("upsamplers.0.", "upsample.")
                .replace(".resnets.", ".block.")
                .replace("encoder.down_blocks.", "encoder.down.");
            let n = match n.strip_prefix("decoder.up_blocks.") {
                Some(r) => {
                    let (i, x) = num(r);
                    format!("decoder.up.{}.{x}", 3 - i)
                }
                None => n,
            };
            format!("first_stage_model.{n}")
        }
        "text_xl" => format!("conditioner.embedders.0.transformer.{name}"),
        "text_2" => {
            // OpenCLIP's names; q/k/v are fused by the writer.
            let n = name
                .replace("text_model.embeddings.token_embedding.", "token_embedding.")
                .replace(
                    "text_model.embeddings.position_embedding.weight",
                    "positional_embedding",
                )
                .replace("text_model.final_layer_norm.", "ln_final.")
                .replace("text_model.encoder.layers.", "transformer.resblocks.")
                .replace(".layer_norm1.", ".ln_1.")
                .replace(".layer_norm2.", ".ln_2.")
                .replace(".self_attn.out_proj.", ".attn.out_proj.")
                .replace(".mlp.fc1.", ".mlp.c_fc.")
                .replace(".mlp.fc2.", ".mlp.c_proj.")
                .replace("text_projection.weight", "text_projection");
            format!("conditioner.embedders.1.model.{n}")
        }
        _ => format!("cond_stage_model.transformer.{name}"),
    }
}

/// OpenCLIP's fused attention input: `[q; k; v]` stacked along the first axis, which for
/// row-major tensors is their bytes one after another.
fn fuse_qkv(
    parts: &std::collections::BTreeMap<String, Vec<u8>>,
    layer: &str,
    what: &str,
) -> Vec<u8> {
    ["q_proj", "k_proj", "v_proj"]
        .iter()
        .flat_map(|p| parts[&format!("{layer}.self_attn.{p}.{what}")].clone())
        .collect()
}

/// Writes the diffusers folder `src` as one LDM-layout checkpoint, with what real files also
/// hold: EMA weights, schedule buffers and CLIP's integer position ids. `xl`: SDXL's layout
/// (both encoders under `conditioner.embedders`, OpenCLIP's fused q/k/v and `[width, embed]`
/// projection, a logit scale).
fn write_ldm_checkpoint(src: &Path, out: &Path, xl: bool) {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let mut files = vec![
        ("unet", src.join("unet/diffusion_pytorch_model.safetensors")),
        ("vae", src.join("vae/diffusion_pytorch_model.safetensors")),
        (
            if xl { "text_xl" } else { "text" },
            src.join("text_encoder/model.safetensors"),
        ),
    ];
    if xl {
        files.push(("text_2", src.join("text_encoder_2/model.safetensors")));
    }
    let bytes: Vec<(&str, Vec<u8>)> = files
        .iter()
        .map(|(p, f)| (*p, std::fs::read(f).unwrap()))
        .collect();
    // Tensors whose bytes change on the way (fused or transposed) are owned here.
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut tensors: Vec<(String, TensorView)> = Vec::new();
    for (part, b) in &bytes {
        let st = SafeTensors::deserialize(b).unwrap();
        if *part == "text_2" {
            let all: std::collections::BTreeMap<String, Vec<u8>> = st
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, v.data().to_vec()))
                .collect();
            for (name, view) in st.tensors() {
                let shape = view.shape().to_vec();
                if let Some(layer) = name.strip_suffix(".self_attn.q_proj.weight") {
                    let ldm = ldm_name(part, &format!("{layer}.x"));
                    let ldm = ldm.strip_suffix(".x").unwrap();
                    owned.push((
                        format!("{ldm}.attn.in_proj_weight"),
                        vec![3 * shape[0], shape[1]],
                        fuse_qkv(&all, layer, "weight"),
                    ));
                } else if let Some(layer) = name.strip_suffix(".self_attn.q_proj.bias") {
                    let ldm = ldm_name(part, &format!("{layer}.x"));
                    let ldm = ldm.strip_suffix(".x").unwrap();
                    owned.push((
                        format!("{ldm}.attn.in_proj_bias"),
                        vec![3 * shape[0]],
                        fuse_qkv(&all, layer, "bias"),
                    ));
                } else if name.contains("_proj.") && !name.contains("out_proj") {
                    // k and v went in with q.
                } else if name == "text_projection.weight" {
                    // A Linear weight [embed, width]; OpenCLIP keeps [width, embed].
                    let (rows, cols) = (shape[0], shape[1]);
                    let data = view.data();
                    let mut t = vec![0u8; data.len()];
                    for r in 0..rows {
                        for c in 0..cols {
                            t[(c * rows + r) * 4..][..4]
                                .copy_from_slice(&data[(r * cols + c) * 4..][..4]);
                        }
                    }
                    owned.push((ldm_name(part, &name), vec![cols, rows], t));
                } else {
                    tensors.push((ldm_name(part, &name), view));
                }
            }
            continue;
        }
        for (name, view) in st.tensors() {
            let ldm = ldm_name(part, &name);
            let is_vae_attention = *part == "vae"
                && ldm.contains(".attn_1.")
                && !ldm.contains(".norm.")
                && ldm.ends_with(".weight");
            let shape = if is_vae_attention {
                // LDM's VAE attention is 1×1 convolutions.
                vec![view.shape()[0], view.shape()[1], 1, 1]
            } else {
                view.shape().to_vec()
            };
            let v = TensorView::new(view.dtype(), shape, view.data()).unwrap();
            tensors.push((ldm, v));
        }
    }
    for (name, shape, data) in &owned {
        tensors.push((
            name.clone(),
            TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
        ));
    }
    let extra = vec![0u8; 8 * 77];
    let ema = vec![0u8; 4];
    let alphas = vec![0u8; 4 * 1000];
    let text = if xl {
        "conditioner.embedders.0.transformer."
    } else {
        "cond_stage_model.transformer."
    };
    tensors.push((
        format!("{text}text_model.embeddings.position_ids"),
        TensorView::new(Dtype::I64, vec![1, 77], &extra).unwrap(),
    ));
    if xl {
        tensors.push((
            "conditioner.embedders.1.model.logit_scale".into(),
            TensorView::new(Dtype::F32, vec![], &ema).unwrap(),
        ));
    }
    tensors.push((
        "model_ema.decay".into(),
        TensorView::new(Dtype::F32, vec![], &ema).unwrap(),
    ));
    tensors.push((
        "alphas_cumprod".into(),
        TensorView::new(Dtype::F32, vec![1000], &alphas).unwrap(),
    ));
    safetensors::tensor::serialize_to_file(tensors, None, out).unwrap();
}

/// With `ATELIER_KEEP_CHECKPOINT=DIR`, copies the written checkpoint and the diffusers folder
/// it came from into DIR (`{name}-ldm.safetensors`, `{name}-diffusers/`), where
/// `bench/ldm_names_vs_diffusers.py` checks the writer against diffusers' own converter.
fn keep_for_the_layout_check(ckpt: &Path, src: &Path, name: &str) {
    let Some(keep) = std::env::var_os("ATELIER_KEEP_CHECKPOINT") else {
        return;
    };
    let keep = Path::new(&keep);
    std::fs::create_dir_all(keep).unwrap();
    std::fs::copy(ckpt, keep.join(format!("{name}-ldm.safetensors"))).unwrap();
    for part in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        if !src.join(part).exists() {
            continue;
        }
        let to = keep.join(format!("{name}-diffusers")).join(part);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(src.join(part)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A checkpoint holding one small tensor under each of `names`: enough for import to
/// recognise what it is (or is not) from the names.
fn checkpoint_of(path: &Path, names: &[&str]) {
    use safetensors::tensor::{Dtype, TensorView};
    let w = [0u8; 16];
    let views = names
        .iter()
        .map(|n| (*n, TensorView::new(Dtype::F32, vec![4], &w).unwrap()));
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_file_checkpoint_converts_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let project = engine.store().create_project("checkpoints").unwrap();
    let src = dir.path().join("src").join("tiny-sd");
    let ckpts = dir.path().join("downloads");
    std::fs::create_dir_all(&ckpts).unwrap();
    let ckpt = ckpts.join("Tiny-Single.safetensors");
    write_ldm_checkpoint(&src, &ckpt, false);
    keep_for_the_layout_check(&ckpt, &src, "tiny");
    let models = dir.path().join("home").join("models").join("image");
    let installed = || {
        let mut v: Vec<String> = std::fs::read_dir(&models)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // The tiny UNet's heads are not a known family's: without its .yaml, a clear refusal.
    let tok = src.join("tokenizer");
    let e = engine
        .import_image_model(&ckpt, Some(&tok))
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention heads") && e.contains(".yaml"), "{e}");
    assert_eq!(installed(), ["tiny-sd"], "a failed import left something");

    std::fs::write(
        ckpts.join("Tiny-Single.yaml"),
        "model:\n  params:\n    unet_config:\n      params:\n        num_heads: 4 # per block\n",
    )
    .unwrap();
    let info = engine.import_image_model(&ckpt, Some(&tok)).unwrap();
    assert_eq!(info.id, "tiny-single");
    assert_eq!(info.pieces.len(), 3);
    let from = info.converted_from.as_ref().expect("converted_from");
    assert_eq!(from.file, "Tiny-Single.safetensors");
    assert_eq!(from.sha256.len(), 64);
    assert_eq!(installed(), ["tiny-sd", "tiny-single"]);
    // Converted configs equal the originals in every field the loader reads.
    for (sub, file, keys) in [
        (
            "unet",
            "config.json",
            &[
                "block_out_channels",
                "layers_per_block",
                "attention_head_dim",
                "cross_attention_dim",
                "in_channels",
                "down_block_types",
            ][..],
        ),
        (
            "vae",
            "config.json",
            &["block_out_channels", "layers_per_block", "latent_channels"][..],
        ),
        (
            "text_encoder",
            "config.json",
            &[
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "vocab_size",
            ][..],
        ),
    ] {
        let read = |d: &Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(d.join(sub).join(file)).unwrap()).unwrap()
        };
        let (a, b) = (read(&src), read(&models.join("tiny-single")));
        for k in keys {
            let norm = |v: &serde_json::Value| match v {
                // A single number means "the same for every block".
                serde_json::Value::Number(_) if k == &"attention_head_dim" => {
                    serde_json::json!([v, v])
                }
                _ => v.clone(),
            };
            assert_eq!(norm(&a[k]), norm(&b[k]), "{sub}/{k}");
        }
    }

    // Same seed and settings through both: the same pixels, and A1111's hash of the file.
    let a = run(&engine, project.id, params(21)).await.unwrap();
    let mut p = params(21);
    p.model = "tiny-single".into();
    p.scheduler = Scheduler::Euler;
    let mut q = params(21);
    q.scheduler = Scheduler::Euler;
    let b = run(&engine, project.id, p).await.unwrap();
    let c = run(&engine, project.id, q).await.unwrap();
    let (_, rgb_b) = pixels(&engine, b[0]);
    let (_, rgb_c) = pixels(&engine, c[0]);
    assert_eq!(rgb_b, rgb_c, "the converted model draws differently");
    let (_, rgb_a) = pixels(&engine, a[0]);
    assert_ne!(
        rgb_a, rgb_b,
        "the scheduler made no difference: the test compares nothing"
    );
    let (png_b, _) = pixels(&engine, b[0]);
    let rec = metadata::recall(&png_b).unwrap().record.unwrap();
    assert_eq!(rec.model_hash, from.sha256[..10]);

    // Pickles, SDXL refiners and lone VAEs are refused by name or content, and leave nothing.
    let pickle = ckpts.join("old.ckpt");
    std::fs::write(&pickle, b"\x80\x02").unwrap();
    let e = engine
        .import_image_model(&pickle, Some(&tok))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pickled"), "{e}");
    let refiner = ckpts.join("xl-refiner.safetensors");
    checkpoint_of(
        &refiner,
        &[
            "conditioner.embedders.0.model.token_embedding.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
        ],
    );
    let e = engine
        .import_image_model(&refiner, Some(&tok))
        .unwrap_err()
        .to_string();
    assert!(e.contains("SDXL refiner"), "{e}");
    let vae_only = ckpts.join("vae.safetensors");
    checkpoint_of(&vae_only, &["first_stage_model.encoder.conv_in.weight"]);
    let e = engine
        .import_image_model(&vae_only, Some(&tok))
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.diffusion_model"), "{e}");
    // A truncated copy: refused by the header check.
    let cut = ckpts.join("cut.safetensors");
    let full = std::fs::read(&ckpt).unwrap();
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let e = engine
        .import_image_model(&cut, Some(&tok))
        .unwrap_err()
        .to_string();
    assert!(e.contains("safetensors"), "{e}");
    // Importing the same file twice is a conflict, not an overwrite.
    let e = engine.import_image_model(&ckpt, Some(&tok)).unwrap_err();
    assert_eq!(e.kind(), "conflict");
    assert_eq!(installed(), ["tiny-sd", "tiny-single"]);
}

/// CLIP's vocabulary built from its released BPE file numbers tokens as CLIP does: ids from
/// OpenAI's CLIP tokenizer, which every SD 1.x/2.x text encoder was trained with.
#[test]
fn clip_vocabulary_from_the_released_bpe_file_has_clips_ids() {
    let bpe = std::env::var_os("ATELIER_CLIP_BPE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/atelier/models/clip/bpe_simple_vocab_16e6.txt")
        });
    let text = std::fs::read_to_string(&bpe).unwrap_or_else(|e| {
        panic!(
            "CLIP's BPE file is missing from {} ({e}): run ./scripts/test.sh (it downloads it)",
            bpe.display()
        )
    });
    let (vocab, merges) = atelier_engine::image::prompt::clip_vocab_from_bpe(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vocab.json"), &vocab).unwrap();
    std::fs::write(dir.path().join("merges.txt"), &merges).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&vocab).unwrap();
    assert_eq!(vocab.len(), 49408);
    assert_eq!(vocab["<|startoftext|>"], 49406);
    assert_eq!(vocab["<|endoftext|>"], 49407);
    let tok = atelier_engine::image::prompt::ClipTokenizer::load(dir.path(), None).unwrap();
    assert_eq!(
        tok.encode("a photo of a cat").unwrap(),
        [320, 1125, 539, 320, 2368]
    );
    assert_eq!(tok.encode("Hello World").unwrap(), [3306, 1002]);
    // A truncated file is not CLIP's.
    let short: String = text.lines().take(1000).collect::<Vec<_>>().join("\n");
    assert!(atelier_engine::image::prompt::clip_vocab_from_bpe(&short).is_err());
}

/// An engine on a new data folder with the tiny SDXL (written to `dir/src/tiny-xl`) imported:
/// the engine, the source folder and what the import said.
fn xl_engine(dir: &Path) -> (Engine, std::path::PathBuf, model::ImageModelInfo) {
    let src = dir.join("src").join("tiny-xl");
    write_random_model(&src, Arch::TinyXl).unwrap();
    let engine = Engine::open(
        Home::at(dir.join("home")),
        Access::Exclusive,
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    let info = engine.import_image_model(&src, None).unwrap();
    (engine, src, info)
}

/// SDXL's layout end to end on a tiny random SDXL: two text encoders and tokenizers, the
/// pooled embedding and size ids, zeros for an empty negative prompt; reproducible, and an
/// incomplete folder is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdxl_layout_generates_reproducibly_from_both_encoders() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _, info) = xl_engine(dir.path());
    let roles: Vec<&str> = info.pieces.iter().map(|p| p.role.as_str()).collect();
    assert_eq!(roles, ["unet", "vae", "text_encoder", "text_encoder_2"]);
    let project = engine.store().create_project("xl").unwrap();
    let xl = |seed, negative: &str| ImageParams {
        model: "tiny-xl".into(),
        negative_prompt: negative.into(),
        ..params(seed)
    };
    let a = run(&engine, project.id, xl(7, "")).await.unwrap();
    let b = run(&engine, project.id, xl(7, "")).await.unwrap();
    let c = run(&engine, project.id, xl(8, "")).await.unwrap();
    let d = run(&engine, project.id, xl(7, "blurry")).await.unwrap();
    // Same seed, same pixels (the files differ by their label's produce id).
    let (_, ra) = pixels(&engine, a[0]);
    assert!(ra == pixels(&engine, b[0]).1, "same seed, same pixels");
    assert!(ra != pixels(&engine, c[0]).1, "another seed, other pixels");
    // An empty negative prompt is zeros (force_zeros_for_empty_prompt), not the encoding of "".
    assert_ne!(
        ra,
        pixels(&engine, d[0]).1,
        "a negative prompt changes the picture"
    );

    // Without the second encoder the folder is incomplete, and says so.
    let broken = dir.path().join("src").join("broken-xl");
    write_random_model(&broken, Arch::TinyXl).unwrap();
    std::fs::remove_dir_all(broken.join("text_encoder_2")).unwrap();
    let e = engine.import_image_model(&broken, None).unwrap_err();
    assert!(e.to_string().contains("text_encoder_2"), "{e}");
}

/// SDXL as one file, as A1111 and model sites ship it: both text encoders under
/// `conditioner.embedders` (OpenCLIP's fused q/k/v and `[width, embed]` projection), the size
/// conditioning as `label_emb`. Import converts it to the folder the diffusers import gives —
/// the same configs where the loader reads them, the same pixels — and the SDXL defaults
/// (Euler, the 0.13025 latent scale, zeros for an empty negative prompt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_file_sdxl_checkpoint_converts_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, src, folder) = xl_engine(dir.path());
    let ckpts = dir.path().join("downloads");
    std::fs::create_dir_all(&ckpts).unwrap();
    let ckpt = ckpts.join("Tiny-XL-Single.safetensors");
    write_ldm_checkpoint(&src, &ckpt, true);
    keep_for_the_layout_check(&ckpt, &src, "tiny-xl");
    // The tiny UNet's heads are not SDXL's 64 channels: its .yaml says how many.
    std::fs::write(
        ckpts.join("Tiny-XL-Single.yaml"),
        "model:\n  params:\n    network_config:\n      params:\n        num_heads: 4\n",
    )
    .unwrap();
    let info = engine
        .import_image_model(&ckpt, Some(&src.join("tokenizer")))
        .unwrap();
    let roles: Vec<&str> = info.pieces.iter().map(|p| p.role.as_str()).collect();
    assert_eq!(roles, ["unet", "vae", "text_encoder", "text_encoder_2"]);
    // (Custom for both: the family names go by SDXL's real widths.)
    assert_eq!(info.family, folder.family);
    assert_eq!(
        info.default_size, 1024,
        "SDXL's size when the file does not say"
    );
    let converted = dir.path().join("home/models/image/tiny-xl-single");
    let read = |d: &Path, f: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join(f)).unwrap()).unwrap()
    };
    for (file, keys) in [
        (
            "unet/config.json",
            &[
                "block_out_channels",
                "transformer_layers_per_block",
                "cross_attention_dim",
                "use_linear_projection",
                "addition_embed_type",
                "addition_time_embed_dim",
                "projection_class_embeddings_input_dim",
            ][..],
        ),
        ("vae/config.json", &["scaling_factor"][..]),
        (
            "text_encoder_2/config.json",
            &[
                "architectures",
                "hidden_act",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "projection_dim",
            ][..],
        ),
        ("model_index.json", &["force_zeros_for_empty_prompt"][..]),
    ] {
        let (a, b) = (read(&src, file), read(&converted, file));
        for k in keys {
            assert_eq!(a[k], b[k], "{file}: {k}");
        }
    }
    assert_eq!(
        read(&converted, "scheduler/scheduler_config.json")["_class_name"],
        "EulerDiscreteScheduler"
    );

    // The same seed and settings through both: the same pixels, with and without a negative.
    let project = engine.store().create_project("xl").unwrap();
    let xl = |model: &str, negative: &str| ImageParams {
        model: model.into(),
        negative_prompt: negative.into(),
        scheduler: Scheduler::Euler,
        ..params(5)
    };
    for negative in ["", "blurry"] {
        let a = run(&engine, project.id, xl("tiny-xl", negative))
            .await
            .unwrap();
        let b = run(&engine, project.id, xl("tiny-xl-single", negative))
            .await
            .unwrap();
        assert!(
            pixels(&engine, a[0]).1 == pixels(&engine, b[0]).1,
            "the converted SDXL draws differently (negative {negative:?})"
        );
    }

    // The converter saw OpenCLIP's fused form, and a file without the size conditioning is
    // refused whole, leaving nothing.
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.names()
            .iter()
            .any(|n| n.ends_with("attn.in_proj_weight"))
    );
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.contains(".label_emb."))
        .collect();
    let cut = ckpts.join("no-size-ids.safetensors");
    safetensors::tensor::serialize_to_file(kept, None, &cut).unwrap();
    std::fs::copy(
        ckpts.join("Tiny-XL-Single.yaml"),
        ckpts.join("no-size-ids.yaml"),
    )
    .unwrap();
    let e = engine
        .import_image_model(&cut, Some(&src.join("tokenizer")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("label_emb"), "{e}");
    assert!(!dir.path().join("home/models/image/no-size-ids").exists());
}
