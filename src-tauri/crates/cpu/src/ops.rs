//! The vector and matrix operations of a decoder layer, on plain slices.

use crate::pool::{JobPanicked, Pool};
use crate::quant::{Acts, QMatrix};

/// 1 / RMS of `xs`.
fn rms_scale(xs: &[f32], eps: f32) -> f32 {
    1.0 / (dot(xs, xs) / xs.len() as f32 + eps).sqrt()
}

/// RMS norm of every row of `x` (rows of `w.len()`), times `w`, into `out`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let d = w.len();
    out.resize(x.len(), 0.0);
    for (xs, os) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let scale = rms_scale(xs, eps);
        for ((o, x), w) in os.iter_mut().zip(xs).zip(w) {
            *o = x * scale * w;
        }
    }
}

/// RMS norm of every `w.len()` values of `x` in place (qwen3's per-head q/k norms).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xs in x.chunks_exact_mut(d) {
        let scale = rms_scale(xs, eps);
        xs.iter_mut().zip(w).for_each(|(x, w)| *x = *x * scale * w);
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rotary position embedding tables and convention.
pub struct Rope<'a> {
    /// cos/sin per position and rotated pair.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub pairs: usize,
    pub rope_dim: usize,
    /// Rotate pairs (i, i + d/2) (qwen) rather than (2i, 2i + 1) (llama's GGUF layout).
    pub neox: bool,
}

impl Rope<'_> {
    /// Rotates every head of `x` (heads of `head_dim`) for position `p`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, p: usize) {
        let cos = &self.cos[p * self.pairs..(p + 1) * self.pairs];
        let sin = &self.sin[p * self.pairs..(p + 1) * self.pairs];
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..self.pairs {
                let (a, b) = if self.neox {
                    (i, i + self.rope_dim / 2)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// `a · b` in eight lanes, so the compiler can vectorise it (a plain sum is a serial chain:
/// float addition does not reassociate).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Attention head layout.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

/// A raw pointer that worker threads write disjoint parts through.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `i` places on (a method, so closures capture the `Send` wrapper).
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Rows handed out per grab: small enough to balance two threads, large enough that the
/// shared counter is not contended.
const ROW_CHUNK: usize = 16;

/// `out_i[t][r] = W_i[r] · acts[t]` for every matrix `W_i` (all with the same input), split
/// over the pool by row chunks.
pub fn matmul(
    pool: &Pool,
    acts: &Acts,
    t: usize,
    jobs: &mut [(&QMatrix, &mut Vec<f32>)],
) -> Result<(), JobPanicked> {
    let mut spans = Vec::with_capacity(jobs.len());
    let mut total_chunks = 0;
    for (m, out) in jobs.iter_mut() {
        assert!(
            out.len() >= t * m.rows && acts.cols() == t,
            "matmul buffers of the wrong size"
        );
        let chunks = m.rows.div_ceil(ROW_CHUNK);
        spans.push((total_chunks, *m as &QMatrix, Out(out.as_mut_ptr())));
        total_chunks += chunks;
    }
    pool.run_items(
        total_chunks,
        || (),
        |_, chunk| {
            let Some(&(first, m, out)) = spans.iter().rev().find(|s| s.0 <= chunk) else {
                return;
            };
            let r0 = (chunk - first) * ROW_CHUNK;
            // SAFETY: each chunk of rows is taken by exactly one thread, and its elements lie
            // inside the output's `t × rows`.
            unsafe { m.gemm(r0, r0 + ROW_CHUNK, acts, out.0, m.rows) };
        },
    )
}

/// The KV cache's element type: f16, as llama.cpp keeps it. Half the memory of f32 (Qwen2.5's
/// full 32k context: 0.4 GB instead of 0.8) and half the bytes attention reads per step.
pub type Kv = half::f16;

/// Appends `src` to a KV cache as f16.
pub fn push_kv(cache: &mut Vec<Kv>, src: &[f32]) {
    use half::slice::HalfFloatSliceExt;
    let at = cache.len();
    cache.resize(at + src.len(), Kv::ZERO);
    cache[at..].convert_from_f32_slice(src);
}

/// Causal attention of `t` new queries (positions `pos..pos + t`) over the cached keys and
/// values (`[position][kv head × head_dim]`, f16), into `out` (`t × n_head × head_dim`). Work
/// is split by (query, head), each unit computed by one thread start to finish.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &Pool,
    heads: Heads,
    q: &[f32],
    keys: &[Kv],
    values: &[Kv],
    pos: usize,
    t: usize,
    out: &mut [f32],
) -> Result<(), JobPanicked> {
    let c = heads;
    let hd = c.head_dim;
    let q_dim = c.n_head * hd;
    let kv_dim = c.n_kv_head * hd;
    let group = c.n_head / c.n_kv_head;
    assert!(keys.len() >= (pos + t) * kv_dim && values.len() >= (pos + t) * kv_dim);
    assert!(q.len() >= t * q_dim && out.len() >= t * q_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let units = t * c.n_head;
    let o = Out(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let simd = hd.is_multiple_of(8) && crate::quant::simd();
    pool.run_items(units, Vec::<f32>::new, |scores, u| {
        let (i, h) = (u / c.n_head, u % c.n_head);
        let unit = Unit {
            q: &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd],
            keys,
            values,
            stride: kv_dim,
            offset: (h / group) * hd,
            len: pos + i + 1,
            scale,
        };
        // SAFETY: each (query, head) slice of `out` is written by one thread only.
        let dst = unsafe { std::slice::from_raw_parts_mut(o.at(i * q_dim + h * hd), hd) };
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2/FMA/F16C checked above; head_dim is a multiple of 8.
            unsafe { attention_avx2::unit(&unit, scores, dst) };
            return;
        }
        unit.run(scores, dst);
    })
}

/// One query and head of [`attention`].
struct Unit<'a> {
    q: &'a [f32],
    keys: &'a [Kv],
    values: &'a [Kv],
    /// Elements per cached position, and where this head's slice starts in it.
    stride: usize,
    offset: usize,
    /// Positions attended.
    len: usize,
    scale: f32,
}

impl Unit<'_> {
    fn key(&self, p: usize) -> &[Kv] {
        &self.keys[p * self.stride + self.offset..][..self.q.len()]
    }

    fn value(&self, p: usize) -> &[Kv] {
        &self.values[p * self.stride + self.offset..][..self.q.len()]
    }

    /// The portable version.
    fn run(&self, scores: &mut Vec<f32>, dst: &mut [f32]) {
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in 0..self.len {
            let s: f32 = self
                .q
                .iter()
                .zip(self.key(p))
                .map(|(q, k)| q * k.to_f32())
                .sum();
            let s = s * self.scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        dst.fill(0.0);
        for (p, s) in scores.iter().enumerate() {
            let w = s * inv;
            dst.iter_mut()
                .zip(self.value(p))
                .for_each(|(d, v)| *d += w * v.to_f32());
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod attention_avx2 {
    use super::Unit;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX present (callers' target features).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }

    /// Eight f16 at `p` as f32.
    #[inline(always)]
    unsafe fn load8(p: *const super::Kv) -> __m256 {
        // SAFETY: eight elements at `p`; F16C present.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// e^x for x ≤ 0 (softmax after subtracting the maximum): 2^n × a degree-6 polynomial on
    /// |r| ≤ ln 2 / 2, relative error about 3e-7; inputs below −87 give e^−87 rather than 0.
    #[inline(always)]
    pub(crate) unsafe fn exp_neg(x: __m256) -> __m256 {
        // SAFETY: AVX2/FMA present (callers' target features).
        unsafe {
            let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
            let mut p = _mm256_set1_ps(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
        }
    }

    /// [`Unit::run`] with AVX2: four keys at a time, the exponentials eight at a time, and the
    /// weighted values summed 64 lanes at a time in registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn unit(u: &Unit, scores: &mut Vec<f32>, dst: &mut [f32]) {
        let hd = u.q.len();
        let len = u.len;
        scores.clear();
        scores.resize(len.next_multiple_of(8), 0.0);
        // SAFETY (all): every key and value row holds `hd` elements (Unit::key/value bounds
        // are checked by `attention`'s asserts), `hd` is a multiple of 8, and `scores` holds
        // `len` rounded up to 8.
        unsafe {
            let q = u.q.as_ptr();
            let key = |p: usize| u.keys.as_ptr().add(p * u.stride + u.offset);
            let mut p = 0;
            while p + 4 <= len {
                let mut acc = [_mm256_setzero_ps(); 4];
                for c in (0..hd).step_by(8) {
                    let qv = _mm256_loadu_ps(q.add(c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qv, load8(key(p + j).add(c)), *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    scores[p + j] = hsum(*a) * u.scale;
                }
                p += 4;
            }
            while p < len {
                let mut acc = _mm256_setzero_ps();
                for c in (0..hd).step_by(8) {
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), load8(key(p).add(c)), acc);
                }
                scores[p] = hsum(acc) * u.scale;
                p += 1;
            }
            let max = scores[..len]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sums = _mm256_setzero_ps();
            let sp = scores.as_mut_ptr();
            for b in (0..len).step_by(8) {
                let e = exp_neg(_mm256_sub_ps(
                    _mm256_loadu_ps(sp.add(b)),
                    _mm256_set1_ps(max),
                ));
                // Lanes past `len` are not positions: they stay out of the sum.
                let e = if b + 8 > len {
                    let keep = _mm256_cmpgt_epi32(
                        _mm256_set1_epi32((len - b) as i32),
                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                    );
                    _mm256_and_ps(e, _mm256_castsi256_ps(keep))
                } else {
                    e
                };
                _mm256_storeu_ps(sp.add(b), e);
                sums = _mm256_add_ps(sums, e);
            }
            let inv = 1.0 / hsum(sums);
            let value = |p: usize| u.values.as_ptr().add(p * u.stride + u.offset);
            for c0 in (0..hd).step_by(64) {
                let lanes = (hd - c0).min(64) / 8;
                let mut acc = [_mm256_setzero_ps(); 8];
                for (p, s) in scores[..len].iter().enumerate() {
                    let w = _mm256_set1_ps(s * inv);
                    let v = value(p).add(c0);
                    for (j, a) in acc.iter_mut().enumerate().take(lanes) {
                        *a = _mm256_fmadd_ps(w, load8(v.add(8 * j)), *a);
                    }
                }
                for (j, a) in acc.iter().enumerate().take(lanes) {
                    _mm256_storeu_ps(dst.as_mut_ptr().add(c0 + 8 * j), *a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..67).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64) * (*y as f64))
            .sum();
        assert!(
            (dot(&a, &b) as f64 - plain).abs() < 1e-4,
            "{} vs {plain}",
            dot(&a, &b)
        );
        assert_eq!(dot(&[], &[]), 0.0);
    }

    /// Attention (the SIMD path where the CPU has it) against an f64 reference over the same
    /// f16 cache: head sizes of one and two 64-lane chunks, grouped heads, prefill and decode,
    /// lengths that are not multiples of 4 or 8, and scores far apart (a near one-hot softmax).
    #[test]
    fn attention_matches_a_reference() {
        let pool = Pool::new(2).unwrap();
        let mut seed = 3u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        for (hd, n_head, n_kv_head, pos, t, spread) in [
            (64, 6, 2, 0, 13, 1.0),
            (128, 4, 4, 9, 1, 1.0),
            (24, 2, 1, 5, 3, 1.0),
            (64, 2, 1, 30, 2, 40.0),
            // Not a multiple of 8: the portable path.
            (20, 2, 1, 4, 2, 1.0),
        ] {
            let heads = Heads {
                n_head,
                n_kv_head,
                head_dim: hd,
            };
            let (q_dim, kv_dim) = (n_head * hd, n_kv_head * hd);
            let n = pos + t;
            let q: Vec<f32> = (0..t * q_dim).map(|_| rnd() * spread).collect();
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            push_kv(
                &mut keys,
                &(0..n * kv_dim).map(|_| rnd()).collect::<Vec<_>>(),
            );
            push_kv(
                &mut values,
                &(0..n * kv_dim).map(|_| rnd()).collect::<Vec<_>>(),
            );
            let mut out = vec![0f32; t * q_dim];
            attention(&pool, heads, &q, &keys, &values, pos, t, &mut out).unwrap();
            for i in 0..t {
                for h in 0..n_head {
                    let kh = h / (n_head / n_kv_head);
                    let qh = &q[i * q_dim + h * hd..][..hd];
                    let at = |c: &Vec<Kv>, p: usize, d: usize| c[p * kv_dim + kh * hd + d].to_f64();
                    let scores: Vec<f64> = (0..pos + i + 1)
                        .map(|p| {
                            (0..hd).map(|d| qh[d] as f64 * at(&keys, p, d)).sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        let want: f64 = e
                            .iter()
                            .enumerate()
                            .map(|(p, w)| w / sum * at(&values, p, d))
                            .sum();
                        let got = out[i * q_dim + h * hd + d] as f64;
                        assert!(
                            (got - want).abs() < 2e-5,
                            "hd {hd} query {i} head {h} lane {d}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        let cos = vec![1.0, 1.0, 0.0, 1.0];
        let sin = vec![0.0, 0.0, 1.0, 0.0];
        let r = Rope {
            cos: &cos,
            sin: &sin,
            pairs: 2,
            rope_dim: 4,
            neox: false,
        };
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        r.apply(&mut x, 4, 0);
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
        r.apply(&mut x, 4, 1);
        // Pair (1, 2) turned by 90°: (−2, 1); pair (3, 4) unchanged.
        assert_eq!(x, vec![-2.0, 1.0, 3.0, 4.0]);
        let r = Rope { neox: true, ..r };
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        r.apply(&mut x, 4, 1);
        // neox pairs (x0, x2) and (x1, x3): the first turned by 90°.
        assert_eq!(x, vec![-3.0, 2.0, 1.0, 4.0]);
    }
}
