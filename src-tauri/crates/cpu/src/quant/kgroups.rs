//! Q4_K and Q6_K (the k-quants of `Q4_K_M` files, and of Qwen's `ffn_down`) in groups of eight
//! rows, like the legacy formats in [`super::groups`]: each 32-value slice of a super-block is
//! laid out as a legacy group block, so one `vpdpbusd` multiplies four values of eight rows.
//! Against candle's one-row kernels this measured 1.3–1.5× on decode and, with four columns
//! sharing each unpacked slice, more on prefill.
//!
//! The sub-block scales are integers, so a super-block is summed in integers (exact, hence the
//! same result at every instruction level and tile width) and scaled once in float:
//! Q4_K: `d_a × (d × Σ_j sc_j · dot_j − dmin × Σ_j m_j · Σa_j)`;
//! Q6_K: `d_a × d × Σ_k sc_k · (dot_k − 32 · Σa_k)`, with candle's Q8_K activations
//! (256 values, one f32 scale, sums per 16).
//!
//! Q6_K keeps its exact size. Q4_K's packed 6-bit scales and minima are kept as bytes, 16 per row
//! and super-block instead of 12 (+2.8 %), because unpacking them inside the loop would cost
//! more than the bytes.
//!
//! Group super-block layouts (eight rows, 256 values):
//! - Q4_K: `d` 8 × f16, `dmin` 8 × f16, `sc` `[j][row]` u8 (64), minima `[j / 2][row][j % 2]`
//!   u8 (64), then eight slices of 128 bytes, each packed like a legacy Q4 group block.
//! - Q6_K: `d` 8 × f16, `sc` `[k][row]` i8 (128), then eight slices of 192 bytes: 128 bytes of
//!   nibbles packed like a legacy Q4 group block, then 64 bytes of the top two bits: value vector
//!   `v`, byte `j` keeps them at bits `2 (v % 4)` of byte `j` of the 32 bytes `v / 4`.

use half::f16;

use super::WType;
use super::groups::ROWS;

const QK_K: usize = 256;

pub const Q4K_D: usize = 0;
pub const Q4K_DMIN: usize = 16;
pub const Q4K_SC: usize = 32;
pub const Q4K_MIN: usize = 96;
pub const Q4K_QS: usize = 160;
pub const Q4K_BYTES: usize = Q4K_QS + 8 * 128;

pub const Q6K_D: usize = 0;
pub const Q6K_SC: usize = 16;
pub const Q6K_QS: usize = 144;
pub const Q6K_SLICE: usize = 192;
pub const Q6K_BYTES: usize = Q6K_QS + 8 * Q6K_SLICE;

/// Bytes of one group super-block.
pub const fn group_block_bytes(t: WType) -> usize {
    match t {
        WType::Q4K => Q4K_BYTES,
        _ => Q6K_BYTES,
    }
}

/// A Q4_K block's scale and minimum of sub-block `j` (ggml's 6-bit packing).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// A GGUF Q4_K block (144 bytes): its 256 values (0..16) and the eight scales and minima.
fn q4k_block(blk: &[u8]) -> ([u8; QK_K], [u8; 8], [u8; 8]) {
    let qs = &blk[16..144];
    let mut v = [0u8; QK_K];
    for p in 0..4 {
        for l in 0..32 {
            v[64 * p + l] = qs[32 * p + l] & 0x0F;
            v[64 * p + 32 + l] = qs[32 * p + l] >> 4;
        }
    }
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, &blk[4..16]);
    }
    (v, sc, m)
}

/// A GGUF Q6_K block (210 bytes): its 256 values (0..64, 32 meaning zero) and 16 scales.
fn q6k_block(blk: &[u8]) -> ([u8; QK_K], [i8; 16]) {
    let mut v = [0u8; QK_K];
    for half in 0..2 {
        let n = 128 * half;
        let ql = &blk[64 * half..];
        let qh = &blk[128 + 32 * half..];
        for l in 0..32 {
            v[n + l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            v[n + l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            v[n + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            v[n + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    let sc = std::array::from_fn(|k| blk[192 + k] as i8);
    (v, sc)
}

/// Byte `4i + k` of the 32 bytes `c` of a legacy Q4 group block: values `8c + k` (low nibble)
/// and `8c + 4 + k` (high) of row `i`'s 32 values `u`.
fn nibble_pair(u: &[u8], c: usize, k: usize) -> u8 {
    (u[8 * c + k] & 0x0F) | (u[8 * c + 4 + k] & 0x0F) << 4
}

/// Rearranges `rows` GGUF rows of `nb` super-blocks into groups; `dst` holds
/// `rows.div_ceil(8) × nb` zeroed group super-blocks.
pub fn pack(t: WType, src: &[u8], rows: usize, nb: usize, dst: &mut [u8]) {
    let bb = t.block().1;
    let gb = group_block_bytes(t);
    for (gi, group) in dst.chunks_exact_mut(nb * gb).enumerate() {
        for (b, out) in group.chunks_exact_mut(gb).enumerate() {
            for i in 0..ROWS {
                let r = gi * ROWS + i;
                if r >= rows {
                    continue;
                }
                let blk = &src[(r * nb + b) * bb..][..bb];
                if t == WType::Q4K {
                    let (v, sc, m) = q4k_block(blk);
                    out[Q4K_D + 2 * i..][..2].copy_from_slice(&blk[0..2]);
                    out[Q4K_DMIN + 2 * i..][..2].copy_from_slice(&blk[2..4]);
                    for j in 0..8 {
                        out[Q4K_SC + 8 * j + i] = sc[j];
                        out[Q4K_MIN + 16 * (j / 2) + 2 * i + j % 2] = m[j];
                        let u = &v[32 * j..32 * j + 32];
                        for c in 0..4 {
                            for k in 0..4 {
                                out[Q4K_QS + 128 * j + 32 * c + 4 * i + k] = nibble_pair(u, c, k);
                            }
                        }
                    }
                } else {
                    let (v, sc) = q6k_block(blk);
                    out[Q6K_D + 2 * i..][..2].copy_from_slice(&blk[208..210]);
                    for (k, s) in sc.iter().enumerate() {
                        out[Q6K_SC + 8 * k + i] = *s as u8;
                    }
                    for s in 0..8 {
                        let base = Q6K_QS + Q6K_SLICE * s;
                        let u = &v[32 * s..32 * s + 32];
                        for c in 0..4 {
                            for k in 0..4 {
                                out[base + 32 * c + 4 * i + k] = nibble_pair(u, c, k);
                            }
                        }
                        for (idx, &u) in u.iter().enumerate() {
                            let (vec, j) = (idx / 4, 4 * i + idx % 4);
                            out[base + 128 + 32 * (vec / 4) + j] |= (u >> 4) << (2 * (vec % 4));
                        }
                    }
                }
            }
        }
    }
}

/// Row `i` (0..8) of a packed group super-block as floats, computed exactly as candle's
/// `to_float` does.
pub fn dequantize_row(t: WType, gblk: &[u8], i: usize, y: &mut [f32]) {
    let h = |at: usize| f16::from_le_bytes([gblk[at], gblk[at + 1]]).to_f32();
    let nib = |slice: usize, idx: usize| {
        let (v, k) = (idx / 4, idx % 4);
        (gblk[slice + 32 * (v / 2) + 4 * i + k] >> (4 * (v % 2))) & 0x0F
    };
    if t == WType::Q4K {
        let (d, min) = (h(Q4K_D + 2 * i), h(Q4K_DMIN + 2 * i));
        for j in 0..8 {
            let d1 = d * gblk[Q4K_SC + 8 * j + i] as f32;
            let m1 = min * gblk[Q4K_MIN + 16 * (j / 2) + 2 * i + j % 2] as f32;
            for idx in 0..32 {
                y[32 * j + idx] = d1 * nib(Q4K_QS + 128 * j, idx) as f32 - m1;
            }
        }
    } else {
        let d = h(Q6K_D + 2 * i);
        for s in 0..8 {
            let base = Q6K_QS + Q6K_SLICE * s;
            for idx in 0..32 {
                let v = idx / 4;
                let high = (gblk[base + 128 + 32 * (v / 4) + 4 * i + idx % 4] >> (2 * (v % 4))) & 3;
                let q = (nib(base, idx) | high << 4) as i8 - 32;
                let sc = gblk[Q6K_SC + 8 * ((32 * s + idx) / 16) + i] as i8;
                y[32 * s + idx] = d * sc as f32 * q as f32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::super::groups::ROWS;
    use super::super::groups::avx2::{Args, dot_bytes, halves, nibbles, store};
    use super::*;
    use std::arch::x86_64::*;

    /// candle's `BlockQ8K` (`repr(C)`): f32 scale, 256 i8 values, 16 i16 sums of 16.
    const Q8K_QS: usize = 4;
    const Q8K_SUMS: usize = 4 + QK_K;
    const Q8K_BYTES: usize = 4 + QK_K + 32;
    const _: () =
        assert!(std::mem::size_of::<candle_core::quantized::k_quants::BlockQ8K>() == Q8K_BYTES);

    const TYPES: [WType; 2] = [WType::Q4K, WType::Q6K];

    #[inline(always)]
    pub(in crate::quant) unsafe fn gemm_t<const K: usize, const V: u8>(a: Args) {
        // SAFETY (all): forwarded from the caller.
        unsafe {
            for g in a.rows.start / ROWS..a.rows.end.div_ceil(ROWS) {
                let w = a.w.add(g * a.group_bytes);
                let mut c = 0;
                while c + 4 <= a.ncols {
                    store(&a, g, c, &dot::<4, K, V>(w, &a, c));
                    c += 4;
                }
                while c < a.ncols {
                    store(&a, g, c, &dot::<1, K, V>(w, &a, c));
                    c += 1;
                }
            }
        }
    }

    /// The eight rows at `w` against columns `c..c + N`; each output element sees the same
    /// operations whatever `N` and the level are.
    #[inline(always)]
    unsafe fn dot<const N: usize, const K: usize, const V: u8>(
        w: *const u8,
        a: &Args,
        c: usize,
    ) -> [__m256; N] {
        let t = TYPES[K];
        let gb = group_block_bytes(t);
        // SAFETY (all): the caller guarantees the features, `nb` group super-blocks at `w` and
        // `nb` Q8_K blocks per column.
        unsafe {
            let cols: [*const u8; N] = std::array::from_fn(|j| a.a.add((c + j) * a.nb * Q8K_BYTES));
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..a.nb {
                let p = w.add(b * gb);
                let xs: [*const u8; N] = std::array::from_fn(|j| cols[j].add(b * Q8K_BYTES));
                let sums = |j: usize, k: usize| {
                    xs[j].add(Q8K_SUMS + 2 * k).cast::<i16>().read_unaligned() as i32
                };
                let mut isum = [_mm256_setzero_si256(); N];
                if t == WType::Q4K {
                    for s in 0..8 {
                        let q = nibbles(p.add(Q4K_QS + 128 * s));
                        let sc =
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(Q4K_SC + 8 * s).cast()));
                        for j in 0..N {
                            let x = xs[j].add(Q8K_QS + 32 * s);
                            let d = _mm256_add_epi32(
                                dot_bytes::<V>(&q[..4], x),
                                dot_bytes::<V>(&q[4..], x.add(16)),
                            );
                            isum[j] = _mm256_add_epi32(isum[j], _mm256_mullo_epi32(d, sc));
                        }
                    }
                    let d8 = halves(p.add(Q4K_D));
                    let dmin8 = halves(p.add(Q4K_DMIN));
                    for j in 0..N {
                        // Σ_j m_j · Σa_j, two sub-blocks per `madd`.
                        let mut imin = _mm256_setzero_si256();
                        for pair in 0..4 {
                            let m = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                                p.add(Q4K_MIN + 16 * pair).cast(),
                            ));
                            let s0 = sums(j, 4 * pair) + sums(j, 4 * pair + 1);
                            let s1 = sums(j, 4 * pair + 2) + sums(j, 4 * pair + 3);
                            let both = (s0 & 0xFFFF) | (s1 << 16);
                            imin = _mm256_add_epi32(
                                imin,
                                _mm256_madd_epi16(m, _mm256_set1_epi32(both)),
                            );
                        }
                        let da = _mm256_set1_ps(xs[j].cast::<f32>().read_unaligned());
                        acc[j] = _mm256_fmadd_ps(
                            _mm256_mul_ps(d8, da),
                            _mm256_cvtepi32_ps(isum[j]),
                            acc[j],
                        );
                        acc[j] = _mm256_fnmadd_ps(
                            _mm256_mul_ps(dmin8, da),
                            _mm256_cvtepi32_ps(imin),
                            acc[j],
                        );
                    }
                } else {
                    let bit45 = _mm256_set1_epi8(0x30);
                    for s in 0..8 {
                        let base = p.add(Q6K_QS + Q6K_SLICE * s);
                        let mut q = nibbles(base);
                        for half in 0..2 {
                            let h = _mm256_loadu_si256(base.add(128 + 32 * half).cast());
                            let at45 = [
                                _mm256_slli_epi16::<4>(h),
                                _mm256_slli_epi16::<2>(h),
                                h,
                                _mm256_srli_epi16::<2>(h),
                            ];
                            for v in 0..4 {
                                let qv = &mut q[4 * half + v];
                                *qv = _mm256_or_si256(*qv, _mm256_and_si256(at45[v], bit45));
                            }
                        }
                        let sc0 =
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(Q6K_SC + 16 * s).cast()));
                        let sc1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            p.add(Q6K_SC + 16 * s + 8).cast(),
                        ));
                        for j in 0..N {
                            let x = xs[j].add(Q8K_QS + 32 * s);
                            let d0 = _mm256_sub_epi32(
                                dot_bytes::<V>(&q[..4], x),
                                _mm256_set1_epi32(32 * sums(j, 2 * s)),
                            );
                            let d1 = _mm256_sub_epi32(
                                dot_bytes::<V>(&q[4..], x.add(16)),
                                _mm256_set1_epi32(32 * sums(j, 2 * s + 1)),
                            );
                            let both = _mm256_add_epi32(
                                _mm256_mullo_epi32(d0, sc0),
                                _mm256_mullo_epi32(d1, sc1),
                            );
                            isum[j] = _mm256_add_epi32(isum[j], both);
                        }
                    }
                    let d8 = halves(p.add(Q6K_D));
                    for j in 0..N {
                        let da = _mm256_set1_ps(xs[j].cast::<f32>().read_unaligned());
                        acc[j] = _mm256_fmadd_ps(
                            _mm256_mul_ps(d8, da),
                            _mm256_cvtepi32_ps(isum[j]),
                            acc[j],
                        );
                    }
                }
            }
            acc
        }
    }
}
