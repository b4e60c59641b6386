//! 3×3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2×2, 3×3).
//!
//! Each 4×4 input tile (overlapping its neighbours by 2) and each 3×3 kernel are transformed so
//! that a 2×2 output tile costs 16 multiplications instead of 36. Summed over the input
//! channels, those become 16 independent products `M[e] = U[e] · V[e]` of
//! `(c_out × c_in) · (c_in × tiles)`: 2.25× fewer multiply-adds than image-to-column, and the
//! columns are 16/4 = 4 values per input pixel instead of 9. The transforms use only 0, ±1 and
//! ½, so in f32 the result stays within a few ulps of the direct sum.
//!
//! Layouts: `U` is `[16][c_out][c_in]` (each product's left matrix row-major), a band's `V`
//! `[16][c_in][tiles]` and `M` `[16][c_out][tiles]`. Work goes in bands of tile rows, like
//! [`super::conv2d`], so a band's matrices stay a few MiB and any thread count splits the work
//! the same way (the same bits on 1 or 16 threads).

use gemm::Parallelism;
use rayon::prelude::*;

use super::{Conv2d, Strided, product, spread};
use crate::ops::Out;

/// Tiles per band: products wide enough to run near peak, bands small enough to stay in L2/L3.
const BAND_TILES: usize = 192;

/// Whether `p` is a convolution this kernel computes, and one where it pays. The kernels are
/// transformed on every call (16/9 of the weights; keeping them would cost SD 1.5 about a
/// gigabyte), which only pays off over enough pixels: at SD 1.5's 16² level with CFG (512
/// pixels) it took longer than the saving, at 32² (2048) the convolution ran 1.3–1.6× faster
/// than image-to-column (the `diffusion` example). Narrow channels stay on image-to-column too.
pub(super) fn suits(p: &Conv2d) -> bool {
    p.kernel == 3
        && p.stride == 1
        && p.pad == 1
        && p.c_in >= 32
        && p.c_out >= 32
        && p.batch * p.out_h() * p.out_w() >= 2048
}

/// `U = G g Gᵀ` for every kernel `g` (`[c_out, c_in, 3, 3]`), laid out `[16][c_out][c_in]`,
/// with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn transform_weights(c_out: usize, c_in: usize, weight: &[f32]) -> Vec<f32> {
    // Up to 200 MB, every element written below: no zeroing pass first.
    let len = 16 * c_out * c_in;
    let mut u: Vec<f32> = Vec::with_capacity(len);
    let dst = Out(u.as_mut_ptr());
    let stride = c_out * c_in;
    weight
        .par_chunks_exact(9 * c_in)
        .enumerate()
        .for_each(|(o, kernels)| {
            for (i, g) in kernels.chunks_exact(9).enumerate() {
                // Rows first: t = G g (4 × 3), then columns: u = t Gᵀ (4 × 4).
                let mut t = [[0.0f32; 3]; 4];
                for c in 0..3 {
                    let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                    t[0][c] = g0;
                    t[1][c] = 0.5 * (g0 + g1 + g2);
                    t[2][c] = 0.5 * (g0 - g1 + g2);
                    t[3][c] = g2;
                }
                for (r, row) in t.iter().enumerate() {
                    let [g0, g1, g2] = *row;
                    let v = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
                    for (c, x) in v.into_iter().enumerate() {
                        // SAFETY: element (r·4 + c, o, i) of u; each (o, i) is written by one
                        // iteration only.
                        unsafe { *dst.at((r * 4 + c) * stride + o * c_in + i) = x };
                    }
                }
            }
        });
    // SAFETY: the loops above wrote each of the 16 · c_out · c_in elements once.
    unsafe { u.set_len(len) };
    u
}

/// `out = conv(input, weight) + bias` for a shape that [`suits`], as
/// [`super::conv2d_upsampled`] takes it: `input` is `source` (rows, columns) per plane, read as
/// if scaled to `p.h × p.w` by nearest neighbour (usually the same size).
pub(super) fn conv3x3(
    p: &Conv2d,
    source: (usize, usize),
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    debug_assert!(suits(p));
    let (h, w) = (p.h, p.w);
    let (sh, sw) = source;
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let u = transform_weights(p.c_out, p.c_in, weight);
    let rows = (BAND_TILES / tw).clamp(1, th);
    let bands = th.div_ceil(rows);
    let dst = Out(out.as_mut_ptr());
    let threads = rayon::current_num_threads();
    let band = |unit: usize, scratch: &mut (Vec<f32>, Vec<f32>), parallelism: Parallelism| {
        let (b, ty0) = (unit / bands, (unit % bands) * rows);
        let ty1 = (ty0 + rows).min(th);
        let n = (ty1 - ty0) * tw;
        let (v, m) = scratch;
        v.resize(16 * p.c_in * n, 0.0);
        m.resize(16 * p.c_out * n, 0.0);
        let image = &input[b * p.c_in * sh * sw..][..p.c_in * sh * sw];
        transform_input(
            (image, source),
            (h, w),
            ty0..ty1,
            p.c_in,
            &mut v[..16 * p.c_in * n],
        );
        for e in 0..16 {
            // SAFETY: m[e] is c_out × n, u[e] c_out × c_in, v[e] c_in × n, row-major, and all
            // three belong to this unit (u is only read).
            unsafe {
                product(
                    (p.c_out, n, p.c_in),
                    Strided::rows(m.as_mut_ptr().add(e * p.c_out * n), n),
                    Strided::rows(u.as_ptr().add(e * p.c_out * p.c_in), p.c_in),
                    Strided::rows(v.as_ptr().add(e * p.c_in * n), n),
                    false,
                    parallelism,
                )
            };
        }
        // SAFETY: output rows 2·ty0 .. 2·ty1 of image b are this unit's alone.
        unsafe {
            transform_output(
                &m[..16 * p.c_out * n],
                bias,
                (h, w),
                ty0..ty1,
                b,
                p.c_out,
                dst,
            )
        };
    };
    spread(p.batch * bands, threads, band);
}

/// `V = Bᵀ d B` for every 4×4 tile `d` of tile rows `tys` (tile (ty, tx) starts at input
/// pixel (2ty − 1, 2tx − 1); outside the image reads 0), laid out `[16][c_in][tiles]`, with
/// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`. The image is `source`
/// per plane, read as scaled to `h × w` by nearest neighbour (pixel ⌊i · source / size⌋).
///
/// A tile row at a time: the four input rows are combined first (`Bᵀ d`, whole rows at once),
/// then split into even and odd padded columns, after which each of the 16 outputs is a
/// contiguous run over the row's tiles: plain loops the compiler vectorises.
fn transform_input(
    (image, (sh, sw)): (&[f32], (usize, usize)),
    (h, w): (usize, usize),
    tys: std::ops::Range<usize>,
    c_in: usize,
    v: &mut [f32],
) {
    let tw = w.div_ceil(2);
    // The source column of each output column (the identity when nothing is scaled).
    let column: Vec<usize> = (0..w).map(|x| x * sw / w).collect();
    let n = tys.len() * tw;
    let stride = c_in * n;
    // Padded rows: column X holds input x = X − 1; X runs over 0 .. 2·tw + 2.
    let width = 2 * tw + 2;
    let mut rows = vec![[0.0f32; 4]; 0];
    rows.resize(width, [0.0; 4]);
    let mut even = vec![[0.0f32; 4]; tw + 1];
    let mut odd = vec![[0.0f32; 4]; tw + 1];
    for (c, plane) in image.chunks_exact(sh * sw).enumerate() {
        for (k, ty) in tys.clone().enumerate() {
            // t[X] = (Bᵀ d) for padded column X: the four row combinations.
            let y0 = 2 * ty as isize - 1;
            let line = |r: isize| -> Option<&[f32]> {
                let y = y0 + r;
                (y >= 0 && y < h as isize).then(|| &plane[y as usize * sh / h * sw..][..sw])
            };
            let (d0, d1, d2, d3) = (line(0), line(1), line(2), line(3));
            for (x, t) in rows.iter_mut().enumerate() {
                let at = |l: Option<&[f32]>| match (l, x.checked_sub(1)) {
                    (Some(l), Some(i)) if i < w => l[column[i]],
                    _ => 0.0,
                };
                let (a, b, c2, d) = (at(d0), at(d1), at(d2), at(d3));
                *t = [a - c2, b + c2, c2 - b, b - d];
            }
            for j in 0..=tw {
                even[j] = rows[2 * j];
                odd[j] = rows[2 * j + 1];
            }
            let tile0 = k * tw;
            for r in 0..4 {
                // Tile tx reads padded columns 2tx .. 2tx + 3: even[tx], odd[tx], even[tx + 1],
                // odd[tx + 1]; the column combinations of B.
                let out = |q: usize| (r * 4 + q) * stride + c * n + tile0;
                let (e0, e1) = (&even[..tw], &even[1..]);
                let (o0, o1) = (&odd[..tw], &odd[1..]);
                for (i, dst) in v[out(0)..][..tw].iter_mut().enumerate() {
                    *dst = e0[i][r] - e1[i][r];
                }
                for (i, dst) in v[out(1)..][..tw].iter_mut().enumerate() {
                    *dst = o0[i][r] + e1[i][r];
                }
                for (i, dst) in v[out(2)..][..tw].iter_mut().enumerate() {
                    *dst = e1[i][r] - o0[i][r];
                }
                for (i, dst) in v[out(3)..][..tw].iter_mut().enumerate() {
                    *dst = o0[i][r] - o1[i][r];
                }
            }
        }
    }
}

/// `Y = Aᵀ M A + bias` for every tile of tile rows `tys`, written into image `b` of `out`
/// (cropped at the image's edge), with `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`. Like the input
/// transform, a tile row at a time over contiguous runs of tiles.
///
/// # Safety
/// `out` must hold `[batch, c_out, h, w]` and output rows `2·tys` of image `b` must be the
/// caller's alone.
unsafe fn transform_output(
    m: &[f32],
    bias: &[f32],
    (h, w): (usize, usize),
    tys: std::ops::Range<usize>,
    b: usize,
    c_out: usize,
    out: Out,
) {
    let tw = w.div_ceil(2);
    let n = tys.len() * tw;
    let stride = c_out * n;
    // s[r][q][tx] = (Aᵀ M)[r][q] of each tile of the row.
    let mut s = vec![0.0f32; 8 * tw];
    let mut pair = vec![0.0f32; 2 * tw];
    for (o, &bias) in bias.iter().enumerate() {
        let plane = (b * c_out + o) * h * w;
        for (k, ty) in tys.clone().enumerate() {
            let run = |e: usize| &m[e * stride + o * n + k * tw..][..tw];
            for q in 0..4 {
                let (m0, m1, m2, m3) = (run(q), run(4 + q), run(8 + q), run(12 + q));
                let (top, bottom) = s.split_at_mut(4 * tw);
                for (i, d) in top[q * tw..][..tw].iter_mut().enumerate() {
                    *d = m0[i] + m1[i] + m2[i];
                }
                for (i, d) in bottom[q * tw..][..tw].iter_mut().enumerate() {
                    *d = m1[i] - m2[i] - m3[i];
                }
            }
            for r in 0..2 {
                let y = 2 * ty + r;
                if y >= h {
                    continue;
                }
                let sr = &s[r * 4 * tw..][..4 * tw];
                let (s0, s1, s2, s3) = (
                    &sr[..tw],
                    &sr[tw..2 * tw],
                    &sr[2 * tw..3 * tw],
                    &sr[3 * tw..],
                );
                for (i, d) in pair.chunks_exact_mut(2).enumerate() {
                    d[0] = s0[i] + s1[i] + s2[i] + bias;
                    d[1] = s1[i] - s2[i] - s3[i] + bias;
                }
                // SAFETY: row y of plane o of image b, which the caller gives this unit alone;
                // `w` ≤ 2·tw values.
                unsafe { std::ptr::copy_nonoverlapping(pair.as_ptr(), out.at(plane + y * w), w) };
            }
        }
    }
}
