//! The CLIP text model (transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`), written
//! here so that every text encoder the Stable Diffusion family uses runs on one implementation
//! of any size: CLIP ViT-L (SD 1.x, quick GELU), OpenCLIP ViT-H (SD 2.x, exact GELU) and
//! OpenCLIP ViT-bigG (SDXL's second encoder, which also needs the penultimate layer and the
//! projected pooled output). candle's own CLIP models cover these only as fixed presets, or
//! with quick GELU only, and its SD 2 preset uses the tanh GELU where transformers uses erf.
//!
//! Weight names are transformers': `text_model.embeddings.{token,position}_embedding`,
//! `text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2,
//! layer_norm2}`, `text_model.final_layer_norm`, and `text_projection` when projected.

use candle_core::{D, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};

const LAYER_NORM_EPS: f64 = 1e-5;

/// A linear layer whose weights may be held in f16 or bf16 (`model::text_weights`): applied in
/// f32, its weights widened for the one product (exactly, so the result is that of an f32 copy).
struct Dense(Linear);

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.0.weight();
        if w.dtype() == x.dtype() {
            return self.0.forward(x);
        }
        let bias = self.0.bias().map(|b| b.to_dtype(x.dtype())).transpose()?;
        Linear::new(w.to_dtype(x.dtype())?, bias).forward(x)
    }
}

fn dense(input: usize, output: usize, vb: VarBuilder) -> Result<Dense> {
    Ok(Dense(linear(input, output, vb)?))
}

/// Layer norms are small: widened to f32 once, at load.
fn norm(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    let ln = layer_norm(size, LAYER_NORM_EPS, vb)?;
    let weight = ln.weight().to_dtype(DType::F32)?;
    Ok(match ln.bias() {
        Some(b) => LayerNorm::new(weight, b.to_dtype(DType::F32)?, LAYER_NORM_EPS),
        None => LayerNorm::new_no_bias(weight, LAYER_NORM_EPS),
    })
}

/// The activation inside each layer's MLP (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · σ(1.702 x)` (OpenAI's CLIP).
    QuickGelu,
    /// The exact GELU, `x · Φ(x)` (OpenCLIP; transformers' `"gelu"`).
    Gelu,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub max_positions: usize,
    pub activation: Activation,
    /// The output size of `text_projection` (`CLIPTextModelWithProjection`), if it has one.
    pub projection: Option<usize>,
}

/// What one run gives: the last hidden state after the final layer norm (SD 1.x and 2.x
/// condition on this), the hidden state one layer earlier without that norm (SDXL's), and the
/// projected final state at each sequence's end-of-text token (SDXL's pooled embedding).
pub struct ClipOutput {
    pub last: Tensor,
    pub penultimate: Tensor,
    pub pooled: Option<Tensor>,
}

struct Layer {
    norm1: LayerNorm,
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

pub struct ClipText {
    config: ClipConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    projection: Option<Dense>,
}

impl ClipText {
    /// Loads from a `CLIPTextModel` weights file's root (the names start with `text_model.`).
    pub fn load(vb: VarBuilder, config: &ClipConfig) -> Result<ClipText> {
        let c = config;
        if c.heads == 0 || !c.hidden_size.is_multiple_of(c.heads) || c.layers == 0 {
            candle_core::bail!(
                "a CLIP text model of {} layers with {} heads over {} values cannot exist",
                c.layers,
                c.heads,
                c.hidden_size
            );
        }
        let projection = match c.projection {
            Some(p) => Some(Dense(candle_nn::linear_no_bias(
                c.hidden_size,
                p,
                vb.pp("text_projection"),
            )?)),
            None => None,
        };
        let vb = vb.pp("text_model");
        let h = c.hidden_size;
        let layers = (0..c.layers)
            .map(|i| {
                let vb = vb.pp("encoder").pp("layers").pp(i);
                let attn = vb.pp("self_attn");
                Ok(Layer {
                    norm1: norm(h, vb.pp("layer_norm1"))?,
                    q: dense(h, h, attn.pp("q_proj"))?,
                    k: dense(h, h, attn.pp("k_proj"))?,
                    v: dense(h, h, attn.pp("v_proj"))?,
                    out: dense(h, h, attn.pp("out_proj"))?,
                    norm2: norm(h, vb.pp("layer_norm2"))?,
                    fc1: dense(h, c.intermediate_size, vb.pp("mlp").pp("fc1"))?,
                    fc2: dense(c.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
                })
            })
            .collect::<Result<_>>()?;
        let emb = vb.pp("embeddings");
        Ok(ClipText {
            config: c.clone(),
            token_embedding: embedding(c.vocab_size, h, emb.pp("token_embedding"))?,
            position_embedding: embedding(c.max_positions, h, emb.pp("position_embedding"))?,
            layers,
            final_norm: norm(h, vb.pp("final_layer_norm"))?,
            projection,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The type the layers' matrices are held in (f16 or bf16 for a half-precision file on
    /// the CPU, else f32); the model computes in f32 either way.
    pub fn weight_dtype(&self) -> DType {
        self.layers
            .first()
            .map_or(DType::F32, |l| l.q.0.weight().dtype())
    }

    /// Runs token windows `ids` `[batch, tokens]` (u32) through the model.
    pub fn forward(&self, ids: &Tensor) -> Result<ClipOutput> {
        let (batch, tokens) = ids.dims2()?;
        if tokens == 0 || tokens > self.config.max_positions {
            candle_core::bail!(
                "CLIP reads 1 to {} tokens at a time, not {tokens}",
                self.config.max_positions
            );
        }
        let positions = Tensor::arange(0u32, tokens as u32, ids.device())?;
        let mut x = self
            .token_embedding
            .forward(ids)?
            .to_dtype(DType::F32)?
            .broadcast_add(
                &self
                    .position_embedding
                    .forward(&positions)?
                    .to_dtype(DType::F32)?,
            )?;
        let mask = causal_mask(tokens, ids.device())?;
        let mut penultimate = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &mask, self.config.heads, self.config.activation)?;
            if i + 2 == self.layers.len() {
                penultimate = x.clone();
            }
        }
        let last = self.final_norm.forward(&x)?;
        let pooled = match &self.projection {
            None => None,
            Some(projection) => {
                // The end-of-text token has the largest id of CLIP's vocabulary, so its first
                // position is the first maximum (as transformers finds it).
                let ends = ids.argmax(D::Minus1)?.to_vec1::<u32>()?;
                let rows = (0..batch)
                    .map(|b| last.i((b, ends[b] as usize)))
                    .collect::<Result<Vec<_>>>()?;
                Some(projection.forward(&Tensor::stack(&rows, 0)?)?)
            }
        };
        Ok(ClipOutput {
            last,
            penultimate,
            pooled,
        })
    }
}

/// 0 on and below the diagonal, −∞ above: each token sees itself and the tokens before it.
fn causal_mask(tokens: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..tokens)
        .flat_map(|i| (0..tokens).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (tokens, tokens), device)
}

impl Layer {
    fn forward(&self, x: &Tensor, mask: &Tensor, heads: usize, act: Activation) -> Result<Tensor> {
        let (batch, tokens, hidden) = x.dims3()?;
        let head_dim = hidden / heads;
        let h = self.norm1.forward(x)?;
        let split = |t: Tensor| {
            t.reshape((batch, tokens, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q.forward(&h)? * (head_dim as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(&h)?)?;
        let v = split(self.v.forward(&h)?)?;
        // Scores and softmax in f32 whatever the weights' type.
        let scores = q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?
            .broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let attended = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, tokens, hidden))?;
        let x = (x + self.out.forward(&attended)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?;
        x + self.fc2.forward(&activate(&h, act)?)?
    }
}

fn activate(h: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::QuickGelu => h * candle_nn::ops::sigmoid(&(h * 1.702)?)?,
        Activation::Gelu => h.gelu_erf(),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, IndexOp, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::clip::text_model::{
        Activation as CandleActivation, ClipTextConfig, ClipTextTransformer,
    };

    use super::super::ops::testing::{load_file, max_diff, save_with_varied_norms};
    use super::{Activation, ClipConfig, ClipText, activate};

    fn config(layers: usize, projection: Option<usize>) -> ClipConfig {
        ClipConfig {
            vocab_size: 50,
            hidden_size: 24,
            intermediate_size: 40,
            layers,
            heads: 3,
            max_positions: 77,
            activation: Activation::QuickGelu,
            projection,
        }
    }

    /// Token windows like the tokenizer's: start, words, end (id 49 here, the largest), then
    /// padding with a smaller id.
    fn ids() -> Tensor {
        let mut rows = vec![];
        for (words, pad) in [(vec![5u32, 17, 3, 22], 0u32), (vec![8, 9], 49)] {
            let mut row = vec![48u32];
            row.extend(words);
            row.push(49);
            row.resize(12, pad);
            rows.extend(row);
        }
        Tensor::from_vec(rows, (2, 12), &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_candles_clip_and_gives_the_penultimate_and_pooled_states() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clip.safetensors");
        let vm = VarMap::new();
        // Written by our loader (it creates what it asks for), projection included.
        ClipText::load(
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
            &config(3, Some(16)),
        )
        .unwrap();
        save_with_varied_norms(&vm, 3000, &file);
        let vb = || load_file(&file);
        let ours = ClipText::load(vb(), &config(3, Some(16))).unwrap();
        let out = ours.forward(&ids()).unwrap();

        let reference = ClipTextTransformer::new(
            vb().pp("text_model"),
            &ClipTextConfig {
                vocab_size: 50,
                embed_dim: 24,
                activation: CandleActivation::QuickGelu,
                intermediate_size: 40,
                max_position_embeddings: 77,
                pad_with: None,
                num_hidden_layers: 3,
                num_attention_heads: 3,
                projection_dim: 16,
            },
        )
        .unwrap();
        let want = reference.forward_with_mask(&ids(), usize::MAX).unwrap();
        let (diff, scale) = max_diff(&out.last, &want);
        assert!(
            scale > 0.1 && diff <= 1e-5 * scale,
            "last: {diff} against {scale}"
        );

        // The penultimate state is what two layers of the same weights give before the norm.
        let two = ClipText::load(vb(), &config(2, Some(16))).unwrap();
        let two_out = two.forward(&ids()).unwrap();
        let normed = candle_core::Module::forward(&ours.final_norm, &out.penultimate).unwrap();
        let (diff, scale) = max_diff(&two_out.last, &normed);
        assert!(diff <= 1e-5 * scale, "penultimate: {diff} against {scale}");

        // Pooled: the final state at the first end token (position 5, then 3), projected.
        let pooled = out.pooled.unwrap();
        let projection = vb().get((16, 24), "text_projection.weight").unwrap();
        for (b, end) in [(0usize, 5usize), (1, 3)] {
            let row = out.last.i((b, end)).unwrap().unsqueeze(0).unwrap();
            let want = row.matmul(&projection.t().unwrap()).unwrap();
            let (diff, _) = max_diff(&pooled.i(b).unwrap().unsqueeze(0).unwrap(), &want);
            assert!(diff <= 1e-5, "pooled row {b}: {diff}");
        }
    }

    #[test]
    fn gelu_models_use_the_exact_gelu_and_bad_sizes_are_refused() {
        let dev = Device::Cpu;
        // GELU(1) = Φ(1) = 0.8413447; the tanh form gives 0.8411920, quick GELU 0.8457.
        let one = Tensor::new(&[1f32], &dev).unwrap();
        let at = |act| activate(&one, act).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((at(Activation::Gelu) - 0.841_344_7).abs() < 1e-6);
        assert!((at(Activation::QuickGelu) - 1.0 / (1.0 + (-1.702f32).exp())).abs() < 1e-6);
        let vm = VarMap::new();
        let quick = config(2, None);
        let exact = ClipConfig {
            activation: Activation::Gelu,
            ..quick.clone()
        };
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let a = ClipText::load(vb.clone(), &quick).unwrap();
        let b = ClipText::load(vb, &exact).unwrap();
        // Same weights, different activations: different states, and no pooled output.
        let (x, y) = (a.forward(&ids()).unwrap(), b.forward(&ids()).unwrap());
        assert!(max_diff(&x.last, &y.last).0 > 1e-4);
        assert!(x.pooled.is_none());
        let too_long = Tensor::zeros((1, 78), DType::U32, &dev).unwrap();
        assert!(a.forward(&too_long).is_err());
        let odd = ClipConfig { heads: 5, ..quick };
        let vm = VarMap::new();
        assert!(ClipText::load(VarBuilder::from_varmap(&vm, DType::F32, &dev), &odd).is_err());
    }
}
