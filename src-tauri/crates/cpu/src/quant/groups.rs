//! The legacy 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) rearranged in groups of eight
//! rows, and their SIMD kernels.
//!
//! A GGUF row stores its blocks one after another, so a dot product walks one row at a time and
//! spends, per 32 weights, a dozen instructions on unpacking, one integer dot product, one f16
//! scale conversion and one float accumulation. Measured on decode (one activation column) that
//! ran at 10–13 GB/s of weights from cache on one core: instruction-bound, two to three times
//! below what the memory delivers.
//!
//! Here the eight rows of a group are interleaved block by block: the eight scales (and minima)
//! side by side, then the quantised values arranged so that one 32-byte vector holds four
//! consecutive values of each of the eight rows. One `vpdpbusd` (or `maddubs` + `madd`) against
//! four activation bytes broadcast to every lane then advances eight rows at once, the scales
//! convert eight at a time, and one float multiply-add finishes a block for all eight rows.
//! The bytes are the file's bits rearranged, not widened: a group block is exactly eight GGUF
//! blocks long.
//!
//! Values are kept unsigned (Q4_0's nibble, Q5_0's five bits, Q8_0's byte + 128); the signed
//! formats' offset comes back exactly in integers, as `offset × Σ activations` per block.
//!
//! Group block layout, for eight rows and one block of 32 columns:
//! - `d`: eight f16 scales (16 bytes);
//! - `m`: eight f16 minima (16 bytes; Q4_1 and Q5_1);
//! - `hi`: the fifth bits (32 bytes; Q5_0 and Q5_1): bit `v` of byte `j` belongs to value
//!   vector `v`, byte `j`;
//! - `qs`: value vector `v` (0..8) holds, at byte `4i + k`, value `4v + k` of row `i`. 4- and
//!   5-bit formats pack vectors `2c` and `2c + 1` as the low and high nibbles of 32 bytes `c`;
//!   Q8_0 stores each vector as its own 32 bytes.

use half::f16;

use super::{QK, WType, gguf_block, gguf_qh};

/// Rows per group.
pub const ROWS: usize = 8;

/// Where the parts of a group block lie, for one format.
#[derive(Clone, Copy)]
pub struct Layout {
    pub m: Option<usize>,
    pub hi: Option<usize>,
    pub qs: usize,
    /// Added to a stored value to get the format's own (−8 for Q4_0, −16 for Q5_0, −128 for
    /// Q8_0).
    pub offset: i32,
    pub bytes: usize,
}

pub const fn layout(t: WType) -> Layout {
    // The same parts as the file's block; Q8_0's bytes are stored + 128.
    let file = gguf_block(t);
    let (m, hi) = (file.min.is_some(), file.qh.is_some());
    let offset = if matches!(t, WType::Q8_0) {
        -128
    } else {
        file.offset
    };
    let m_at = 16;
    let hi_at = if m { 32 } else { 16 };
    let qs = hi_at + if hi { 32 } else { 0 };
    let values = if matches!(t, WType::Q8_0) { 256 } else { 128 };
    Layout {
        m: if m { Some(m_at) } else { None },
        hi: if hi { Some(hi_at) } else { None },
        qs,
        offset,
        bytes: qs + values,
    }
}

/// Rearranges `rows` GGUF rows of `nb` blocks (`src`, `bb` bytes per block) into groups;
/// `dst` holds `rows.div_ceil(8) × nb` zeroed group blocks. Rows past the end keep scale 0.
pub fn pack(t: WType, src: &[u8], rows: usize, nb: usize, dst: &mut [u8]) {
    let l = layout(t);
    let bb = t.block().1;
    let file = gguf_block(t);
    for (gi, group) in dst.chunks_exact_mut(nb * l.bytes).enumerate() {
        for (b, out) in group.chunks_exact_mut(l.bytes).enumerate() {
            for i in 0..ROWS {
                let r = gi * ROWS + i;
                if r >= rows {
                    if t == WType::Q8_0 {
                        // Zero is stored as 128.
                        for v in 0..8 {
                            out[l.qs + v * 32 + 4 * i..][..4].fill(0x80);
                        }
                    }
                    continue;
                }
                let blk = &src[(r * nb + b) * bb..][..bb];
                out[2 * i..2 * i + 2].copy_from_slice(&blk[0..2]);
                if let (Some(m), Some(at)) = (l.m, file.min) {
                    out[m + 2 * i..m + 2 * i + 2].copy_from_slice(&blk[at..at + 2]);
                }
                let q = &blk[file.qs..];
                let qh = gguf_qh(&file, blk);
                for k in 0..4 {
                    let j = 4 * i + k;
                    if t == WType::Q8_0 {
                        for v in 0..8 {
                            out[l.qs + v * 32 + j] = q[4 * v + k] ^ 0x80;
                        }
                        continue;
                    }
                    // Vectors 2c and 2c + 1 hold values 8c + k and 8c + 4 + k; GGUF keeps
                    // values 0..16 in the low nibbles and 16..32 in the high ones.
                    for c in 0..4 {
                        let (a, b) = (8 * c + k, 8 * c + 4 + k);
                        let nib = |x: usize| (q[x % 16] >> (4 * (x / 16))) & 0x0F;
                        out[l.qs + 32 * c + j] = nib(a) | nib(b) << 4;
                    }
                    if let Some(hi) = l.hi {
                        let mut byte = 0u8;
                        for v in 0..8 {
                            byte |= (((qh >> (4 * v + k)) & 1) as u8) << v;
                        }
                        out[hi + j] = byte;
                    }
                }
            }
        }
    }
}

/// Block `b` of row `i` (0..8) of a packed group block: its 32 values in the format's own
/// range, scale and minimum.
pub fn unpack_row(t: WType, group_block: &[u8], i: usize) -> ([i32; QK], f32, f32) {
    let l = layout(t);
    let h = |at: usize| f16::from_le_bytes([group_block[at], group_block[at + 1]]).to_f32();
    let d = h(2 * i);
    let m = l.m.map_or(0.0, |m| h(m + 2 * i));
    let mut q = [0i32; QK];
    for (idx, q) in q.iter_mut().enumerate() {
        let (v, j) = (idx / 4, 4 * i + idx % 4);
        let u = if t == WType::Q8_0 {
            group_block[l.qs + v * 32 + j] as i32
        } else {
            let nib = (group_block[l.qs + (v / 2) * 32 + j] >> (4 * (v % 2))) & 0x0F;
            let high = l.hi.map_or(0, |hi| (group_block[hi + j] >> v) & 1);
            (nib | high << 4) as i32
        };
        *q = u + l.offset;
    }
    (q, d, m)
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::super::{ActBlock, WType};
    use super::{Layout, ROWS, layout};
    use std::arch::x86_64::*;

    /// The widest integer dot-product instructions this CPU has.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Level {
        /// AVX2 `maddubs` + `madd` (every x86-64 CPU since 2013).
        Avx2,
        /// AVX-VNNI `vpdpbusd` on 256-bit registers (Intel since Alder Lake).
        AvxVnni,
        /// AVX-512 VNNI with VL: the same instruction EVEX-encoded (Ice Lake, Zen 4), and 32
        /// vector registers.
        Avx512Vnni,
    }

    pub fn level() -> Option<Level> {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<Option<Level>> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if !avx2 {
                None
            } else if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
            {
                // Before AVX-VNNI where both exist: the same instruction, and EVEX encoding gives
                // the four-column tiles 32 registers (measured: Qwen prefill +10 %).
                Some(Level::Avx512Vnni)
            } else if is_x86_feature_detected!("avxvnni") {
                Some(Level::AvxVnni)
            } else {
                Some(Level::Avx2)
            }
        })
    }

    pub fn available() -> bool {
        level().is_some()
    }

    /// Every level this CPU has (the tests compare them).
    #[cfg(test)]
    pub fn levels() -> Vec<Level> {
        let mut l = vec![];
        if available() {
            l.push(Level::Avx2);
            if is_x86_feature_detected!("avxvnni") {
                l.push(Level::AvxVnni);
            }
            if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                l.push(Level::Avx512Vnni);
            }
        }
        l
    }

    /// One product's operands: the groups over `rows` of the packed matrix at `w`
    /// (`group_bytes` apart), `nb` blocks per row, `ncols` activation columns of `nb` blocks at
    /// `a` ([`ActBlock`]s, or candle's `BlockQ8K` for k-quants); row `r` of column `c` goes to
    /// `out[c × stride + r]` for `r` in `rows` only.
    #[derive(Clone)]
    pub struct Args {
        pub w: *const u8,
        pub group_bytes: usize,
        pub rows: std::ops::Range<usize>,
        pub a: *const u8,
        pub nb: usize,
        pub ncols: usize,
        pub out: *mut f32,
        pub stride: usize,
    }

    /// [`Args`] with the best instructions this CPU has.
    ///
    /// # Safety
    /// AVX2/FMA/F16C present ([`available`]); every pointer valid for what `Args` describes.
    pub unsafe fn gemm(t: WType, args: Args) {
        // SAFETY: forwarded.
        unsafe { gemm_at(level().unwrap_or(Level::Avx2), t, args) }
    }

    /// [`gemm`] with the instructions of `level`.
    ///
    /// # Safety
    /// As [`gemm`], and the CPU has `level`.
    pub unsafe fn gemm_at(level: Level, t: WType, args: Args) {
        // SAFETY (all): forwarded from the caller.
        unsafe {
            match level {
                Level::AvxVnni => gemm_avxvnni(t, args),
                Level::Avx512Vnni => gemm_avx512vnni(t, args),
                Level::Avx2 => gemm_avx2(t, args),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn gemm_avx2(t: WType, a: Args) {
        unsafe { gemm_types::<0>(t, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn gemm_avxvnni(t: WType, a: Args) {
        unsafe { gemm_types::<1>(t, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
    unsafe fn gemm_avx512vnni(t: WType, a: Args) {
        unsafe { gemm_types::<2>(t, a) }
    }

    const TYPES: [WType; 5] = [
        WType::Q4_0,
        WType::Q4_1,
        WType::Q5_0,
        WType::Q5_1,
        WType::Q8_0,
    ];

    #[inline(always)]
    unsafe fn gemm_types<const V: u8>(t: WType, a: Args) {
        unsafe {
            match t {
                WType::Q4K => super::super::kgroups::avx2::gemm_t::<0, V>(a),
                WType::Q6K => super::super::kgroups::avx2::gemm_t::<1, V>(a),
                WType::Q4_0 => gemm_t::<0, V>(a),
                WType::Q4_1 => gemm_t::<1, V>(a),
                WType::Q5_0 => gemm_t::<2, V>(a),
                WType::Q5_1 => gemm_t::<3, V>(a),
                _ => gemm_t::<4, V>(a),
            }
        }
    }

    #[inline(always)]
    unsafe fn gemm_t<const T: usize, const V: u8>(a: Args) {
        // SAFETY (all): forwarded from the caller.
        unsafe {
            let g0 = a.rows.start / ROWS;
            let g1 = a.rows.end.div_ceil(ROWS);
            for g in g0..g1 {
                let w = a.w.add(g * a.group_bytes);
                let mut c = 0;
                // Four columns share each unpacked group block (prefill); decode takes one.
                while c + 4 <= a.ncols {
                    let acc = dot::<4, T, V>(w, &a, c);
                    store(&a, g, c, &acc);
                    c += 4;
                }
                while c < a.ncols {
                    let acc = dot::<1, T, V>(w, &a, c);
                    store(&a, g, c, &acc);
                    c += 1;
                }
            }
        }
    }

    /// Writes group `g`'s eight rows of columns `c..c + N`, only those inside `a.rows`.
    #[inline(always)]
    pub(in crate::quant) unsafe fn store<const N: usize>(
        a: &Args,
        g: usize,
        c: usize,
        acc: &[__m256; N],
    ) {
        // SAFETY (all): the caller vouches for `out` over `a.rows` and the columns.
        unsafe {
            let r = g * ROWS;
            for (j, v) in acc.iter().enumerate() {
                let dst = a.out.add((c + j) * a.stride + r);
                if r >= a.rows.start && r + ROWS <= a.rows.end {
                    _mm256_storeu_ps(dst, *v);
                } else {
                    let mut lanes = [0f32; ROWS];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), *v);
                    for (i, x) in lanes.into_iter().enumerate() {
                        if a.rows.contains(&(r + i)) {
                            *dst.add(i) = x;
                        }
                    }
                }
            }
        }
    }

    /// The eight value vectors of a group block as unsigned bytes.
    #[inline(always)]
    unsafe fn values<const T: usize>(p: *const u8, l: Layout) -> [__m256i; 8] {
        // SAFETY (all): a whole group block at `p`.
        unsafe {
            let qs = p.add(l.qs);
            if TYPES[T] == WType::Q8_0 {
                return std::array::from_fn(|v| _mm256_loadu_si256(qs.add(32 * v).cast()));
            }
            let mut w = nibbles(qs);
            if let Some(hi) = l.hi {
                // Bit v of each byte moves to bit 4 (a 16-bit shift cannot carry across bytes
                // into bit 4 for these distances), then joins the nibble.
                let h = _mm256_loadu_si256(p.add(hi).cast());
                let bit = _mm256_set1_epi8(0x10);
                let at4 = [
                    _mm256_slli_epi16::<4>(h),
                    _mm256_slli_epi16::<3>(h),
                    _mm256_slli_epi16::<2>(h),
                    _mm256_slli_epi16::<1>(h),
                    h,
                    _mm256_srli_epi16::<1>(h),
                    _mm256_srli_epi16::<2>(h),
                    _mm256_srli_epi16::<3>(h),
                ];
                for v in 0..8 {
                    w[v] = _mm256_or_si256(w[v], _mm256_and_si256(at4[v], bit));
                }
            }
            w
        }
    }

    /// The eight value vectors of 128 bytes of packed nibbles (vectors `2c` and `2c + 1` in
    /// the low and high nibbles of bytes `32c..32c + 32`).
    #[inline(always)]
    pub(in crate::quant) unsafe fn nibbles(qs: *const u8) -> [__m256i; 8] {
        // SAFETY: 128 bytes at `qs`; AVX2 present.
        unsafe {
            let low4 = _mm256_set1_epi8(0x0F);
            let mut w = [_mm256_setzero_si256(); 8];
            for c in 0..4 {
                let raw = _mm256_loadu_si256(qs.add(32 * c).cast());
                w[2 * c] = _mm256_and_si256(raw, low4);
                w[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low4);
            }
            w
        }
    }

    /// Four bytes at `p` in every 32-bit lane.
    #[inline(always)]
    unsafe fn broadcast4(p: *const u8) -> __m256i {
        // SAFETY: four bytes at `p`.
        unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
    }

    /// `acc` plus, in each 32-bit lane, the four products of the unsigned bytes of `q` and the
    /// signed bytes of `x`: one VNNI instruction, or AVX2's `maddubs` + `madd` (exact for the
    /// values here: no byte pair overflows i16).
    #[inline(always)]
    pub(in crate::quant) unsafe fn dpbusd<const V: u8>(
        acc: __m256i,
        q: __m256i,
        x: __m256i,
    ) -> __m256i {
        // SAFETY: the level's features are present (the callers' target features).
        unsafe {
            match V {
                1 => _mm256_dpbusd_avx_epi32(acc, q, x),
                2 => _mm256_dpbusd_epi32(acc, q, x),
                _ => _mm256_add_epi32(
                    acc,
                    _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1)),
                ),
            }
        }
    }

    /// Value vectors `q` (four values of each of eight rows apiece) times the activations at
    /// `x` (four per vector, broadcast to every row), summed per row.
    #[inline(always)]
    pub(in crate::quant) unsafe fn dot_bytes<const V: u8>(q: &[__m256i], x: *const u8) -> __m256i {
        // SAFETY: four bytes per vector at `x`; the level's features present.
        unsafe {
            // Two partial sums, so consecutive instructions do not wait on each other.
            let mut s = [_mm256_setzero_si256(); 2];
            for (v, q) in q.iter().enumerate() {
                s[v % 2] = dpbusd::<V>(s[v % 2], *q, broadcast4(x.add(4 * v)));
            }
            _mm256_add_epi32(s[0], s[1])
        }
    }

    /// Eight f16 values at `p` as f32.
    #[inline(always)]
    pub(in crate::quant) unsafe fn halves(p: *const u8) -> __m256 {
        // SAFETY: 16 bytes at `p`; F16C present.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// Group block by group block, the eight rows at `w` against columns `c..c + N`. Every
    /// output element sees the same operations in the same order whatever `N` and the
    /// instruction level are: the integer dot products are exact, and the float steps are
    /// written once below.
    #[inline(always)]
    unsafe fn dot<const N: usize, const T: usize, const V: u8>(
        w: *const u8,
        a: &Args,
        c: usize,
    ) -> [__m256; N] {
        let t = TYPES[T];
        let l = layout(t);
        // Q8_0's stored byte reaches 255, too big for AVX2's `maddubs` (its pair sums are i16):
        // that level takes the signed bytes back and multiplies |w| by ±x instead.
        let signed_bytes = t == WType::Q8_0 && V == 0;
        // SAFETY (all): the caller guarantees the CPU features and `nb` group blocks at `w` and
        // `nb` activation blocks per column.
        unsafe {
            let flip = _mm256_set1_epi8(0x80u8 as i8);
            let acts = a.a.cast::<ActBlock>();
            let cols: [*const ActBlock; N] = std::array::from_fn(|j| acts.add((c + j) * a.nb));
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..a.nb {
                let p = w.add(b * l.bytes);
                let mut q = values::<T>(p, l);
                let mut signs = q;
                if signed_bytes {
                    for v in 0..8 {
                        signs[v] = _mm256_xor_si256(q[v], flip);
                        q[v] = _mm256_abs_epi8(signs[v]);
                    }
                }
                let d = halves(p);
                let m = match l.m {
                    Some(at) => halves(p.add(at)),
                    None => _mm256_setzero_ps(),
                };
                for j in 0..N {
                    let ab = &*cols[j].add(b);
                    let x4 = ab.qs.as_ptr().cast::<u8>();
                    let mut sum = if signed_bytes {
                        let mut sum = _mm256_setzero_si256();
                        for v in 0..8 {
                            let x = _mm256_sign_epi8(broadcast4(x4.add(4 * v)), signs[v]);
                            sum = dpbusd::<V>(sum, q[v], x);
                        }
                        sum
                    } else {
                        dot_bytes::<V>(&q, x4)
                    };
                    if l.offset != 0 && !signed_bytes {
                        sum = _mm256_add_epi32(sum, _mm256_set1_epi32(l.offset * ab.sum));
                    }
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(ab.d));
                    acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), acc[j]);
                    if l.m.is_some() {
                        acc[j] = _mm256_fmadd_ps(m, _mm256_set1_ps(ab.s), acc[j]);
                    }
                }
            }
            acc
        }
    }
}
