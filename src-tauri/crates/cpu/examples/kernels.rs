//! Decode-shaped (one activation column) matrix products per weight format, in GB/s of weights
//! read, beside a plain streaming read of the same bytes: tells whether a kernel is limited by
//! memory or by its own instructions.
//!
//! `cargo run --release -p atelier-cpu --example kernels [-- THREADS [WORKING_SET_MIB]]`

use std::time::Instant;

use atelier_cpu::ops::matmul;
use atelier_cpu::pool::Pool;
use atelier_cpu::quant::{Acts, QMatrix};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8_0, GgmlType,
};

fn blocks<B: GgmlType>(x: &[f32]) -> Vec<u8> {
    let mut b = vec![B::zeros(); x.len() / B::BLCK_SIZE];
    B::from_float(x, &mut b);
    let n = std::mem::size_of_val(b.as_slice());
    // SAFETY: the blocks are plain data; viewed as bytes for the GGUF loader.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), n) }.to_vec()
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let set: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
        << 20;
    let pool = Pool::new(threads).expect("pool");
    // Qwen2.5-0.5B's shapes: attention (L2-sized), the FFN (L3-sized), the FFN eight times over
    // (beyond most L3s); k-quant rows are 4864 long like its ffn_down.
    for (rows, cols) in [
        (896usize, 896usize),
        (4864, 896),
        (4864 * 8, 896),
        (896, 4864),
        (896 * 8, 4864),
    ] {
        let mut seed = 1u64;
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let v: Vec<f32> = x[..cols].to_vec();
        let formats: Vec<(GgmlDType, Vec<u8>)> = if cols == 896 {
            vec![
                (GgmlDType::Q4_0, blocks::<BlockQ4_0>(&x)),
                (GgmlDType::Q4_1, blocks::<BlockQ4_1>(&x)),
                (GgmlDType::Q5_0, blocks::<BlockQ5_0>(&x)),
                (GgmlDType::Q8_0, blocks::<BlockQ8_0>(&x)),
            ]
        } else {
            vec![
                (GgmlDType::Q4K, blocks::<BlockQ4K>(&x)),
                (GgmlDType::Q6K, blocks::<BlockQ6K>(&x)),
                (GgmlDType::Q8_0, blocks::<BlockQ8_0>(&x)),
            ]
        };
        for (t, bytes) in formats {
            // Copies enough to make the working set `set` bytes, cycled through like a model's
            // layers, so big sets come from DRAM rather than cache.
            let copies = (set / bytes.len()).max(1);
            let ms: Vec<QMatrix> = (0..copies)
                .map(|_| QMatrix::from_gguf(t, rows, cols, &bytes).expect("matrix"))
                .collect();
            let m = &ms[0];
            let mut acts = Acts::default();
            acts.quantize(&v, cols, m.needs());
            let mut out = vec![0f32; rows];
            let reps = (500_000_000 / bytes.len()).max(3);
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t0 = Instant::now();
                for i in 0..reps {
                    matmul(&pool, &acts, 1, &mut [(&ms[i % copies], &mut out)]).expect("job");
                }
                best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
            }
            // The same bytes streamed and summed, for the memory system's pace.
            let all: Vec<Vec<u64>> = (0..copies)
                .map(|_| {
                    bytes
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                })
                .collect();
            let chunk = all[0].len().div_ceil(threads * 64);
            let mut read_best = f64::MAX;
            let sink = std::sync::atomic::AtomicU64::new(0);
            for _ in 0..3 {
                let t0 = Instant::now();
                for r in 0..reps {
                    let words = &all[r % copies];
                    pool.run_items(
                        words.len().div_ceil(chunk),
                        || (),
                        |_, i| {
                            let s = &words[i * chunk..((i + 1) * chunk).min(words.len())];
                            let mut acc = [0u64; 8];
                            for c in s.chunks_exact(8) {
                                for k in 0..8 {
                                    acc[k] = acc[k].wrapping_add(c[k]);
                                }
                            }
                            sink.fetch_add(
                                acc.iter().sum::<u64>(),
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        },
                    )
                    .expect("job");
                }
                read_best = read_best.min(t0.elapsed().as_secs_f64() / reps as f64);
            }
            let mb = bytes.len() as f64 / 1e6;
            println!(
                "{rows:>6}×{cols} {t:?}: {mb:7.1} MB  {:8.1} µs  {:6.1} GB/s   read {:6.1} GB/s  kernel÷read {:.2}",
                best * 1e6,
                mb / 1e3 / best,
                mb / 1e3 / read_best,
                read_best / best
            );
        }
    }
}
