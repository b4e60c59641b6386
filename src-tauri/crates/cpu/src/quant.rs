//! Weight matrices in their GGUF block formats, activation quantisation, and the dot products
//! between them.
//!
//! The legacy 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) have SIMD kernels here (see
//! [`groups`]): candle 0.11 has fast kernels only for Q4_0 and Q8_0, and the default models ship
//! as Q4_1 (SmolLM2) and Q5_0 (Qwen). Keeping the shipped 4/5-bit values instead of widening them
//! to Q8_0 reads 30–40 % fewer bytes per token, which is what decode speed is made of. On x86-64
//! with AVX2 those matrices are rearranged on load into groups of eight rows (the same bits, in an
//! order one instruction can use for eight rows); elsewhere they stay as GGUF rows for the
//! portable code. Q4_K and Q6_K (the k-quants of `Q4_K_M` files) are grouped the same way
//! ([`kgroups`]); the other k-quants, and all of them without AVX2, use candle's own kernels.
//! Every k-quant product takes candle's Q8_K activations.
//!
//! Activations are quantised once per matrix product to [`ActBlock`]s (32 values, an f32 scale,
//! and the scaled sum the Q4_1/Q5_1 minimum needs), so every weight row reuses them.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, GgmlType, QK_K,
};
use half::{bf16, f16};

use crate::ops::dot;

mod groups;
mod kgroups;
#[cfg(target_arch = "x86_64")]
use groups::avx2;

/// Values per legacy block.
pub const QK: usize = 32;

/// Weight storage formats the native engine computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WType {
    F32,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl WType {
    /// The format a GGUF tensor type is kept in (F16/BF16 are widened to F32 on load), or
    /// `None` when the native engine has no kernel for it.
    pub fn for_gguf(t: GgmlDType) -> Option<WType> {
        Some(match t {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => WType::F32,
            GgmlDType::Q4_0 => WType::Q4_0,
            GgmlDType::Q4_1 => WType::Q4_1,
            GgmlDType::Q5_0 => WType::Q5_0,
            GgmlDType::Q5_1 => WType::Q5_1,
            GgmlDType::Q8_0 => WType::Q8_0,
            GgmlDType::Q2K => WType::Q2K,
            GgmlDType::Q3K => WType::Q3K,
            GgmlDType::Q4K => WType::Q4K,
            GgmlDType::Q5K => WType::Q5K,
            GgmlDType::Q6K => WType::Q6K,
            GgmlDType::Q8_1 | GgmlDType::Q8K => return None,
        })
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            WType::F32 => (1, 4),
            WType::Q4_0 => (QK, 18),
            WType::Q4_1 => (QK, 20),
            WType::Q5_0 => (QK, 22),
            WType::Q5_1 => (QK, 24),
            WType::Q8_0 => (QK, 34),
            WType::Q2K => (QK_K, std::mem::size_of::<BlockQ2K>()),
            WType::Q3K => (QK_K, std::mem::size_of::<BlockQ3K>()),
            WType::Q4K => (QK_K, std::mem::size_of::<BlockQ4K>()),
            WType::Q5K => (QK_K, std::mem::size_of::<BlockQ5K>()),
            WType::Q6K => (QK_K, std::mem::size_of::<BlockQ6K>()),
        }
    }

    fn is_kquant(self) -> bool {
        matches!(
            self,
            WType::Q2K | WType::Q3K | WType::Q4K | WType::Q5K | WType::Q6K
        )
    }

    fn is_legacy(self) -> bool {
        !self.is_kquant() && self != WType::F32
    }

    /// Formats with kernels over groups of eight rows ([`groups`], [`kgroups`]).
    fn is_grouped(self) -> bool {
        self.is_legacy() || matches!(self, WType::Q4K | WType::Q6K)
    }

    /// Bytes of one block of a group of eight rows.
    fn group_block_bytes(self) -> usize {
        if self.is_kquant() {
            kgroups::group_block_bytes(self)
        } else {
            groups::layout(self).bytes
        }
    }
}

/// The GGUF tensor type a file names `name` (ggml's spelling, e.g. `Q4_K`), when the native
/// engine has a kernel for it.
pub fn gguf_type_named(name: &str) -> Option<GgmlDType> {
    let t = match name {
        "F32" => GgmlDType::F32,
        "F16" => GgmlDType::F16,
        "BF16" => GgmlDType::BF16,
        "Q4_0" => GgmlDType::Q4_0,
        "Q4_1" => GgmlDType::Q4_1,
        "Q5_0" => GgmlDType::Q5_0,
        "Q5_1" => GgmlDType::Q5_1,
        "Q8_0" => GgmlDType::Q8_0,
        "Q2_K" => GgmlDType::Q2K,
        "Q3_K" => GgmlDType::Q3K,
        "Q4_K" => GgmlDType::Q4K,
        "Q5_K" => GgmlDType::Q5K,
        "Q6_K" => GgmlDType::Q6K,
        _ => return None,
    };
    WType::for_gguf(t).map(|_| t)
}

/// Bytes of memory a `rows` × `cols` matrix of GGUF type `t` holds once loaded (F16 widened to
/// F32, grouped formats padded to whole groups of eight rows), or `None` without a kernel or
/// when a row is not whole blocks. Known before loading, for the memory check.
pub fn held_bytes(t: GgmlDType, rows: usize, cols: usize) -> Option<usize> {
    let w = WType::for_gguf(t)?;
    let (bs, bb) = w.block();
    if !cols.is_multiple_of(bs) {
        return None;
    }
    let nb = cols / bs;
    let bytes = if w.is_grouped() && simd() {
        rows.div_ceil(groups::ROWS) * nb * w.group_block_bytes()
    } else {
        rows * nb * bb
    };
    Some(bytes.next_multiple_of(8))
}

/// Bytes of a tensor of `n` values stored as GGUF type `t` (file layout).
pub fn gguf_bytes(t: GgmlDType, n: usize) -> Option<usize> {
    let (bs, bytes) = match t {
        GgmlDType::F16 | GgmlDType::BF16 => (1, 2),
        other => WType::for_gguf(other)?.block(),
    };
    n.is_multiple_of(bs).then(|| n / bs * bytes)
}

/// A matrix of `rows` × `cols` in one block format: GGUF rows one after another (rows start on
/// 8-byte boundaries, the buffer is u64-backed, so k-quant rows can be viewed as candle's block
/// structs), or for the legacy formats on AVX2 machines, [`groups`] of eight rows.
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub wtype: WType,
    /// Bytes per row, or per group of eight rows when `grouped`.
    row_bytes: usize,
    grouped: bool,
    data: Vec<u64>,
}

impl QMatrix {
    /// Builds a matrix from a GGUF tensor's bytes (`cols` is the fastest-varying dimension).
    pub fn from_gguf(
        t: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<QMatrix, String> {
        let wtype = WType::for_gguf(t).ok_or_else(|| format!("no native kernel for {t:?}"))?;
        let (bs, bb) = wtype.block();
        let Some(held) = held_bytes(t, rows, cols) else {
            return Err(format!(
                "a row of {cols} values is not a whole number of {t:?} blocks"
            ));
        };
        let expected = gguf_bytes(t, rows * cols).ok_or("bad tensor size")?;
        if bytes.len() != expected {
            return Err(format!(
                "tensor data is {} bytes, {expected} expected",
                bytes.len()
            ));
        }
        let nb = cols / bs;
        let grouped = wtype.is_grouped() && simd();
        let mut m = QMatrix {
            rows,
            cols,
            wtype,
            row_bytes: nb
                * if grouped {
                    wtype.group_block_bytes()
                } else {
                    bb
                },
            grouped,
            data: vec![0u64; held / 8],
        };
        if grouped {
            pack_groups(wtype, bytes, rows, nb, m.bytes_mut());
            return Ok(m);
        }
        let dst = m.bytes_mut();
        // Floats are kept in the host's byte order so rows can be read as `f32` slices.
        match t {
            GgmlDType::F32 => {
                for (o, c) in dst.chunks_exact_mut(4).zip(bytes.chunks_exact(4)) {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    o.copy_from_slice(&v.to_ne_bytes());
                }
            }
            GgmlDType::F16 => {
                for (o, c) in dst.chunks_exact_mut(4).zip(bytes.chunks_exact(2)) {
                    let v = f16::from_le_bytes([c[0], c[1]]).to_f32();
                    o.copy_from_slice(&v.to_ne_bytes());
                }
            }
            GgmlDType::BF16 => {
                for (o, c) in dst.chunks_exact_mut(4).zip(bytes.chunks_exact(2)) {
                    let v = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                    o.copy_from_slice(&v.to_ne_bytes());
                }
            }
            _ => dst[..bytes.len()].copy_from_slice(bytes),
        }
        Ok(m)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: u64 storage viewed as bytes; the length stays within the allocation.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), self.data.len() * 8) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast::<u8>(), self.data.len() * 8)
        }
    }

    /// Bytes of memory the matrix holds.
    pub fn held_bytes(&self) -> usize {
        self.data.len() * 8
    }

    /// Row `r` as stored in the file (row layout only).
    fn row(&self, r: usize) -> &[u8] {
        assert!(!self.grouped, "a grouped matrix has no contiguous rows");
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.grouped {
            let group = &self.bytes()[r / groups::ROWS * self.row_bytes..][..self.row_bytes];
            let gb = self.wtype.group_block_bytes();
            if self.wtype.is_kquant() {
                for (blk, o) in group.chunks_exact(gb).zip(out.chunks_exact_mut(QK_K)) {
                    kgroups::dequantize_row(self.wtype, blk, r % groups::ROWS, o);
                }
                return;
            }
            for (blk, o) in group.chunks_exact(gb).zip(out.chunks_exact_mut(QK)) {
                let (q, d, m) = groups::unpack_row(self.wtype, blk, r % groups::ROWS);
                for (o, q) in o.iter_mut().zip(q) {
                    *o = d * q as f32 + m;
                }
            }
            return;
        }
        let row = self.row(r);
        match self.wtype {
            WType::F32 => out.copy_from_slice(kblocks::<f32>(row)),
            WType::Q2K => BlockQ2K::to_float(kblocks(row), out),
            WType::Q3K => BlockQ3K::to_float(kblocks(row), out),
            WType::Q4K => BlockQ4K::to_float(kblocks(row), out),
            WType::Q5K => BlockQ5K::to_float(kblocks(row), out),
            WType::Q6K => BlockQ6K::to_float(kblocks(row), out),
            t => {
                let (_, bb) = t.block();
                for (blk, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
                    let (q, d, m) = unpack_scalar(t, blk);
                    for (o, q) in o.iter_mut().zip(q) {
                        *o = d * q as f32 + m;
                    }
                }
            }
        }
    }

    /// What [`Acts`] must hold for this matrix.
    pub fn needs(&self) -> Needs {
        Needs {
            q8: self.wtype.is_legacy(),
            q8k: self.wtype.is_kquant(),
            f32: self.wtype == WType::F32,
        }
    }

    /// `out[c × stride + r] = row r · activation column c` for rows `r0..r1` and every
    /// column of `acts`.
    ///
    /// # Safety
    /// `out` must be valid for those writes, and no other thread may write those elements.
    pub unsafe fn gemm(&self, r0: usize, r1: usize, acts: &Acts, out: *mut f32, stride: usize) {
        let ncols = acts.cols();
        let r1 = r1.min(self.rows);
        let n = self.cols;
        let put = |r: usize, c: usize, v: f32| {
            // SAFETY: the caller vouches for `out`.
            unsafe { *out.add(c * stride + r) = v };
        };
        if self.wtype != WType::F32 {
            let held = if self.wtype.is_kquant() {
                acts.q8k.len()
            } else {
                acts.q8.len()
            };
            assert_eq!(
                held,
                ncols * (n / self.wtype.block().0),
                "activations of another width"
            );
        }
        #[cfg(target_arch = "x86_64")]
        if self.grouped {
            // SAFETY: grouped only when AVX2/FMA/F16C are present; the groups over r0..r1 and
            // every activation column hold whole blocks (checked above); `out` as vouched by
            // the caller.
            unsafe { avx2::gemm(self.wtype, self.group_args(r0..r1, acts, out, stride)) };
            return;
        }
        match self.wtype {
            WType::F32 => {
                for r in r0..r1 {
                    for c in 0..ncols {
                        put(r, c, dot(kblocks::<f32>(self.row(r)), acts.f32_row(c)));
                    }
                }
            }
            WType::Q2K => kgemm::<BlockQ2K>(self, n, r0, r1, acts, &put),
            WType::Q3K => kgemm::<BlockQ3K>(self, n, r0, r1, acts, &put),
            WType::Q4K => kgemm::<BlockQ4K>(self, n, r0, r1, acts, &put),
            WType::Q5K => kgemm::<BlockQ5K>(self, n, r0, r1, acts, &put),
            WType::Q6K => kgemm::<BlockQ6K>(self, n, r0, r1, acts, &put),
            t => {
                for r in r0..r1 {
                    for c in 0..ncols {
                        put(r, c, legacy_dot_scalar(t, self.row(r), acts.q8_row(c)));
                    }
                }
            }
        }
    }
}

/// Rearranges GGUF rows of `nb` blocks into groups of eight, on every core for big matrices:
/// the pass moves every byte of the model once, and a 4 GB file would otherwise spend seconds
/// of its load on one core.
fn pack_groups(t: WType, src: &[u8], rows: usize, nb: usize, dst: &mut [u8]) {
    let row_bytes = nb * t.block().1;
    let group_bytes = nb * t.group_block_bytes();
    let pack = |src: &[u8], rows: usize, dst: &mut [u8]| {
        if t.is_kquant() {
            kgroups::pack(t, src, rows, nb, dst);
        } else {
            groups::pack(t, src, rows, nb, dst);
        }
    };
    let n_groups = rows.div_ceil(groups::ROWS);
    // Below about a megabyte per thread, starting threads costs more than it saves.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(n_groups * group_bytes / (1 << 20))
        .max(1);
    if threads == 1 {
        return pack(src, rows, dst);
    }
    // Parts are taken from a counter, so a thread that cannot be started only leaves more
    // for the others (the calling thread among them).
    let per = n_groups.div_ceil(threads);
    let parts: Vec<std::sync::Mutex<&mut [u8]>> = dst
        .chunks_mut(per * group_bytes)
        .map(std::sync::Mutex::new)
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(part) = parts.get(k) else { break };
            let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
            let r0 = (k * per * groups::ROWS).min(rows);
            let r1 = ((k + 1) * per * groups::ROWS).min(rows);
            pack(&src[r0 * row_bytes..r1 * row_bytes], r1 - r0, &mut part);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            let spawned = std::thread::Builder::new()
                .name("atelier-pack".into())
                .spawn_scoped(scope, work);
            if spawned.is_err() {
                break;
            }
        }
        work();
    });
}

/// Whether the CPU has AVX2, FMA and F16C, which every SIMD kernel here needs (and so whether
/// matrices are packed in groups for them).
pub(crate) fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
impl QMatrix {
    fn group_args(
        &self,
        rows: std::ops::Range<usize>,
        acts: &Acts,
        out: *mut f32,
        stride: usize,
    ) -> avx2::Args {
        avx2::Args {
            w: self.bytes().as_ptr(),
            group_bytes: self.row_bytes,
            rows,
            a: if self.wtype.is_kquant() {
                acts.q8k.as_ptr().cast()
            } else {
                acts.q8.as_ptr().cast()
            },
            nb: self.cols / self.wtype.block().0,
            ncols: acts.cols(),
            out,
            stride,
        }
    }
}

fn kgemm<B: GgmlType<VecDotType = BlockQ8K>>(
    m: &QMatrix,
    n: usize,
    r0: usize,
    r1: usize,
    acts: &Acts,
    put: &dyn Fn(usize, usize, f32),
) {
    for r in r0..r1 {
        let w = kblocks::<B>(m.row(r));
        for c in 0..acts.cols() {
            put(r, c, B::vec_dot(n, w, acts.q8k_row(c)));
        }
    }
}

/// A row viewed as its elements: candle's k-quant blocks, or `f32` for float matrices.
fn kblocks<B>(row: &[u8]) -> &[B] {
    let n = row.len() / std::mem::size_of::<B>();
    assert_eq!(row.as_ptr() as usize % std::mem::align_of::<B>(), 0);
    // SAFETY: the k-quant blocks are repr(C) plain data (integers and f16) and f32 rows hold
    // host-order floats (see `from_gguf`); the pointer is aligned (checked, rows of floats start
    // on multiples of 4 in a u64 buffer) and the row holds exactly `n` elements.
    unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<B>(), n) }
}

/// 32 activations quantised to i8 with one f32 scale; `sum` = Σ`qs` (for the offset of the
/// signed formats, whose values are stored unsigned) and `s` = `d` × `sum` (for the minimum of
/// Q4_1 and Q5_1).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ActBlock {
    pub d: f32,
    pub s: f32,
    pub sum: i32,
    pub qs: [i8; QK],
}

impl ActBlock {
    const ZERO: ActBlock = ActBlock {
        d: 0.0,
        s: 0.0,
        sum: 0,
        qs: [0; QK],
    };
}

/// Which activation forms a set of matrices needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub q8: bool,
    pub q8k: bool,
    pub f32: bool,
}

impl Needs {
    pub fn or(self, o: Needs) -> Needs {
        Needs {
            q8: self.q8 || o.q8,
            q8k: self.q8k || o.q8k,
            f32: self.f32 || o.f32,
        }
    }
}

/// `t` columns of `k` activations, quantised for the matrices that will read them.
#[derive(Default)]
pub struct Acts {
    k: usize,
    cols: usize,
    q8: Vec<ActBlock>,
    q8k: Vec<BlockQ8K>,
    f32: Vec<f32>,
}

impl Acts {
    /// Quantises `x` (`t` rows of `k` values) in the forms `needs` asks for, reusing buffers.
    pub fn quantize(&mut self, x: &[f32], k: usize, needs: Needs) {
        self.k = k;
        let t = x.len() / k;
        self.cols = t;
        if needs.q8 {
            self.q8.resize(t * k / QK, ActBlock::ZERO);
            for (xs, b) in x.chunks_exact(QK).zip(self.q8.iter_mut()) {
                quantize_block(xs, b);
            }
        }
        if needs.q8k {
            self.q8k.resize(t * k / QK_K, BlockQ8K::zeros());
            for (xs, b) in x.chunks_exact(k).zip(self.q8k.chunks_exact_mut(k / QK_K)) {
                BlockQ8K::from_float(xs, b);
            }
        }
        if needs.f32 {
            self.f32.clear();
            self.f32.extend_from_slice(x);
        }
    }

    /// Columns (tokens) held.
    pub fn cols(&self) -> usize {
        self.cols
    }

    fn q8_row(&self, t: usize) -> &[ActBlock] {
        let nb = self.k / QK;
        &self.q8[t * nb..(t + 1) * nb]
    }

    fn q8k_row(&self, t: usize) -> &[BlockQ8K] {
        let nb = self.k / QK_K;
        &self.q8k[t * nb..(t + 1) * nb]
    }

    fn f32_row(&self, t: usize) -> &[f32] {
        &self.f32[t * self.k..(t + 1) * self.k]
    }
}

fn quantize_block(xs: &[f32], b: &mut ActBlock) {
    let amax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, x) in b.qs.iter_mut().zip(xs) {
        let v = (x * id).round() as i32;
        *q = v as i8;
        sum += v;
    }
    b.d = d;
    b.sum = sum;
    b.s = d * sum as f32;
}

/// Where a legacy GGUF block keeps its parts after the f16 scale at byte 0.
struct GgufBlock {
    /// The f16 minimum (Q4_1, Q5_1).
    min: Option<usize>,
    /// The 32 fifth bits, little-endian (Q5_0, Q5_1).
    qh: Option<usize>,
    /// The values: 16 bytes of nibbles (values 0..16 low, 16..32 high), or Q8_0's 32 bytes.
    qs: usize,
    /// Added to a nibble (with its fifth bit) to get the value: −8 for Q4_0, −16 for Q5_0.
    offset: i32,
}

const fn gguf_block(t: WType) -> GgufBlock {
    let min = matches!(t, WType::Q4_1 | WType::Q5_1);
    let qh = matches!(t, WType::Q5_0 | WType::Q5_1);
    let qh_at = 2 + 2 * min as usize;
    GgufBlock {
        min: if min { Some(2) } else { None },
        qh: if qh { Some(qh_at) } else { None },
        qs: qh_at + 4 * qh as usize,
        offset: match t {
            WType::Q4_0 => -8,
            WType::Q5_0 => -16,
            _ => 0,
        },
    }
}

/// The fifth bits of a Q5 block (0 for the others).
fn gguf_qh(p: &GgufBlock, b: &[u8]) -> u32 {
    p.qh.map_or(0, |i| {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    })
}

/// A legacy block's 32 integer values, scale and minimum (value = d × q + m).
fn unpack_scalar(t: WType, b: &[u8]) -> ([i32; QK], f32, f32) {
    let h = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let p = gguf_block(t);
    let m = p.min.map_or(0.0, h);
    let mut q = [0i32; QK];
    if t == WType::Q8_0 {
        for (v, &x) in q.iter_mut().zip(&b[p.qs..p.qs + QK]) {
            *v = x as i8 as i32;
        }
        return (q, h(0), m);
    }
    let qs = &b[p.qs..p.qs + QK / 2];
    let qh = gguf_qh(&p, b);
    for (j, v) in q.iter_mut().enumerate() {
        let nibble = (qs[j % 16] >> (4 * (j / 16))) & 0x0F;
        *v = nibble as i32 + (((qh >> j) & 1) << 4) as i32 + p.offset;
    }
    (q, h(0), m)
}

/// Portable reference: the same arithmetic as the SIMD kernels (integer dot per block, then
/// scaled), used where AVX2 is missing and by the tests.
pub fn legacy_dot_scalar(t: WType, row: &[u8], a: &[ActBlock]) -> f32 {
    let (_, bb) = t.block();
    let mut sum = 0f32;
    for (blk, ab) in row.chunks_exact(bb).zip(a) {
        let (q, d, m) = unpack_scalar(t, blk);
        let dot: i32 = q.iter().zip(ab.qs).map(|(&q, a)| q * a as i32).sum();
        sum += d * ab.d * dot as f32 + m * ab.s;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};

    fn rng(seed: &mut u64) -> u32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 16) as u32
    }

    /// Random blocks of each legacy type: the SIMD kernel equals the scalar reference and the
    /// dequantised float dot product.
    #[test]
    fn legacy_kernels_match_reference() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for t in [
            WType::Q4_0,
            WType::Q4_1,
            WType::Q5_0,
            WType::Q5_1,
            WType::Q8_0,
        ] {
            let (_, bb) = t.block();
            let cols = 8 * QK;
            let rows = 3;
            let mut bytes = vec![0u8; rows * cols / QK * bb];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = rng(&mut seed) as u8;
                // Keep the f16 scale and minimum finite and moderate.
                let in_block = i % bb;
                let scale_bytes = if matches!(t, WType::Q4_1 | WType::Q5_1) {
                    4
                } else {
                    2
                };
                if in_block < scale_bytes {
                    let h = f16::from_f32((rng(&mut seed) % 1000) as f32 / 5000.0 - 0.1);
                    let hb = h.to_le_bytes();
                    *b = hb[in_block % 2];
                }
            }
            let gt = match t {
                WType::Q4_0 => GgmlDType::Q4_0,
                WType::Q4_1 => GgmlDType::Q4_1,
                WType::Q5_0 => GgmlDType::Q5_0,
                WType::Q5_1 => GgmlDType::Q5_1,
                _ => GgmlDType::Q8_0,
            };
            let m = QMatrix::from_gguf(gt, rows, cols, &bytes).unwrap();
            let ncols = 7;
            let x: Vec<f32> = (0..ncols * cols)
                .map(|_| (rng(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut acts = Acts::default();
            acts.quantize(&x, cols, m.needs());
            let mut all = vec![0f32; ncols * rows];
            // SAFETY: `all` holds ncols × rows elements, written by this thread only.
            unsafe { m.gemm(0, rows, &acts, all.as_mut_ptr(), rows) };
            for r in 0..rows {
                let got: Vec<f32> = (0..ncols).map(|c| all[c * rows + r]).collect();
                let mut w = vec![0f32; cols];
                m.dequantize_row(r, &mut w);
                for (c, g) in got.iter().enumerate() {
                    let file_row = &bytes[r * cols / QK * bb..(r + 1) * cols / QK * bb];
                    let reference = legacy_dot_scalar(t, file_row, acts.q8_row(c));
                    assert!(
                        (g - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                        "{t:?} row {r} col {c}: {g} vs {reference}"
                    );
                    let exact: f32 = w
                        .iter()
                        .zip(&x[c * cols..(c + 1) * cols])
                        .map(|(a, b)| a * b)
                        .sum();
                    let scale: f32 = w.iter().map(|v| v.abs()).sum::<f32>() / 100.0 + 1e-3;
                    assert!(
                        (g - exact).abs() <= scale,
                        "{t:?} row {r} col {c}: {g} vs float {exact}"
                    );
                }
            }
        }
    }

    const LEGACY: [(GgmlDType, WType); 5] = [
        (GgmlDType::Q4_0, WType::Q4_0),
        (GgmlDType::Q4_1, WType::Q4_1),
        (GgmlDType::Q5_0, WType::Q5_0),
        (GgmlDType::Q5_1, WType::Q5_1),
        (GgmlDType::Q8_0, WType::Q8_0),
    ];

    /// Random blocks of a legacy format: values over the whole byte range (Q8_0's −128
    /// included), scale and minimum bytes below 0x40 so every f16 is small and finite.
    fn legacy_bytes(wt: WType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let bb = wt.block().1;
        let scales = if matches!(wt, WType::Q4_1 | WType::Q5_1) {
            4
        } else {
            2
        };
        (0..rows * cols / QK * bb)
            .map(|i| {
                let b = rng(seed) as u8;
                if i % bb < scales { b & 0x3F } else { b }
            })
            .collect()
    }

    /// Every instruction level this CPU has gives bit-identical results (so a seed reproduces
    /// the same text on another machine of the same kind of arithmetic).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn instruction_levels_agree_exactly() {
        if !avx2::available() {
            return;
        }
        let mut seed = 7u64;
        let cols = 4 * QK;
        // A whole group of eight and a partial one.
        let rows = 13;
        for (gt, wt) in LEGACY {
            let bytes = legacy_bytes(wt, rows, cols, &mut seed);
            let m = QMatrix::from_gguf(gt, rows, cols, &bytes).unwrap();
            let x: Vec<f32> = (0..6 * cols)
                .map(|_| (rng(&mut seed) % 200) as f32 / 100.0 - 1.0)
                .collect();
            let mut acts = Acts::default();
            acts.quantize(&x, cols, m.needs());
            let best = product_checked(&m, &acts, &x);
            // A range of rows that starts and ends inside groups writes those rows only.
            let mut part = vec![f32::NAN; 6 * rows];
            // SAFETY: `part` holds 6 × rows elements.
            unsafe { m.gemm(3, 11, &acts, part.as_mut_ptr(), rows) };
            for c in 0..6 {
                for r in 0..rows {
                    let (got, want) = (part[c * rows + r], best[c * rows + r]);
                    if (3..11).contains(&r) {
                        assert_eq!(got, want, "{wt:?} row {r} col {c}");
                    } else {
                        assert!(got.is_nan(), "{wt:?} row {r} written");
                    }
                }
            }
        }
    }

    /// Packing into groups of eight keeps every value, scale and minimum: each row reads back
    /// exactly as the GGUF row it came from.
    #[test]
    fn grouped_rows_read_back_exactly() {
        let mut seed = 11u64;
        let cols = 3 * QK;
        let rows = 11;
        for (gt, wt) in LEGACY {
            let bb = wt.block().1;
            let bytes = legacy_bytes(wt, rows, cols, &mut seed);
            let m = QMatrix::from_gguf(gt, rows, cols, &bytes).unwrap();
            for r in 0..rows {
                let mut got = vec![0f32; cols];
                m.dequantize_row(r, &mut got);
                let file_row = &bytes[r * cols / QK * bb..(r + 1) * cols / QK * bb];
                let want: Vec<f32> = file_row
                    .chunks_exact(bb)
                    .flat_map(|blk| {
                        let (q, d, m) = unpack_scalar(wt, blk);
                        q.map(|q| d * q as f32 + m)
                    })
                    .collect();
                assert_eq!(got, want, "{wt:?} row {r}");
                // The scalar reader itself agrees with candle's.
                let mut candle = vec![0f32; cols];
                match wt {
                    WType::Q4_0 => BlockQ4_0::to_float(kblocks(file_row), &mut candle),
                    WType::Q4_1 => BlockQ4_1::to_float(kblocks(file_row), &mut candle),
                    WType::Q5_0 => BlockQ5_0::to_float(kblocks(file_row), &mut candle),
                    WType::Q5_1 => BlockQ5_1::to_float(kblocks(file_row), &mut candle),
                    _ => BlockQ8_0::to_float(kblocks(file_row), &mut candle),
                }
                assert_eq!(want, candle, "{wt:?} row {r} against candle");
            }
        }
    }

    /// A matrix big enough to be packed on several threads (over a megabyte per thread, with a
    /// partial last group) reads back exactly, every row.
    #[test]
    fn big_matrices_pack_in_parallel_exactly() {
        let mut seed = 17u64;
        let (rows, cols) = (4001, 1024);
        let bytes = legacy_bytes(WType::Q8_0, rows, cols, &mut seed);
        let m = QMatrix::from_gguf(GgmlDType::Q8_0, rows, cols, &bytes).unwrap();
        let bb = WType::Q8_0.block().1;
        let mut got = vec![0f32; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut got);
            let file_row = &bytes[r * cols / QK * bb..(r + 1) * cols / QK * bb];
            for (b, blk) in file_row.chunks_exact(bb).enumerate() {
                let (q, d, _) = unpack_scalar(WType::Q8_0, blk);
                for (k, q) in q.iter().enumerate() {
                    assert_eq!(got[b * QK + k], d * *q as f32, "row {r}");
                }
            }
        }
    }

    /// `m` times the activation columns `acts` (quantised from `x`), as `[column][row]`, after
    /// checking what the kernels promise: every instruction level gives the same bits, and a
    /// column computed alone equals its place in the tiled product.
    fn product_checked(m: &QMatrix, acts: &Acts, x: &[f32]) -> Vec<f32> {
        let (rows, cols, ncols) = (m.rows, m.cols, acts.cols());
        let mut out = vec![0f32; ncols * rows];
        // SAFETY: `out` holds ncols × rows elements.
        unsafe { m.gemm(0, rows, acts, out.as_mut_ptr(), rows) };
        #[cfg(target_arch = "x86_64")]
        if m.grouped {
            for level in avx2::levels() {
                let mut at = vec![0f32; ncols * rows];
                // SAFETY: `at` holds ncols × rows elements; `level` is one the CPU has.
                unsafe {
                    avx2::gemm_at(
                        level,
                        m.wtype,
                        m.group_args(0..rows, acts, at.as_mut_ptr(), rows),
                    )
                };
                assert_eq!(at, out, "{:?} {level:?}", m.wtype);
            }
        }
        for c in 0..ncols {
            let mut one = Acts::default();
            one.quantize(&x[c * cols..(c + 1) * cols], cols, m.needs());
            let mut col = vec![0f32; rows];
            // SAFETY: `col` holds rows elements.
            unsafe { m.gemm(0, rows, &one, col.as_mut_ptr(), rows) };
            assert_eq!(
                col,
                out[c * rows..(c + 1) * rows],
                "{:?} column {c} alone",
                m.wtype
            );
        }
        out
    }

    /// Random Q4_K / Q6_K rows with finite f16 scales.
    fn kquant_bytes(wt: WType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let bb = wt.block().1;
        // Where the f16 scales lie in a block: Q4_K's d and dmin first, Q6_K's d last.
        let f16_at = if wt == WType::Q4K { 0..4 } else { 208..210 };
        (0..rows * cols / QK_K * bb)
            .map(|i| {
                let b = rng(seed) as u8;
                if f16_at.contains(&(i % bb)) {
                    b & 0x1F
                } else {
                    b
                }
            })
            .collect()
    }

    /// Q4_K and Q6_K in groups: rows read back exactly as candle dequantises the file's rows,
    /// and products match candle's own kernels.
    #[test]
    fn grouped_kquants_match_candle() {
        let mut seed = 5u64;
        let cols = 2 * QK_K;
        let rows = 11;
        for (gt, wt) in [(GgmlDType::Q4K, WType::Q4K), (GgmlDType::Q6K, WType::Q6K)] {
            let bytes = kquant_bytes(wt, rows, cols, &mut seed);
            let m = QMatrix::from_gguf(gt, rows, cols, &bytes).unwrap();
            let x: Vec<f32> = (0..5 * cols)
                .map(|_| (rng(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut acts = Acts::default();
            acts.quantize(&x, cols, m.needs());
            let mut out = vec![0f32; 5 * rows];
            // SAFETY: `out` holds 5 × rows elements.
            unsafe { m.gemm(0, rows, &acts, out.as_mut_ptr(), rows) };
            let bb = wt.block().1;
            for r in 0..rows {
                let file_row = &bytes[r * cols / QK_K * bb..(r + 1) * cols / QK_K * bb];
                let mut want = vec![0f32; cols];
                let mut got = vec![0f32; cols];
                m.dequantize_row(r, &mut got);
                let reference = |c: usize| match wt {
                    WType::Q4K => BlockQ4K::vec_dot(cols, kblocks(file_row), acts.q8k_row(c)),
                    _ => BlockQ6K::vec_dot(cols, kblocks(file_row), acts.q8k_row(c)),
                };
                match wt {
                    WType::Q4K => BlockQ4K::to_float(kblocks(file_row), &mut want),
                    _ => BlockQ6K::to_float(kblocks(file_row), &mut want),
                }
                assert_eq!(got, want, "{wt:?} row {r} read back");
                for c in 0..5 {
                    let (g, r_) = (out[c * rows + r], reference(c));
                    assert!(
                        (g - r_).abs() <= 1e-4 * (1.0 + r_.abs()),
                        "{wt:?} row {r} col {c}: {g} vs candle {r_}"
                    );
                }
            }
            assert_eq!(product_checked(&m, &acts, &x), out, "{wt:?}");
        }
    }

    #[test]
    fn rejects_wrong_sizes() {
        assert!(QMatrix::from_gguf(GgmlDType::Q4_1, 2, 32, &[0u8; 39]).is_err());
        assert!(QMatrix::from_gguf(GgmlDType::Q4_1, 2, 48, &[0u8; 60]).is_err());
        assert!(QMatrix::from_gguf(GgmlDType::Q8_1, 1, 32, &[0u8; 36]).is_err());
    }
}
