//! The UNet's heavy operations — convolution, group norm (+ SiLU) and attention — on
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
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if native(x) && self.weight.dtype() == DType::F32 {
            return x
                .contiguous()?
                .apply_op3_no_bwd(&self.weight, &self.bias, self);
        }
        let y = x.conv2d(&self.weight, self.pad, self.stride, 1, 1)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

impl candle_core::CustomOp3 for Conv2d {
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
        let (batch, c_in, h, w) = l1.shape().dims4()?;
        let (c_out, w_in, kernel, _) = l2.shape().dims4()?;
        if w_in != c_in {
            bail!("conv2d: input has {c_in} channels, the weight expects {w_in}");
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
        diffusion::conv2d(
            &p,
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

/// What the UNet's and the VAE's tests share: deterministic inputs, a file of candle-made
/// weights with non-trivial norms, and the comparison.
#[cfg(test)]
pub(super) mod testing {
    use candle_core::{Device, Tensor};
    use candle_nn::VarMap;

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
