//! The diffusion kernels at the shapes of one SD 1.5 UNet step at 512² with CFG (batch 2, latent
//! 64²): each convolution and attention shape, how often a step runs it, its GFLOP/s, and the
//! step's total per kind. Tells which shapes hold the UNet back and what a kernel change is worth.
//!
//! `cargo run --release -p atelier-cpu --example diffusion [-- THREADS]`; `VAE=1` times the VAE
//! decoder's convolutions instead of the UNet's, `ATTENTION_ONLY=1` skips the convolutions,
//! `COLUMNS=1` runs every convolution as image-to-column (no Winograd) for comparison.

use std::time::Instant;

use atelier_cpu::diffusion::{
    Conv2d, attention, conv2d, conv2d_columns, conv2d_upsampled, group_norm,
};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Best of a few runs, in seconds.
fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// A convolution of `batch` square images of side `side`, padded to keep the side.
fn conv(
    batch: usize,
    c_in: usize,
    c_out: usize,
    side: usize,
    kernel: usize,
    stride: usize,
) -> Conv2d {
    Conv2d {
        batch,
        c_in,
        h: side,
        w: side,
        c_out,
        kernel,
        stride,
        pad: kernel / 2,
    }
}

/// Prints one timed shape: its time per call, GFLOP/s and its seconds per step; returns those.
fn row(label: &str, runs: usize, seconds: f64, flops: f64) -> f64 {
    println!(
        "{label:<34} {runs:>5} {:>9.2} {:>9.1} {:>8.3}",
        seconds * 1e3,
        flops / seconds / 1e9,
        seconds * runs as f64
    );
    seconds * runs as f64
}

// As the app allocates (atelier_cpu::memory): freed pages kept for reuse.
#[global_allocator]
static ALLOC: atelier_cpu::memory::Allocator = atelier_cpu::memory::Allocator;

fn main() {
    atelier_cpu::memory::configure();
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    // (shape, runs per step): SD 1.5's ResNet convolutions (3×3), shortcuts and transformer
    // projections (1×1), down- and upsampling convolutions, in and out.
    let convs = [
        (conv(2, 4, 320, 64, 3, 1), 1),
        (conv(2, 320, 320, 64, 3, 1), 4 + 2 + 1),
        (conv(2, 320, 320, 64, 1, 1), 4 + 6),
        (conv(2, 320, 320, 64, 3, 2), 1),
        (conv(2, 320, 640, 32, 3, 1), 1),
        (conv(2, 640, 640, 32, 3, 1), 3 + 2 + 1),
        (conv(2, 640, 640, 32, 1, 1), 4 + 6),
        (conv(2, 640, 640, 32, 3, 2), 1),
        (conv(2, 640, 1280, 16, 3, 1), 1),
        (conv(2, 1280, 1280, 16, 3, 1), 3 + 3 + 1),
        (conv(2, 1280, 1280, 16, 1, 1), 4 + 6 + 2),
        (conv(2, 1280, 1280, 16, 3, 2), 1),
        (conv(2, 1280, 1280, 8, 3, 1), 4 + 4),
        (conv(2, 2560, 1280, 8, 3, 1), 3),
        (conv(2, 2560, 1280, 16, 3, 1), 2),
        (conv(2, 1920, 1280, 16, 3, 1), 1),
        (conv(2, 1920, 640, 32, 3, 1), 1),
        (conv(2, 1280, 640, 32, 3, 1), 1),
        (conv(2, 960, 640, 32, 3, 1), 1),
        (conv(2, 960, 320, 64, 3, 1), 1),
        (conv(2, 640, 320, 64, 3, 1), 2),
        (conv(2, 320, 4, 64, 3, 1), 1),
    ];
    let mut total = 0.0;
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>8}",
        "convolution", "runs", "ms", "GFLOP/s", "s/step"
    );
    // The VAE decoder's (batch 1): its ResNets and upsamplers at 512², 256² and 128².
    let vae = [
        (conv(1, 128, 128, 512, 3, 1), 5),
        (conv(1, 256, 128, 512, 3, 1), 1),
        (conv(1, 256, 256, 512, 3, 1), 1),
        (conv(1, 256, 256, 256, 3, 1), 5),
        (conv(1, 512, 256, 256, 3, 1), 1),
        (conv(1, 512, 512, 256, 3, 1), 1),
        (conv(1, 512, 512, 128, 3, 1), 7),
    ];
    let convs: Vec<_> = if std::env::var_os("VAE").is_some() {
        vae.to_vec()
    } else {
        convs.to_vec()
    };
    let convs = if std::env::var_os("ATTENTION_ONLY").is_some() {
        &convs[..0]
    } else {
        &convs[..]
    };
    let columns = std::env::var_os("COLUMNS").is_some();
    for &(p, runs) in convs {
        let (x, w, b) = (
            values(p.input_len(), 1),
            values(p.weight_len(), 2),
            values(p.c_out, 3),
        );
        let mut out = vec![0.0; p.output_len()];
        let s = pool.install(|| {
            best(|| {
                if columns {
                    conv2d_columns(&p, &x, &w, &b, &mut out)
                } else {
                    conv2d(&p, &x, &w, &b, &mut out)
                }
            })
        });
        // Direct multiply-adds, whatever the algorithm (so Winograd shows as a higher rate).
        let flops = 2.0 * p.output_len() as f64 * (p.c_in * p.kernel * p.kernel) as f64;
        let label = format!(
            "{}→{} {}² k{} s{}",
            p.c_in, p.c_out, p.h, p.kernel, p.stride
        );
        total += row(&label, runs, s, flops);
    }
    println!("convolutions per step: {total:.2} s\n");
    if std::env::var_os("VAE").is_some() {
        let p = conv(1, 256, 256, 512, 3, 1);
        let (x, w, b) = (
            values(p.input_len() / 4, 1),
            values(p.weight_len(), 2),
            values(p.c_out, 3),
        );
        let mut out = vec![0.0; p.output_len()];
        let s = pool.install(|| best(|| conv2d_upsampled(&p, (256, 256), &x, &w, &b, &mut out)));
        println!(
            "{:<34} {:>5} {:>9.2}",
            "256→256 256²→512² upsampled",
            1,
            s * 1e3
        );
    }
    // Group norms (+ SiLU) of the VAE's largest levels and the UNet's first.
    for (batch, channels, side, silu) in [
        (1, 128, 512, true),
        (1, 256, 256, true),
        (2, 320, 64, true),
        (2, 320, 64, false),
    ] {
        let x = values(batch * channels * side * side, 6);
        let (gamma, beta) = (values(channels, 7), values(channels, 8));
        let mut out = vec![0.0; x.len()];
        let s = pool.install(|| {
            best(|| {
                group_norm(
                    &x,
                    channels,
                    side * side,
                    32,
                    1e-6,
                    &gamma,
                    &beta,
                    silu,
                    &mut out,
                )
            })
        });
        println!(
            "{:<34} {:>5} {:>9.2} {:>8.2} GB/s",
            format!("group norm {batch}×{channels}×{side}² silu {silu}"),
            "",
            s * 1e3,
            (x.len() * 8) as f64 / s / 1e9
        );
    }
    println!();
    // Self-attention at the 64² and 32² levels (8 heads), cross-attention over 77 tokens.
    let mut total = 0.0;
    for (n_q, n_kv, dim, runs) in [
        (4096, 4096, 320, 5),
        (4096, 77, 320, 5),
        (1024, 1024, 640, 5),
        (256, 256, 1280, 5),
    ] {
        let (heads, head_dim) = (8, dim / 8);
        let q = values(2 * n_q * dim, 4);
        let kv = values(2 * n_kv * dim, 5);
        let mut out = vec![0.0; q.len()];
        let scale = 1.0 / (head_dim as f32).sqrt();
        let s = pool.install(|| {
            best(|| attention(&q, &kv, &kv, 2, n_q, n_kv, heads, head_dim, scale, &mut out))
        });
        let flops = 2.0 * 2.0 * 2.0 * (n_q * n_kv * dim) as f64;
        total += row(&format!("attention {n_q}×{n_kv} d{dim}"), runs, s, flops);
    }
    println!("attention per step: {total:.2} s");
}
