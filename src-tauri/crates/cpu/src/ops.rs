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
struct Out(*mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `i` places on (a method, so closures capture the `Send` wrapper).
    fn at(self, i: usize) -> *mut f32 {
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

/// Causal attention of the `t` new queries (positions `pos..pos + t`) over the cached keys
/// and values (`[position][kv head × head_dim]`), split over the pool by (query, head).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &Pool,
    heads: Heads,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
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
    pool.run_items(units, Vec::<f32>::new, |scores, u| {
        let (i, h) = (u / c.n_head, u % c.n_head);
        let kh = h / group;
        let len = pos + i + 1;
        let qh = &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in 0..len {
            let k = &keys[p * kv_dim + kh * hd..p * kv_dim + (kh + 1) * hd];
            let s = dot(qh, k) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        // SAFETY: each (query, head) slice of `out` is written by one thread only.
        let dst = unsafe { std::slice::from_raw_parts_mut(o.at(i * q_dim + h * hd), hd) };
        dst.fill(0.0);
        for (p, s) in scores.iter().enumerate() {
            let v = &values[p * kv_dim + kh * hd..p * kv_dim + (kh + 1) * hd];
            let w = s * inv;
            dst.iter_mut().zip(v).for_each(|(d, v)| *d += w * v);
        }
    })
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
