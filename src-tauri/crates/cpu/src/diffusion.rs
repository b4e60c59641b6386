//! f32 kernels for the diffusion models' UNet and VAE, whose activations are NCHW:
//! - [`conv2d`]: a convolution as image-to-column products, a band of output rows at a time,
//!   written straight into the output (no full column matrix, no output transpose); 3×3
//!   convolutions of wide enough images and channels by Winograd's F(2×2, 3×3) instead
//!   ([`winograd`]), 2.25× fewer multiply-adds;
//! - [`pointwise`]: a 1×1 convolution that reads and writes either image (`[c][pixels]`) or
//!   token (`[pixels][c]`) layout, so the transformers' projections need no transposes;
//! - [`group_norm`]: group normalisation with the SiLU that usually follows it, one pass to
//!   measure and one to write;
//! - [`attention`]: multi-head attention a block of queries at a time, so the score matrix of
//!   4096 × 4096 tokens never exists whole (a block's scores stay in cache);
//! - [`geglu`]: the transformer feed-forward's gate, `a · GELU(g)` with the exact GELU, in one
//!   pass (eight lanes at a time with AVX2) instead of a copy, a GELU and a product.
//!
//! The products are the `gemm` crate's (AVX-512 where the CPU has it). Work is spread on the
//! current rayon pool. Shapes are checked by the callers; a mismatch here is a bug and panics.

use gemm::{Parallelism, gemm};

mod winograd;

use crate::ops::Out;
use rayon::prelude::*;

/// Output pixels per band of [`conv2d`]: enough columns for the products to run near peak, few
/// enough that a band's column matrix (9 × channels × pixels) stays a few MiB.
const BAND_PIXELS: usize = 512;

/// Queries per block of [`attention`]: a block's scores over 4096 keys are 1 MiB.
const QUERY_BLOCK: usize = 64;

/// A 2-D convolution's shape: square kernel, the same stride and zero padding on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    /// Whether the shape is usable: a kernel that fits the padded input and a non-zero stride.
    pub fn is_valid(&self) -> bool {
        self.kernel > 0
            && self.stride > 0
            && self.h + 2 * self.pad >= self.kernel
            && self.w + 2 * self.pad >= self.kernel
    }
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kernel) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kernel) / self.stride + 1
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.c_in * self.h * self.w
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.kernel * self.kernel
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.c_out * self.out_h() * self.out_w()
    }
}

/// `out = conv(input, weight) + bias`, input `[batch, c_in, h, w]`, weight
/// `[c_out, c_in, kernel, kernel]`, output `[batch, c_out, out_h, out_w]`, all contiguous.
pub fn conv2d(p: &Conv2d, input: &[f32], weight: &[f32], bias: &[f32], out: &mut [f32]) {
    conv2d_upsampled(p, (p.h, p.w), input, weight, bias, out)
}

/// Image-to-column [`conv2d`] whatever the shape (the reference the Winograd path is
/// measured and tested against).
pub fn conv2d_columns(p: &Conv2d, input: &[f32], weight: &[f32], bias: &[f32], out: &mut [f32]) {
    conv2d_from(p, (p.h, p.w), input, weight, bias, out)
}

fn check(
    p: &Conv2d,
    (sh, sw): (usize, usize),
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &[f32],
) {
    assert!(p.is_valid(), "conv2d: unusable shape {p:?}");
    assert_eq!(input.len(), p.batch * p.c_in * sh * sw, "conv2d input");
    assert_eq!(weight.len(), p.weight_len(), "conv2d weight");
    assert_eq!(bias.len(), p.c_out, "conv2d bias");
    assert_eq!(out.len(), p.output_len(), "conv2d output");
}

/// [`conv2d`] of `input` (`[batch, c_in, h, w]` with `(h, w)` = `source`) first scaled to
/// `p.h × p.w` by nearest neighbour, without making the scaled copy: the decoders' upsampling
/// (2×, or to a skip connection's size) read straight into the convolution's columns.
pub fn conv2d_upsampled(
    p: &Conv2d,
    source: (usize, usize),
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    assert!(
        source.0 > 0 && source.1 > 0 && source.0 <= p.h && source.1 <= p.w,
        "conv2d: cannot upsample {source:?} to {}×{}",
        p.h,
        p.w
    );
    if winograd::suits(p) {
        check(p, source, input, weight, bias, out);
        return winograd::conv3x3(p, source, input, weight, bias, out);
    }
    conv2d_from(p, source, input, weight, bias, out)
}

fn conv2d_from(
    p: &Conv2d,
    source: (usize, usize),
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    check(p, source, input, weight, bias, out);
    let (sh, sw) = source;
    let (oh, ow) = (p.out_h(), p.out_w());
    let plane = oh * ow;
    // The products add onto the output, so it starts as the bias.
    for image in out.chunks_exact_mut(p.c_out * plane) {
        for (channel, b) in image.chunks_exact_mut(plane).zip(bias) {
            channel.fill(*b);
        }
    }
    let threads = rayon::current_num_threads();
    let depth = p.c_in * p.kernel * p.kernel;
    let dst = Out(out.as_mut_ptr());
    if p.kernel == 1 && p.stride == 1 && p.pad == 0 && source == (p.h, p.w) {
        // Each input image is already its own column matrix.
        for b in 0..p.batch {
            let src = &input[b * p.c_in * plane..][..p.c_in * plane];
            // SAFETY: dst holds c_out × plane from this image's start; lhs c_out × c_in, rhs
            // c_in × plane, all row-major as the strides say.
            unsafe {
                product(
                    (p.c_out, plane, depth),
                    Strided::rows(dst.at(b * p.c_out * plane), plane),
                    Strided::rows(weight.as_ptr(), depth),
                    Strided::rows(src.as_ptr(), plane),
                    true,
                    par(threads),
                )
            };
        }
        return;
    }
    let rows = (BAND_PIXELS / ow).clamp(1, oh);
    let bands = oh.div_ceil(rows);
    let band = |unit: usize, columns: &mut Vec<f32>, parallelism: Parallelism| {
        let (b, y0) = (unit / bands, (unit % bands) * rows);
        let y1 = (y0 + rows).min(oh);
        let n = (y1 - y0) * ow;
        columns.resize(depth * n, 0.0);
        let image = &input[b * p.c_in * sh * sw..][..p.c_in * sh * sw];
        image_to_columns(p, (image, source), y0..y1, &mut columns[..depth * n]);
        // SAFETY: the band's output columns y0·ow.. of each of the c_out planes of image b
        // (row stride `plane`) are written by this unit only; the column matrix is depth × n.
        unsafe {
            product(
                (p.c_out, n, depth),
                Strided::rows(dst.at(b * p.c_out * plane + y0 * ow), plane),
                Strided::rows(weight.as_ptr(), depth),
                Strided::rows(columns.as_ptr(), n),
                true,
                parallelism,
            )
        };
    };
    spread(p.batch * bands, threads, band);
}

/// Runs `unit(i, scratch, parallelism)` for every unit `0..units`: one unit per task when
/// there are enough to keep `threads` busy (each product then single-threaded), else one after
/// another with each product using the threads. Units never split a sum, so the output is the
/// same either way. `scratch` is a unit's reusable buffers, one per task.
fn spread<S: Default + Send>(
    units: usize,
    threads: usize,
    unit: impl Fn(usize, &mut S, Parallelism) + Sync,
) {
    if threads > 1 && units >= 2 * threads {
        (0..units)
            .into_par_iter()
            .for_each_init(S::default, |s, u| unit(u, s, Parallelism::None));
    } else {
        let mut scratch = S::default();
        for u in 0..units {
            unit(u, &mut scratch, par(threads));
        }
    }
}

fn par(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// One operand of [`product`]: where it starts and its (column, row) strides in elements, as
/// gemm takes them.
#[derive(Clone, Copy)]
struct Strided<P> {
    at: P,
    cs: isize,
    rs: isize,
}

impl<P> Strided<P> {
    /// Row-major: columns adjacent, rows `row_stride` apart.
    fn rows(at: P, row_stride: usize) -> Self {
        Strided {
            at,
            cs: 1,
            rs: row_stride as isize,
        }
    }
}

/// `dst (m × n) = lhs (m × k) · rhs (k × n)`, added to what `dst` holds when `accumulate`.
///
/// # Safety
/// Each pointer must hold the matrix its shape and strides describe, and `dst` must not be
/// written by anyone else meanwhile.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: Strided<*mut f32>,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    accumulate: bool,
    parallelism: Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.at,
            dst.cs,
            dst.rs,
            accumulate,
            lhs.at,
            lhs.cs,
            lhs.rs,
            rhs.at,
            rhs.cs,
            rhs.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The column matrix of output rows `ys` of one image: row `(c, ky, kx)` (the weight's order)
/// holds, for each output pixel of the band, the input pixel that kernel tap reads (0 where it
/// falls in the padding). The image is `source` (rows, columns) and is read as if scaled to
/// `p.h × p.w` by nearest neighbour (source pixel ⌊i · source / size⌋), usually the same size.
fn image_to_columns(
    p: &Conv2d,
    (image, source): (&[f32], (usize, usize)),
    ys: std::ops::Range<usize>,
    columns: &mut [f32],
) {
    let ow = p.out_w();
    let n = ys.len() * ow;
    let k = p.kernel;
    let (sh, sw) = source;
    let scaled = source != (p.h, p.w);
    // For a scaled image: the source column of each padded input column (sw = none).
    let columns_of: Vec<usize> = if scaled {
        (0..p.w + 2 * p.pad)
            .map(|x| match x.checked_sub(p.pad) {
                Some(ix) if ix < p.w => ix * sw / p.w,
                _ => sw,
            })
            .collect()
    } else {
        Vec::new()
    };
    for (r, row) in columns.chunks_exact_mut(n).enumerate() {
        let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let plane = &image[c * sh * sw..][..sh * sw];
        for (oy, dst) in ys.clone().zip(row.chunks_exact_mut(ow)) {
            let iy = (oy * p.stride + ky).wrapping_sub(p.pad);
            if iy >= p.h {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[iy * sh / p.h * sw..][..sw];
            if scaled {
                for (ox, d) in dst.iter_mut().enumerate() {
                    *d = src
                        .get(columns_of[ox * p.stride + kx])
                        .copied()
                        .unwrap_or(0.0);
                }
            } else if p.stride == 1 {
                // Output x reads input x + kx − pad: one run of the row, zeros either side.
                let first = p.pad.saturating_sub(kx).min(ow);
                let end = (p.w + p.pad).saturating_sub(kx).clamp(first, ow);
                dst[..first].fill(0.0);
                dst[first..end].copy_from_slice(&src[first + kx - p.pad..end + kx - p.pad]);
                dst[end..].fill(0.0);
            } else {
                for (ox, d) in dst.iter_mut().enumerate() {
                    let ix = (ox * p.stride + kx).wrapping_sub(p.pad);
                    *d = if ix < p.w { src[ix] } else { 0.0 };
                }
            }
        }
    }
}

/// How a `[batch, …]` activation lays out its channels and pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[channels][pixels]` per image (NCHW).
    Image,
    /// `[pixels][channels]` per image (a token sequence).
    Tokens,
}

impl Layout {
    /// (column stride, row stride) of the `pixels × channels` matrix in this layout.
    fn strides(self, pixels: usize, channels: usize) -> (isize, isize) {
        match self {
            Layout::Image => (pixels as isize, 1),
            Layout::Tokens => (1, channels as isize),
        }
    }
}

/// A 1×1 convolution: `out[b, p, o] = bias[o] + Σ_i weight[o, i] · input[b, p, i]` for each of
/// `pixels` pixels, the input read in layout `from` and the output written in layout `to`.
/// `weight` is `[c_out, c_in]` (a 1×1 kernel's weights as they are stored).
#[allow(clippy::too_many_arguments)]
pub fn pointwise(
    (batch, pixels, c_in, c_out): (usize, usize, usize, usize),
    input: &[f32],
    from: Layout,
    weight: &[f32],
    bias: &[f32],
    to: Layout,
    out: &mut [f32],
) {
    assert_eq!(input.len(), batch * pixels * c_in, "pointwise input");
    assert_eq!(weight.len(), c_out * c_in, "pointwise weight");
    assert_eq!(bias.len(), c_out, "pointwise bias");
    assert_eq!(out.len(), batch * pixels * c_out, "pointwise output");
    if out.is_empty() {
        return;
    }
    let threads = rayon::current_num_threads();
    for (out, input) in out
        .chunks_exact_mut(pixels * c_out)
        .zip(input.chunks_exact(pixels * c_in))
    {
        // The product adds onto the output, so it starts as the bias.
        match to {
            Layout::Image => {
                for (channel, b) in out.chunks_exact_mut(pixels).zip(bias) {
                    channel.fill(*b);
                }
            }
            Layout::Tokens => {
                for token in out.chunks_exact_mut(c_out) {
                    token.copy_from_slice(bias);
                }
            }
        }
        let (cs, rs) = to.strides(pixels, c_out);
        let dst = Strided {
            at: out.as_mut_ptr(),
            cs,
            rs,
        };
        let (cs, rs) = from.strides(pixels, c_in);
        let lhs = Strided {
            at: input.as_ptr(),
            cs,
            rs,
        };
        // weightᵀ (c_in × c_out): element (i, o) at o·c_in + i.
        let rhs = Strided {
            at: weight.as_ptr(),
            cs: c_in as isize,
            rs: 1,
        };
        // SAFETY: out is pixels × c_out and input pixels × c_in with the strides of their
        // layouts; the weight holds c_out × c_in.
        unsafe { product((pixels, c_out, c_in), dst, lhs, rhs, true, par(threads)) };
    }
}

/// Group normalisation of `x` (`[batch, channels, spatial]`, contiguous): each group of
/// `channels / groups` channels is scaled to zero mean and unit variance over its channels and
/// pixels, then `gamma · x + beta` per channel, then SiLU when `silu`. Statistics in f64.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    channels: usize,
    spatial: usize,
    groups: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
    out: &mut [f32],
) {
    assert!(
        groups > 0 && channels.is_multiple_of(groups),
        "group_norm groups"
    );
    assert_eq!(gamma.len(), channels, "group_norm gamma");
    assert_eq!(beta.len(), channels, "group_norm beta");
    assert_eq!(x.len(), out.len(), "group_norm output");
    assert!(
        x.len().is_multiple_of((channels * spatial).max(1)),
        "group_norm input"
    );
    let per_group = channels / groups;
    // A group's elements are contiguous: `per_group` channel planes.
    let group_len = per_group * spatial;
    if group_len == 0 {
        return;
    }
    out.par_chunks_mut(group_len)
        .zip(x.par_chunks(group_len))
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let first_channel = (i % groups) * per_group;
            let n = src.len() as f64;
            let mean = sum_f64(src, |x| x) / n;
            let mean32 = mean as f32;
            // Centred, so the variance does not cancel; the residual of rounding the mean to
            // f32 is taken out again in f64.
            let shift = mean - mean32 as f64;
            let var = sum_f64(src, |x| (x - mean32) * (x - mean32)) / n - shift * shift;
            let inv = 1.0 / (var.max(0.0) + eps as f64).sqrt();
            let planes = dst.chunks_exact_mut(spatial).zip(src.chunks_exact(spatial));
            for (c, (d, s)) in planes.enumerate() {
                let ch = first_channel + c;
                let a = gamma[ch] as f64 * inv;
                let b = beta[ch] as f64 - mean * a;
                scale_shift(s, a as f32, b as f32, silu, d);
            }
        });
}

/// Σ f(x) over `xs` in f64, summed in f32 over 16 lanes for 256 values at a time (so it
/// vectorises), each such part added in f64.
fn sum_f64(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    let mut chunks = xs.chunks_exact(256);
    for chunk in &mut chunks {
        let mut lanes = [0f32; 16];
        for sixteen in chunk.chunks_exact(16) {
            for (l, &x) in lanes.iter_mut().zip(sixteen) {
                *l += f(x);
            }
        }
        total += lanes.iter().map(|&l| l as f64).sum::<f64>();
    }
    total + chunks.remainder().iter().map(|&x| f(x) as f64).sum::<f64>()
}

/// `out = a · x + b`, then SiLU (`y · sigmoid(y)`) when `silu`.
fn scale_shift(x: &[f32], a: f32, b: f32, silu: bool, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::simd() {
        // SAFETY: AVX2/FMA checked just above.
        return unsafe { vector_avx2::scale_shift(x, a, b, silu, out) };
    }
    for (o, &x) in out.iter_mut().zip(x) {
        let y = a * x + b;
        *o = if silu { y / (1.0 + (-y).exp()) } else { y };
    }
}

/// Multi-head attention: `q` `[batch, n_q, heads × head_dim]`, `k` and `v`
/// `[batch, n_kv, heads × head_dim]`, into `out` shaped like `q`: softmax(q·kᵀ · scale)·v per
/// head. No mask (the UNet's attention is not causal).
///
/// A block of queries is laid out query-minor: its scores are `[n_kv][queries]`, so both
/// products run with the queries along the vector lanes and read the keys and values where
/// they lie (no packing of K or V for every block, which cost as much as the products), and
/// the softmax works on whole vectors of queries.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: usize,
    n_q: usize,
    n_kv: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    let width = heads * head_dim;
    assert_eq!(q.len(), batch * n_q * width, "attention q");
    assert_eq!(k.len(), batch * n_kv * width, "attention k");
    assert_eq!(v.len(), batch * n_kv * width, "attention v");
    assert_eq!(out.len(), q.len(), "attention output");
    if q.is_empty() {
        return;
    }
    assert!(n_kv > 0, "attention over no keys");
    let blocks = n_q.div_ceil(QUERY_BLOCK);
    let dst = Out(out.as_mut_ptr());
    (0..batch * heads * blocks).into_par_iter().for_each_init(
        BlockScratch::default,
        |s: &mut BlockScratch, unit| {
            let (bh, block) = (unit / blocks, unit % blocks);
            let (b, h) = (bh / heads, bh % heads);
            let q0 = block * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(n_q - q0);
            let q_at = b * n_q * width + q0 * width + h * head_dim;
            let kv_at = b * n_kv * width + h * head_dim;
            // The block's queries, scaled, as [head_dim][rows].
            s.queries.resize(head_dim * rows, 0.0);
            for r in 0..rows {
                let src = &q[q_at + r * width..][..head_dim];
                for (d, &x) in src.iter().enumerate() {
                    s.queries[d * rows + r] = x * scale;
                }
            }
            s.scores.resize(n_kv * rows, 0.0);
            // SAFETY: scores is [n_kv][rows] (column-major rows × n_kv); queries is
            // [head_dim][rows]; key j's head-h values are head_dim contiguous floats at
            // kv_at + j·width, inside k.
            unsafe {
                product(
                    (rows, n_kv, head_dim),
                    Strided {
                        at: s.scores.as_mut_ptr(),
                        cs: rows as isize,
                        rs: 1,
                    },
                    Strided {
                        at: s.queries.as_ptr(),
                        cs: rows as isize,
                        rs: 1,
                    },
                    Strided {
                        at: k.as_ptr().add(kv_at),
                        cs: width as isize,
                        rs: 1,
                    },
                    false,
                    Parallelism::None,
                )
            };
            let sums = softmax_lanes(&mut s.scores, rows);
            s.values.resize(head_dim * rows, 0.0);
            // SAFETY: values is [head_dim][rows]; the weights are the scores' layout; value
            // j's head-h entries are at kv_at + j·width + d, inside v.
            unsafe {
                product(
                    (rows, head_dim, n_kv),
                    Strided {
                        at: s.values.as_mut_ptr(),
                        cs: rows as isize,
                        rs: 1,
                    },
                    Strided {
                        at: s.scores.as_ptr(),
                        cs: rows as isize,
                        rs: 1,
                    },
                    Strided {
                        at: v.as_ptr().add(kv_at),
                        cs: 1,
                        rs: width as isize,
                    },
                    false,
                    Parallelism::None,
                )
            };
            for (r, sum) in sums.iter().enumerate().take(rows) {
                // SAFETY: this unit alone writes rows q0..q0+rows of head h in `out`.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(dst.at(q_at + r * width), head_dim) };
                let inv = 1.0 / sum;
                for (d, o) in row.iter_mut().enumerate() {
                    *o = s.values[d * rows + r] * inv;
                }
            }
        },
    );
}

/// One attention block's working memory, kept per rayon task.
#[derive(Default)]
struct BlockScratch {
    queries: Vec<f32>,
    scores: Vec<f32>,
    values: Vec<f32>,
}

/// Softmax's numerators over `scores` laid out `[keys][lanes]`: each lane (query) gets
/// e^(s − its maximum) in place; returns each lane's sum.
fn softmax_lanes(scores: &mut [f32], lanes: usize) -> [f32; QUERY_BLOCK] {
    assert!(lanes <= QUERY_BLOCK && scores.len().is_multiple_of(lanes.max(1)));
    let mut sums = [0f32; QUERY_BLOCK];
    #[cfg(target_arch = "x86_64")]
    if crate::quant::simd() && lanes == QUERY_BLOCK {
        // SAFETY: AVX2 checked just above; the keys are rows of QUERY_BLOCK lanes.
        let max = unsafe { vector_avx2::lane_max(scores) };
        for key in scores.chunks_exact_mut(lanes) {
            // SAFETY: AVX2/FMA checked just above; all three hold `lanes` (a multiple of 8).
            unsafe { vector_avx2::exp_sub_add(key, &max[..lanes], &mut sums[..lanes]) };
        }
        return sums;
    }
    let mut max = [f32::NEG_INFINITY; QUERY_BLOCK];
    for key in scores.chunks_exact(lanes) {
        for (m, &x) in max.iter_mut().zip(key) {
            *m = if x > *m { x } else { *m };
        }
    }
    for key in scores.chunks_exact_mut(lanes) {
        for ((x, m), sum) in key.iter_mut().zip(&max).zip(&mut sums) {
            *x = (*x - m).exp();
            *sum += *x;
        }
    }
    sums
}

/// The GEGLU gate of each row of `h` (`[rows, 2 · inner]`, the halves `a` and `g`):
/// `out[r, i] = a[r, i] · GELU(g[r, i])`, `out` `[rows, inner]`. GELU is the exact one,
/// `x · Φ(x)`, as diffusers computes it (not the tanh form).
pub fn geglu(h: &[f32], inner: usize, out: &mut [f32]) {
    assert!(inner > 0, "geglu: empty rows");
    assert!(h.len().is_multiple_of(2 * inner), "geglu input");
    assert_eq!(out.len() * 2, h.len(), "geglu output");
    // Rows of a few thousand values: enough per task that rayon's overhead does not show.
    let rows_per_task = (16_384 / inner).max(1);
    out.par_chunks_mut(rows_per_task * inner)
        .zip(h.par_chunks(rows_per_task * 2 * inner))
        .for_each(|(out, h)| {
            for (out, row) in out.chunks_exact_mut(inner).zip(h.chunks_exact(2 * inner)) {
                let (a, g) = row.split_at(inner);
                gate(a, g, out);
            }
        });
}

/// `out = a · GELU(g)`, elementwise.
fn gate(a: &[f32], g: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::simd() {
        // SAFETY: AVX2/FMA checked just above.
        return unsafe { vector_avx2::gate(a, g, out) };
    }
    for ((o, &a), &g) in out.iter_mut().zip(a).zip(g) {
        *o = a * gelu(g);
    }
}

/// Abramowitz and Stegun 7.1.26: erfc(z) ≈ P(t) · e^(−z²), t = 1 / (1 + p·z), z ≥ 0, with an
/// absolute error below 1.5e-7.
const ERFC_P: f32 = 0.327_591_1;
const ERFC_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152,
    1.061_405_4,
];

/// The exact GELU, `x · Φ(x)`, Φ from erfc of |x|/√2 so the negative tail keeps its relative
/// precision instead of being 1 − (almost 1).
pub fn gelu(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + ERFC_P * z);
    let poly = ERFC_A.iter().rev().fold(0.0, |acc, &c| (acc + c) * t);
    // Half of erfc(z): the normal tail beyond |x|.
    let tail = 0.5 * poly * (-z * z).exp();
    x * if x >= 0.0 { 1.0 - tail } else { tail }
}

#[cfg(target_arch = "x86_64")]
mod vector_avx2 {
    use super::{ERFC_A, ERFC_P, QUERY_BLOCK};
    use crate::ops::attention_avx2::exp_neg;
    use std::arch::x86_64::*;

    /// Each lane's maximum over `scores` laid out `[keys][QUERY_BLOCK]`, the lanes held in
    /// registers for the whole pass.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn lane_max(scores: &[f32]) -> [f32; QUERY_BLOCK] {
        const REGS: usize = QUERY_BLOCK / 8;
        let mut max = [f32::NEG_INFINITY; QUERY_BLOCK];
        // SAFETY: each key row holds QUERY_BLOCK floats; AVX2 enabled.
        unsafe {
            let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); REGS];
            for key in scores.chunks_exact(QUERY_BLOCK) {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_max_ps(*a, _mm256_loadu_ps(key.as_ptr().add(8 * i)));
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(max.as_mut_ptr().add(8 * i), *a);
            }
        }
        max
    }

    /// [`super::scale_shift`] eight lanes at a time. The sigmoid takes e^(−|y|) (never
    /// overflows): 1 / (1 + e) for y ≥ 0, e / (1 + e) below.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scale_shift(x: &[f32], a: f32, b: f32, silu: bool, out: &mut [f32]) {
        let n = x.len().min(out.len());
        let body = n - n % 8;
        // SAFETY: loads and stores stay below `body` ≤ both lengths; AVX2/FMA enabled.
        unsafe {
            let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
            let (one, sign) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-0.0));
            for i in (0..body).step_by(8) {
                let mut y = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i)), va, vb);
                if silu {
                    let e = exp_neg(_mm256_or_ps(y, sign));
                    let r = _mm256_div_ps(one, _mm256_add_ps(one, e));
                    let sigmoid = _mm256_blendv_ps(r, _mm256_mul_ps(e, r), y);
                    y = _mm256_mul_ps(y, sigmoid);
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
            }
        }
        for i in body..n {
            let y = a * x[i] + b;
            out[i] = if silu { y / (1.0 + (-y).exp()) } else { y };
        }
    }

    /// `x = e^(x − max)`, `sum += x`, lane by lane; all three the same length, a multiple
    /// of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub_add(x: &mut [f32], max: &[f32], sum: &mut [f32]) {
        // SAFETY: the caller gives equal lengths, multiples of 8; AVX2/FMA enabled.
        unsafe {
            for i in (0..x.len()).step_by(8) {
                let e = exp_neg(_mm256_sub_ps(
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(max.as_ptr().add(i)),
                ));
                _mm256_storeu_ps(x.as_mut_ptr().add(i), e);
                let s = _mm256_add_ps(_mm256_loadu_ps(sum.as_ptr().add(i)), e);
                _mm256_storeu_ps(sum.as_mut_ptr().add(i), s);
            }
        }
    }

    /// [`super::gate`] eight lanes at a time: [`super::gelu`]'s formula in vector form.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gate(a: &[f32], g: &[f32], out: &mut [f32]) {
        let n = out.len().min(a.len()).min(g.len());
        let body = n - n % 8;
        // SAFETY: loads and stores stay below `body` ≤ each slice's length; AVX2/FMA enabled.
        unsafe {
            let sign = _mm256_set1_ps(-0.0);
            let one = _mm256_set1_ps(1.0);
            for i in (0..body).step_by(8) {
                let x = _mm256_loadu_ps(g.as_ptr().add(i));
                let z = _mm256_mul_ps(
                    _mm256_andnot_ps(sign, x),
                    _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
                );
                let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERFC_P), z, one));
                let mut poly = _mm256_set1_ps(ERFC_A[4]);
                for c in ERFC_A[..4].iter().rev() {
                    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(*c));
                }
                poly = _mm256_mul_ps(poly, t);
                let e = exp_neg(_mm256_xor_ps(_mm256_mul_ps(z, z), sign));
                let tail = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), poly), e);
                // Φ(x) = 1 − tail for x ≥ 0, tail below: pick by x's sign bit.
                let phi = _mm256_blendv_ps(_mm256_sub_ps(one, tail), tail, x);
                let y = _mm256_mul_ps(_mm256_mul_ps(x, phi), _mm256_loadu_ps(a.as_ptr().add(i)));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
            }
        }
        for i in body..n {
            out[i] = a[i] * super::gelu(g[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [−1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The convolution's definition, summed in f64.
    fn conv_reference(p: &Conv2d, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let (oh, ow, k) = (p.out_h(), p.out_w(), p.kernel);
        let mut out = vec![0.0; p.output_len()];
        for b in 0..p.batch {
            for co in 0..p.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = bias[co] as f64;
                        for ci in 0..p.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                                    let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((b * p.c_in + ci) * p.h + iy as usize) * p.w + ix as usize;
                                    let wi = ((co * p.c_in + ci) * k + ky) * k + kx;
                                    s += x[xi] as f64 * w[wi] as f64;
                                }
                            }
                        }
                        out[((b * p.c_out + co) * oh + oy) * ow + ox] = s as f32;
                    }
                }
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}: element {i} is {g}, expected {w}"
            );
        }
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn conv2d_matches_the_definition() {
        let shapes = [
            // 3×3, padding 1: the UNet's and VAE's convolutions; odd sizes, several bands.
            (2, 5, 9, 70, 7, 3, 1, 1),
            (1, 3, 33, 17, 4, 3, 1, 1),
            // Stride 2 (downsamplers), even and odd sides.
            (2, 4, 16, 16, 6, 3, 2, 1),
            (1, 4, 15, 9, 3, 3, 2, 1),
            // 1×1 (shortcuts, projections).
            (2, 8, 6, 5, 3, 1, 1, 0),
            // No padding, a kernel as wide as the input.
            (1, 2, 3, 3, 2, 3, 1, 0),
        ];
        for (i, &(batch, c_in, h, w, c_out, kernel, stride, pad)) in shapes.iter().enumerate() {
            let p = Conv2d {
                batch,
                c_in,
                h,
                w,
                c_out,
                kernel,
                stride,
                pad,
            };
            let x = values(p.input_len(), 1 + i as u64);
            let wt = values(p.weight_len(), 100 + i as u64);
            let bias = values(c_out, 200 + i as u64);
            let want = conv_reference(&p, &x, &wt, &bias);
            for threads in [1, 3] {
                let mut out = vec![f32::NAN; p.output_len()];
                pool(threads).install(|| conv2d(&p, &x, &wt, &bias, &mut out));
                assert_close(&out, &want, 1e-5, &format!("{p:?}, {threads} threads"));
            }
        }
    }

    #[test]
    fn winograd_conv2d_matches_the_definition_on_any_thread_count() {
        // Odd sides (a cropped last tile row and column), one band and several, batch 2.
        for (i, &(batch, c_in, h, w, c_out)) in [(2, 32, 33, 35, 33), (1, 40, 48, 48, 32)]
            .iter()
            .enumerate()
        {
            let p = Conv2d {
                batch,
                c_in,
                h,
                w,
                c_out,
                kernel: 3,
                stride: 1,
                pad: 1,
            };
            assert!(
                winograd::suits(&p),
                "{p:?} would not take the Winograd path"
            );
            let x = values(p.input_len(), 7 + i as u64);
            let wt = values(p.weight_len(), 70 + i as u64);
            let bias = values(c_out, 700 + i as u64);
            let want = conv_reference(&p, &x, &wt, &bias);
            let mut first: Option<Vec<f32>> = None;
            for threads in [1, 2, 3] {
                let mut out = vec![f32::NAN; p.output_len()];
                pool(threads).install(|| conv2d(&p, &x, &wt, &bias, &mut out));
                // Sums of 9·c_in products of values in [−1, 1): a few units in the last place
                // of sums that reach ~10.
                assert_close(&out, &want, 2e-5, &format!("{p:?}, {threads} threads"));
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{p:?}: {threads} threads gave other bits than 1"
                    ),
                }
            }
        }
    }

    #[test]
    fn group_norm_matches_the_definition() {
        // A small group (all in the tail of the 256-value parts) and a large one far from zero
        // (the parts, and a mean that would cancel in E[x²] − E[x]²).
        for (batch, channels, spatial, groups, offset) in
            [(2, 12, 37, 4, 0.5f32), (1, 8, 1000, 2, 100.0)]
        {
            let x: Vec<f32> = values(batch * channels * spatial, 7)
                .iter()
                .map(|v| 3.0 * v + offset)
                .collect();
            let gamma = values(channels, 8);
            let beta = values(channels, 9);
            for silu in [false, true] {
                let mut out = vec![f32::NAN; x.len()];
                pool(2).install(|| {
                    group_norm(
                        &x, channels, spatial, groups, 1e-5, &gamma, &beta, silu, &mut out,
                    )
                });
                let per = channels / groups;
                let mut want = vec![0.0; x.len()];
                for b in 0..batch {
                    for g in 0..groups {
                        let range = (b * channels + g * per) * spatial
                            ..(b * channels + (g + 1) * per) * spatial;
                        let n = range.len() as f64;
                        let mean = x[range.clone()].iter().map(|&v| v as f64).sum::<f64>() / n;
                        let var = x[range.clone()]
                            .iter()
                            .map(|&v| (v as f64 - mean).powi(2))
                            .sum::<f64>()
                            / n;
                        for i in range {
                            let c = (i / spatial) % channels;
                            let y = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * gamma[c] as f64
                                + beta[c] as f64;
                            want[i] = if silu { y / (1.0 + (-y).exp()) } else { y } as f32;
                        }
                    }
                }
                assert_close(&out, &want, 1e-5, &format!("silu {silu}"));
            }
        }
    }

    #[test]
    fn attention_matches_the_definition() {
        // Query counts that leave a partial block; key counts of self- and cross-attention.
        for &(batch, n_q, n_kv, heads, head_dim) in
            &[(2, 150, 150, 3, 8), (1, 70, 77, 2, 40), (1, 5, 1, 1, 4)]
        {
            let width = heads * head_dim;
            let q = values(batch * n_q * width, 11);
            let k = values(batch * n_kv * width, 12);
            let v = values(batch * n_kv * width, 13);
            let scale = 1.0 / (head_dim as f32).sqrt() * 4.0; // sharper than usual
            let mut out = vec![f32::NAN; q.len()];
            pool(2).install(|| {
                attention(
                    &q, &k, &v, batch, n_q, n_kv, heads, head_dim, scale, &mut out,
                )
            });
            let mut want = vec![0.0; q.len()];
            for b in 0..batch {
                for h in 0..heads {
                    for i in 0..n_q {
                        let qi = &q[(b * n_q + i) * width + h * head_dim..][..head_dim];
                        let s: Vec<f64> = (0..n_kv)
                            .map(|j| {
                                let kj = &k[(b * n_kv + j) * width + h * head_dim..][..head_dim];
                                qi.iter()
                                    .zip(kj)
                                    .map(|(a, b)| *a as f64 * *b as f64)
                                    .sum::<f64>()
                                    * scale as f64
                            })
                            .collect();
                        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        for d in 0..head_dim {
                            want[(b * n_q + i) * width + h * head_dim + d] = (0..n_kv)
                                .map(|j| {
                                    e[j] / sum * v[(b * n_kv + j) * width + h * head_dim + d] as f64
                                })
                                .sum::<f64>()
                                as f32;
                        }
                    }
                }
            }
            assert_close(
                &out,
                &want,
                1e-5,
                &format!("{batch}×{n_q}×{n_kv}×{heads}×{head_dim}"),
            );
        }
    }

    /// Φ(x) in f64: erf's Taylor series near 0, erfc's continued fraction in the tails (where
    /// the series would cancel), both exact to ~1e-13 here.
    fn phi_reference(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let tail = if z < 2.5 {
            let (mut term, mut sum) = (z, z);
            for n in 1..100 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            0.5 * (1.0 - sum * 2.0 / std::f64::consts::PI.sqrt())
        } else {
            let fraction = (1..200).rev().fold(z, |acc, n| z + (n as f64 / 2.0) / acc);
            0.5 * (-z * z).exp() / std::f64::consts::PI.sqrt() / fraction
        };
        if x >= 0.0 { 1.0 - tail } else { tail }
    }

    #[test]
    fn geglu_matches_the_definition() {
        // Values across the GELU's shape (−7..7), rows long enough for the vector body and a
        // tail, and several rows per task.
        for &(rows, inner) in &[(3, 37), (40, 1000), (1, 5)] {
            let h: Vec<f32> = values(rows * 2 * inner, 21)
                .iter()
                .map(|x| x * 7.0)
                .collect();
            let mut out = vec![f32::NAN; rows * inner];
            pool(2).install(|| geglu(&h, inner, &mut out));
            let want: Vec<f32> = (0..rows * inner)
                .map(|i| {
                    let (r, c) = (i / inner, i % inner);
                    let (a, g) = (
                        h[r * 2 * inner + c] as f64,
                        h[r * 2 * inner + inner + c] as f64,
                    );
                    (a * g * phi_reference(g)) as f32
                })
                .collect();
            assert_close(&out, &want, 2e-6, &format!("geglu {rows}×{inner}"));
        }
        // The scalar form, which AVX2 machines only use for tails: deep in the negative tail
        // it keeps relative precision (Φ(−6) ≈ 1e-9, not 0).
        for &x in &[-9.0f32, -6.0, -1.5, -1e-3, 0.0, 0.3, 2.0, 6.0] {
            let want = x as f64 * phi_reference(x as f64);
            let got = gelu(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * (1.0 + want.abs()) && (x > -5.0 || got < 0.0),
                "gelu({x}) = {got}, expected {want}"
            );
        }
    }

    #[test]
    fn pointwise_matches_the_definition_in_every_layout() {
        let (batch, pixels, c_in, c_out) = (2, 37, 9, 5);
        let x = values(batch * pixels * c_in, 31);
        let w = values(c_out * c_in, 32);
        let bias = values(c_out, 33);
        // x in image layout; the same values as tokens.
        let mut tokens = vec![0.0; x.len()];
        for b in 0..batch {
            for p in 0..pixels {
                for i in 0..c_in {
                    tokens[(b * pixels + p) * c_in + i] = x[(b * c_in + i) * pixels + p];
                }
            }
        }
        let want = |b: usize, p: usize, o: usize| {
            bias[o] as f64
                + (0..c_in)
                    .map(|i| w[o * c_in + i] as f64 * x[(b * c_in + i) * pixels + p] as f64)
                    .sum::<f64>()
        };
        for from in [Layout::Image, Layout::Tokens] {
            for to in [Layout::Image, Layout::Tokens] {
                let input = if from == Layout::Image { &x } else { &tokens };
                let mut out = vec![f32::NAN; batch * pixels * c_out];
                pool(2).install(|| {
                    pointwise(
                        (batch, pixels, c_in, c_out),
                        input,
                        from,
                        &w,
                        &bias,
                        to,
                        &mut out,
                    )
                });
                let mut expected = vec![0.0; out.len()];
                for b in 0..batch {
                    for p in 0..pixels {
                        for o in 0..c_out {
                            let at = match to {
                                Layout::Image => (b * c_out + o) * pixels + p,
                                Layout::Tokens => (b * pixels + p) * c_out + o,
                            };
                            expected[at] = want(b, p, o) as f32;
                        }
                    }
                }
                assert_close(&out, &expected, 1e-5, &format!("{from:?} -> {to:?}"));
            }
        }
    }

    #[test]
    fn upsampled_conv2d_matches_a_conv_of_the_scaled_image() {
        // 2× (the VAE's and UNet's upsamplers) and to an odd size (a UNet skip rounded up).
        // The last two take the Winograd path (≥ 32 channels, ≥ 2048 pixels).
        for &(sh, sw, h, w, c) in &[
            (4, 5, 8, 10, 3),
            (5, 4, 9, 7, 3),
            (3, 3, 3, 3, 3),
            (17, 16, 34, 32, 32),
            (20, 19, 41, 37, 32),
        ] {
            let p = Conv2d {
                batch: 2,
                c_in: c,
                h,
                w,
                c_out: c + 1,
                kernel: 3,
                stride: 1,
                pad: 1,
            };
            let x = values(p.batch * p.c_in * sh * sw, 41);
            let mut scaled = vec![0.0; p.input_len()];
            for (plane, src) in scaled.chunks_exact_mut(h * w).zip(x.chunks_exact(sh * sw)) {
                for y in 0..h {
                    for xx in 0..w {
                        // Nearest neighbour as candle and PyTorch compute it.
                        let (fy, fx) = (
                            y as f64 * sh as f64 / h as f64,
                            xx as f64 * sw as f64 / w as f64,
                        );
                        plane[y * w + xx] = src[fy as usize * sw + fx as usize];
                    }
                }
            }
            let (wt, bias) = (values(p.weight_len(), 42), values(p.c_out, 43));
            let want = conv_reference(&p, &scaled, &wt, &bias);
            let mut out = vec![f32::NAN; p.output_len()];
            pool(2).install(|| conv2d_upsampled(&p, (sh, sw), &x, &wt, &bias, &mut out));
            assert_eq!(winograd::suits(&p), c >= 32, "{p:?}");
            // Winograd's sums of 9 · 32 products land a few ulps from the f64 reference.
            assert_close(&out, &want, 2e-5, &format!("{sh}×{sw} -> {h}×{w}"));
        }
    }
}
