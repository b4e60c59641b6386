//! The UNet's heavy operations — convolution, group norm (+ SiLU), attention and the GEGLU
//! gate — on
//! `atelier_cpu::diffusion`'s kernels when the tensors are f32 on the CPU, and on candle's own
//! operations otherwise (GPUs, f16). Both paths compute the same function; the CPU kernels
//! avoid candle's full image-to-column copies, its 4096² score matrices and its many passes
//! for a group norm.

use atelier_cpu::diffusion;
use candle_core::{CpuStorage, DType, Layout, Module, Result, Shape, Tensor, bail};

/// Whether `x` runs on the CPU kernels.
fn native(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The contiguous f32 elements a storage and layout describe.
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: expected f32")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// A 2-D convolution with bias, square kernel, equal stride and padding on both axes.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Tensor, stride: usize, pad: usize) -> Result<Conv2d> {
        let (c_out, _, kh, kw) = weight.dims4()?;
        if kh != kw || bias.dims1()? != c_out {
            bail!(
                "conv2d: unsupported weight {:?} / bias {:?}",
                weight.shape(),
                bias.shape()
            );
        }
        Ok(Conv2d {
            weight: weight.contiguous()?,
            bias: bias.contiguous()?,
            stride,
            pad,
        })
    }

    /// `[out, in, k, k]` weights and `[out]` bias named `{prefix}.weight` / `.bias`.
    pub fn load(
        vb: &candle_nn::VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Conv2d> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Conv2d::new(weight, bias, stride, pad)
    }

    /// A decoder level's upsampler: the 3×3 convolution at `{prefix}.upsamplers.0.conv`, run
    /// with [`Conv2d::forward_upsampled`].
    pub fn load_upsampler(vb: &candle_nn::VarBuilder, channels: usize) -> Result<Conv2d> {
        Conv2d::load(
            &vb.pp("upsamplers").pp("0").pp("conv"),
            channels,
            channels,
            3,
            1,
            1,
        )
    }

    /// Whether `x` runs on the CPU kernels with these weights.
    fn native_for(&self, x: &Tensor) -> bool {
        native(x) && self.weight.dtype() == DType::F32
    }

    /// `op` over `x` (made contiguous), the weight and the bias.
    fn apply(&self, x: &Tensor, op: &impl candle_core::CustomOp3) -> Result<Tensor> {
        x.contiguous()?
            .apply_op3_no_bwd(&self.weight, &self.bias, op)
    }

    /// The CPU convolution with this one's stride and padding; `size` scales the input first.
    fn conv_op(&self, size: Option<(usize, usize)>) -> ConvOp {
        ConvOp {
            stride: self.stride,
            pad: self.pad,
            size,
        }
    }

    /// This convolution of `x` scaled to `h × w` by nearest neighbour (a decoder's
    /// upsampler); on the CPU kernels the scaled copy is never made.
    pub fn forward_upsampled(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        if self.native_for(x) {
            return self.apply(x, &self.conv_op(Some((h, w))));
        }
        self.forward(&x.upsample_nearest2d(h, w)?)
    }

    /// This 1×1 convolution from an image `[batch, c_in, h, w]` straight to tokens
    /// `[batch, h·w, c_out]` (a transformer's `proj_in`).
    pub fn image_to_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, _, h, w) = x.dims4()?;
        let c_out = self.pointwise_check()?;
        if self.native_for(x) {
            return self.apply(
                x,
                &Pointwise {
                    from: diffusion::Layout::Image,
                    to: diffusion::Layout::Tokens,
                    shape: Shape::from((batch, h * w, c_out)),
                },
            );
        }
        self.forward(x)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()
    }

    /// This 1×1 convolution from tokens `[batch, h·w, c_in]` to an image
    /// `[batch, c_out, h, w]` (a transformer's `proj_out`).
    pub fn tokens_to_image(&self, y: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (batch, pixels, c_in) = y.dims3()?;
        let c_out = self.pointwise_check()?;
        if pixels != h * w {
            bail!("conv2d: {pixels} tokens are not a {h}×{w} image");
        }
        if self.native_for(y) {
            return self.apply(
                y,
                &Pointwise {
                    from: diffusion::Layout::Tokens,
                    to: diffusion::Layout::Image,
                    shape: Shape::from((batch, c_out, h, w)),
                },
            );
        }
        self.forward(&y.transpose(1, 2)?.reshape((batch, c_in, h, w))?)
    }

    /// The output channels of a 1×1, stride-1, unpadded convolution; an error for others.
    fn pointwise_check(&self) -> Result<usize> {
        let (c_out, _, kernel, _) = self.weight.dims4()?;
        if kernel != 1 || self.stride != 1 || self.pad != 0 {
            bail!("conv2d: only a 1×1 convolution maps between images and tokens");
        }
        Ok(c_out)
    }
}

/// A 1×1 convolution between image and token layouts; see [`Conv2d::image_to_tokens`].
struct Pointwise {
    from: diffusion::Layout,
    to: diffusion::Layout,
    shape: Shape,
}

impl candle_core::CustomOp3 for Pointwise {
    fn name(&self) -> &'static str {
        "atelier-pointwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c_out, c_in, _, _) = l2.shape().dims4()?;
        let dims = l1.shape().dims();
        let batch = dims.first().copied().unwrap_or(0);
        let pixels = l1.shape().elem_count() / (batch * c_in).max(1);
        if batch * pixels * c_in != l1.shape().elem_count()
            || self.shape.elem_count() != batch * pixels * c_out
        {
            bail!(
                "conv2d: input {:?} does not fit the weight {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let mut out = vec![0f32; batch * pixels * c_out];
        diffusion::pointwise(
            (batch, pixels, c_in, c_out),
            f32s(s1, l1, "conv2d input")?,
            self.from,
            f32s(s2, l2, "conv2d weight")?,
            f32s(s3, l3, "conv2d bias")?,
            self.to,
            &mut out,
        );
        Ok((CpuStorage::F32(out), self.shape.clone()))
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.native_for(x) {
            return self.apply(x, &self.conv_op(None));
        }
        let y = x.conv2d(&self.weight, self.pad, self.stride, 1, 1)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

/// The CPU convolution: `size` scales the input first (nearest neighbour).
struct ConvOp {
    stride: usize,
    pad: usize,
    size: Option<(usize, usize)>,
}

impl candle_core::CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "atelier-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, c_in, sh, sw) = l1.shape().dims4()?;
        let (c_out, w_in, kernel, _) = l2.shape().dims4()?;
        if w_in != c_in {
            bail!("conv2d: input has {c_in} channels, the weight expects {w_in}");
        }
        let (h, w) = self.size.unwrap_or((sh, sw));
        if sh == 0 || sw == 0 || h < sh || w < sw {
            bail!("conv2d: cannot scale a {sh}×{sw} input to {h}×{w}");
        }
        let p = diffusion::Conv2d {
            batch,
            c_in,
            h,
            w,
            c_out,
            kernel,
            stride: self.stride,
            pad: self.pad,
        };
        if !p.is_valid() {
            bail!("conv2d: a {kernel}×{kernel} kernel does not fit a {h}×{w} input");
        }
        let mut out = vec![0f32; p.output_len()];
        diffusion::conv2d_upsampled(
            &p,
            (sh, sw),
            f32s(s1, l1, "conv2d input")?,
            f32s(s2, l2, "conv2d weight")?,
            f32s(s3, l3, "conv2d bias")?,
            &mut out,
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, c_out, p.out_h(), p.out_w())),
        ))
    }
}

/// Group normalisation over `[batch, channels, …]`, optionally followed by SiLU.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
}

impl GroupNorm {
    pub fn load(
        vb: &candle_nn::VarBuilder,
        channels: usize,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<GroupNorm> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            bail!("group norm: {channels} channels do not split into {groups} groups");
        }
        Ok(GroupNorm {
            gamma: vb.get(channels, "weight")?,
            beta: vb.get(channels, "bias")?,
            groups,
            eps,
            silu,
        })
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if native(x) && self.gamma.dtype() == DType::F32 {
            return x
                .contiguous()?
                .apply_op3_no_bwd(&self.gamma, &self.beta, self);
        }
        let y = candle_nn::GroupNorm::new(
            self.gamma.clone(),
            self.beta.clone(),
            self.gamma.dim(0)?,
            self.groups,
            self.eps,
        )?
        .forward(x)?;
        if self.silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        }
    }
}

impl candle_core::CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "atelier-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let channels = self.gamma.dim(0)?;
        if dims.len() < 2 || dims[1] != channels {
            bail!(
                "group norm: expected {channels} channels, got {:?}",
                l1.shape()
            );
        }
        let spatial = dims[2..].iter().product();
        let x = f32s(s1, l1, "group norm input")?;
        let mut out = vec![0f32; x.len()];
        diffusion::group_norm(
            x,
            channels,
            spatial,
            self.groups,
            self.eps as f32,
            f32s(s2, l2, "group norm weight")?,
            f32s(s3, l3, "group norm bias")?,
            self.silu,
            &mut out,
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Multi-head attention without a mask: `q` `[batch, n_q, heads·d]`, `k` and `v`
/// `[batch, n_kv, heads·d]` -> `[batch, n_q, heads·d]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, n_q, width) = q.dims3()?;
    let (kb, n_kv, kw) = k.dims3()?;
    if kb != batch
        || kw != width
        || k.dims() != v.dims()
        || n_kv == 0
        || heads == 0
        || width % heads != 0
    {
        bail!(
            "attention: q {:?}, k {:?}, v {:?}, {heads} heads do not fit",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let head_dim = width / heads;
    if native(q) && k.dtype() == DType::F32 && v.dtype() == DType::F32 {
        return q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &Attention {
                heads,
                head_dim,
                n_kv,
            },
        );
    }
    let split = |t: &Tensor, n: usize| {
        t.reshape((batch, n, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q4, k4, v4) = (split(q, n_q)?, split(k, n_kv)?, split(v, n_kv)?);
    let scores = (q4.matmul(&k4.t()?)? * (head_dim as f64).powf(-0.5))?;
    // Softmax in f32 even for f16 tensors: 4096 keys overflow f16 sums.
    let weights =
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(q.dtype())?;
    weights
        .matmul(&v4)?
        .transpose(1, 2)?
        .reshape((batch, n_q, width))
}

struct Attention {
    heads: usize,
    head_dim: usize,
    n_kv: usize,
}

impl candle_core::CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "atelier-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, n_q, _) = l1.shape().dims3()?;
        let q = f32s(s1, l1, "attention q")?;
        let mut out = vec![0f32; q.len()];
        diffusion::attention(
            q,
            f32s(s2, l2, "attention k")?,
            f32s(s3, l3, "attention v")?,
            batch,
            n_q,
            self.n_kv,
            self.heads,
            self.head_dim,
            (self.head_dim as f32).powf(-0.5),
            &mut out,
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The GEGLU gate over the last dimension of `h` (`[…, 2·inner]`): the first half times the
/// exact GELU of the second, `[…, inner]`.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    let width = h.dim(candle_core::D::Minus1)?;
    if width == 0 || width % 2 != 0 {
        bail!("geglu: the last dimension ({width}) must be even and non-zero");
    }
    let inner = width / 2;
    if native(h) {
        return h.contiguous()?.apply_op1_no_bwd(&Geglu { inner });
    }
    let last = candle_core::D::Minus1;
    h.narrow(last, 0, inner)? * h.narrow(last, inner, inner)?.gelu_erf()?
}

struct Geglu {
    inner: usize,
}

impl candle_core::CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "atelier-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = f32s(s, l, "geglu input")?;
        let mut out = vec![0f32; h.len() / 2];
        diffusion::geglu(h, self.inner, &mut out);
        let mut dims = l.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.inner;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::testing::{max_diff, values};
    use super::{Conv2d, geglu};

    fn tensor(dims: &[usize], seed: u64) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(values(n, seed, 3.0), dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn geglu_kernel_matches_candles_operations() {
        let h = tensor(&[2, 7, 2 * 45], 1);
        let inner = 45;
        let want = (h.narrow(2, 0, inner).unwrap()
            * h.narrow(2, inner, inner).unwrap().gelu_erf().unwrap())
        .unwrap();
        let (diff, scale) = max_diff(&geglu(&h).unwrap(), &want);
        assert!(
            diff <= 1e-5 * scale,
            "geglu differs by {diff} (scale {scale})"
        );
        assert!(
            geglu(&tensor(&[2, 3], 2)).is_err(),
            "an odd width has no halves"
        );
    }

    #[test]
    fn projections_between_images_and_tokens_match_a_convolution() {
        let (b, c_in, c_out, h, w) = (2, 6, 5, 3, 4);
        let conv = Conv2d::new(tensor(&[c_out, c_in, 1, 1], 3), tensor(&[c_out], 4), 1, 0).unwrap();
        let x = tensor(&[b, c_in, h, w], 5);
        let image = candle_core::Module::forward(&conv, &x).unwrap();
        let tokens = conv.image_to_tokens(&x).unwrap();
        let want = image.flatten_from(2).unwrap().transpose(1, 2).unwrap();
        let (diff, scale) = max_diff(&tokens, &want);
        assert!(diff <= 1e-5 * scale, "to tokens differs by {diff}");

        let back = Conv2d::new(tensor(&[c_in, c_out, 1, 1], 6), tensor(&[c_in], 7), 1, 0).unwrap();
        let got = back.tokens_to_image(&tokens, h, w).unwrap();
        let via_image = candle_core::Module::forward(&back, &image).unwrap();
        let (diff, scale) = max_diff(&got, &via_image);
        assert!(diff <= 1e-5 * scale, "to image differs by {diff}");
        assert!(
            back.tokens_to_image(&tokens, h + 1, w).is_err(),
            "wrong side"
        );
        let three =
            Conv2d::new(tensor(&[c_out, c_in, 3, 3], 8), tensor(&[c_out], 9), 1, 1).unwrap();
        assert!(
            three.image_to_tokens(&x).is_err(),
            "only 1×1 maps to tokens"
        );
    }

    #[test]
    fn upsampled_convolution_matches_candles_upsample_then_convolve() {
        let conv = Conv2d::new(tensor(&[4, 3, 3, 3], 10), tensor(&[4], 11), 1, 1).unwrap();
        let x = tensor(&[2, 3, 5, 4], 12);
        for (h, w) in [(10, 8), (9, 7)] {
            let want =
                candle_core::Module::forward(&conv, &x.upsample_nearest2d(h, w).unwrap()).unwrap();
            let (diff, scale) = max_diff(&conv.forward_upsampled(&x, h, w).unwrap(), &want);
            assert!(diff <= 1e-5 * scale, "{h}×{w}: differs by {diff}");
        }
        assert!(
            conv.forward_upsampled(&x, 4, 4).is_err(),
            "smaller is not upsampling"
        );
    }
}

/// What the UNet's and the VAE's tests share: deterministic inputs, a file of candle-made
/// weights with non-trivial norms, and the comparison.
#[cfg(test)]
pub(super) mod testing {
    use candle_core::{Device, Tensor};
    use candle_nn::VarMap;

    /// A weights file a test wrote, through the models' own loader, as f32 on the CPU.
    pub fn load_file(file: &std::path::Path) -> candle_nn::VarBuilder<'static> {
        super::super::model::weights(file, candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    /// Deterministic values in [−scale, scale).
    pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
            })
            .collect()
    }

    /// candle starts norms at scale 1 and shift 0, where a mix-up of norms cannot show: gives
    /// every norm scale 1 ± 0.5 and shift ± 0.5 (seeded from `seed`), then saves the weights.
    pub fn save_with_varied_norms(vm: &VarMap, seed: u64, file: &std::path::Path) {
        for (i, (name, var)) in vm.data().lock().unwrap().iter().enumerate() {
            if name.contains("norm") {
                let base = if name.ends_with("weight") { 1.0 } else { 0.0 };
                let v: Vec<f32> = values(var.elem_count(), seed + i as u64, 0.5)
                    .iter()
                    .map(|x| x + base)
                    .collect();
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        vm.save(file).unwrap();
    }

    /// The largest |got − want| and the largest |want|.
    pub fn max_diff(got: &Tensor, want: &Tensor) -> (f32, f32) {
        let max_abs = |t: &Tensor| {
            t.abs()
                .and_then(|t| t.max_all())
                .and_then(|t| t.to_scalar::<f32>())
                .unwrap()
        };
        (max_abs(&(got - want).unwrap()), max_abs(want))
    }
}
