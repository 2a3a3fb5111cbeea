//! The multimodal encoder-decoder transformer and the policy API the rl stage drives.
//!
//! Architecture (see the crate README for the exact dimensions of each preset):
//!
//! * tokens: one fusion token; question words (embedding + learned position); image patches
//!   (ViT: non-overlapping `p x p` patches flattened and projected, + learned position); audio patches
//!   (`audio_patch` consecutive mel frames flattened and projected, + learned position); one token per
//!   numeric tabular feature (`x * w_f + b_f`, FT-Transformer) and per categorical feature (its own
//!   embedding table); every segment adds its modality-type embedding;
//! * absent modalities, question padding and dropped modalities are masked out of attention as keys
//!   (additive `-1e9` bias, so their softmax weight is exactly zero);
//! * a pre-norm encoder (LayerNorm -> self-attention -> residual; LayerNorm -> Linear(d, ff) -> GELU ->
//!   Linear(ff, d) -> residual), final LayerNorm;
//! * a pre-norm decoder over answer tokens (causal self-attention, cross-attention to the encoder
//!   tokens with the same key mask, feed-forward), final LayerNorm, linear head to the answer vocabulary.
//!
//! Parameters are initialized from the caller's seed (not the backend's global RNG) and dropout masks
//! come from a caller-owned [`ChaCha8Rng`], so training is reproducible and resumable bit for bit.

use burn::config::Config;
use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData, activation, module as ops};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, config_err};
use crate::vocab::{BOS, EOS, PAD};

/// Additive attention bias of a masked key: large enough that `exp` underflows to exactly zero.
const MASKED: f32 = -1e9;

/// Hyperparameters and data-derived sizes of the model.
#[derive(Config, Debug, PartialEq)]
pub struct ModelConfig {
    /// Width of every token.
    #[config(default = 64)]
    pub d_model: usize,
    /// Encoder layers.
    #[config(default = 2)]
    pub encoder_layers: usize,
    /// Decoder layers.
    #[config(default = 1)]
    pub decoder_layers: usize,
    /// Attention heads (must divide `d_model`).
    #[config(default = 4)]
    pub heads: usize,
    /// Feed-forward width as a multiple of `d_model`.
    #[config(default = 4)]
    pub ff_mult: usize,
    /// Image patch side in pixels (must divide the image height and width).
    #[config(default = 8)]
    pub image_patch: usize,
    /// Mel frames per audio token.
    #[config(default = 4)]
    pub audio_patch: usize,
    /// Dropout on embeddings and residual branches while training.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Question words kept (longer questions are truncated).
    #[config(default = 16)]
    pub max_question_len: usize,
    /// Answer tokens generated at most (before `<eos>`).
    #[config(default = 4)]
    pub max_answer_len: usize,
    /// Question vocabulary size (from `vocab.json`).
    #[config(default = 2)]
    pub question_vocab: usize,
    /// Answer vocabulary size (from `vocab.json`).
    #[config(default = 4)]
    pub answer_vocab: usize,
    /// Image tensor shape `[channels, height, width]`; `None` without an image input.
    pub image_shape: Option<[usize; 3]>,
    /// Audio tensor shape `[mels, frames]`; `None` without an audio input.
    pub audio_shape: Option<[usize; 2]>,
    /// Numeric tabular features (normalized values and missing indicators).
    #[config(default = 0)]
    pub numeric_features: usize,
    /// Number of codes of each categorical tabular feature.
    #[config(default = "Vec::new()")]
    pub categorical_cardinalities: Vec<usize>,
    /// Per-layer widths of a structurally pruned model: `encoder_layers` entries, then `decoder_layers`
    /// entries. `None` (and absent from older `config.json` files): every layer has `heads` heads of width
    /// `d_model / heads` and `ff_mult * d_model` feed-forward neurons.
    pub layer_shapes: Option<Vec<LayerShape>>,
}

/// The widths of one layer after structured pruning (heads keep their width `d_model / heads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerShape {
    /// Self-attention heads.
    pub heads: usize,
    /// Cross-attention heads (decoder layers; 0 in encoder layers).
    #[serde(default)]
    pub cross_heads: usize,
    /// Feed-forward neurons.
    pub ff: usize,
}

/// A named size preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// d 64, 2 encoder + 1 decoder layers, 4 heads: trains in minutes on 2 CPU cores.
    Tiny,
    /// d 128, 3 + 2 layers, 4 heads.
    Small,
    /// d 256, 6 + 2 layers, 8 heads.
    Base,
}

impl Preset {
    /// `(d_model, encoder_layers, decoder_layers, heads)`.
    pub fn sizes(self) -> (usize, usize, usize, usize) {
        match self {
            Preset::Tiny => (64, 2, 1, 4),
            Preset::Small => (128, 3, 2, 4),
            Preset::Base => (256, 6, 2, 8),
        }
    }
}

impl ModelConfig {
    /// The config of a preset (data-derived sizes left at their defaults).
    pub fn preset(preset: Preset) -> Self {
        let (d, enc, dec, heads) = preset.sizes();
        Self::new()
            .with_d_model(d)
            .with_encoder_layers(enc)
            .with_decoder_layers(dec)
            .with_heads(heads)
    }

    /// The widths of layer `index` (encoder layers first, then decoder layers): `layer_shapes[index]`,
    /// or the unpruned widths.
    pub fn layer_shape(&self, index: usize) -> LayerShape {
        let decoder = index >= self.encoder_layers;
        self.layer_shapes
            .as_ref()
            .and_then(|s| s.get(index).copied())
            .unwrap_or(LayerShape {
                heads: self.heads,
                cross_heads: if decoder { self.heads } else { 0 },
                ff: self.ff_mult * self.d_model,
            })
    }

    /// Width of one attention head, `d_model / heads`.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads.max(1)
    }

    /// Checks every size; errors name the field and the accepted range.
    pub fn check(&self) -> Result<()> {
        let positive = [
            ("d_model", self.d_model),
            ("encoder_layers", self.encoder_layers),
            ("decoder_layers", self.decoder_layers),
            ("heads", self.heads),
            ("ff_mult", self.ff_mult),
            ("image_patch", self.image_patch),
            ("audio_patch", self.audio_patch),
            ("max_question_len", self.max_question_len),
            ("max_answer_len", self.max_answer_len),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(config_err(field, "must be at least 1"));
            }
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(config_err(
                "heads",
                format!("must divide d_model {}, got {}", self.d_model, self.heads),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(config_err(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if let Some([_, h, w]) = self.image_shape
            && (h % self.image_patch != 0 || w % self.image_patch != 0)
        {
            return Err(config_err(
                "image_patch",
                format!(
                    "must divide the image size {h}x{w}, got {}; pick a divisor",
                    self.image_patch
                ),
            ));
        }
        if let Some([_, frames]) = self.audio_shape
            && frames < self.audio_patch
        {
            return Err(config_err(
                "audio_patch",
                format!(
                    "must be at most the {frames} mel frames of the audio input, got {}",
                    self.audio_patch
                ),
            ));
        }
        if let Some(shapes) = &self.layer_shapes {
            let layers = self.encoder_layers + self.decoder_layers;
            if shapes.len() != layers {
                return Err(config_err(
                    "layer_shapes",
                    format!(
                        "needs one entry per layer ({} encoder + {} decoder = {layers}), got {}",
                        self.encoder_layers,
                        self.decoder_layers,
                        shapes.len()
                    ),
                ));
            }
            for (i, s) in shapes.iter().enumerate() {
                let decoder = i >= self.encoder_layers;
                let bad_cross = if decoder {
                    s.cross_heads == 0 || s.cross_heads > self.heads
                } else {
                    s.cross_heads != 0
                };
                if s.heads == 0 || s.heads > self.heads || bad_cross || s.ff == 0 {
                    return Err(config_err(
                        "layer_shapes",
                        format!(
                            "layer {i}: heads and cross_heads (decoder layers only, 0 in encoder layers) must be in 1..={}, ff at least 1, got {s:?}",
                            self.heads
                        ),
                    ));
                }
            }
        }
        if self.categorical_cardinalities.contains(&0) {
            return Err(config_err(
                "categorical_cardinalities",
                "every categorical feature needs at least 1 code",
            ));
        }
        Ok(())
    }

    /// Initializes the model on `device`, parameters drawn from `seed`.
    pub fn init(&self, device: &Device, seed: u64) -> Result<MultimodalModel> {
        self.check()?;
        let d = self.d_model;
        let mut init = Init {
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_id: 0,
            device: device.clone(),
        };
        let image = self.image_shape.map(|[c, h, w]| {
            let n = (h / self.image_patch) * (w / self.image_patch);
            PatchEmbed {
                proj: init.dense(c * self.image_patch * self.image_patch, d),
                pos: init.embedding([n, d]),
            }
        });
        let audio = self.audio_shape.map(|[mels, frames]| {
            let n = frames / self.audio_patch;
            PatchEmbed {
                proj: init.dense(mels * self.audio_patch, d),
                pos: init.embedding([n, d]),
            }
        });
        let numeric = (self.numeric_features > 0).then(|| NumericEmbed {
            weight: init.embedding([self.numeric_features, d]),
            bias: init.embedding([self.numeric_features, d]),
        });
        let categorical = (!self.categorical_cardinalities.is_empty()).then(|| {
            // One extra code per feature for values never seen in training.
            let rows: usize = self.categorical_cardinalities.iter().map(|c| c + 1).sum();
            init.embedding([rows, d])
        });
        let hd = self.head_dim();
        let encoder = (0..self.encoder_layers)
            .map(|i| {
                let s = self.layer_shape(i);
                EncoderLayer::new(&mut init, d, s.heads * hd, s.ff)
            })
            .collect();
        let decoder = (0..self.decoder_layers)
            .map(|i| {
                let s = self.layer_shape(self.encoder_layers + i);
                DecoderLayer::new(&mut init, d, s.heads * hd, s.cross_heads * hd, s.ff)
            })
            .collect();
        Ok(MultimodalModel {
            fusion: init.embedding([1, d]),
            type_embed: init.embedding([Segment::COUNT, d]),
            question_embed: init.embedding([self.question_vocab, d]),
            question_pos: init.embedding([self.max_question_len, d]),
            image,
            audio,
            numeric,
            categorical,
            encoder,
            encoder_norm: init.norm(d),
            answer_embed: init.embedding([self.answer_vocab, d]),
            answer_pos: init.embedding([self.max_answer_len + 1, d]),
            decoder,
            decoder_norm: init.norm(d),
            head: init.dense(d, self.answer_vocab),
            config: self.clone(),
        })
    }
}

/// Draws parameters from the caller's seed and numbers them deterministically, so two runs with one seed
/// produce byte-identical checkpoints.
struct Init {
    rng: ChaCha8Rng,
    next_id: u64,
    device: Device,
}

impl Init {
    fn param<const D: usize>(&mut self, data: TensorData) -> Param<Tensor<D>> {
        let (_, value, mapper) =
            Param::from_tensor(Tensor::<D>::from_data(data, &self.device)).consume();
        self.next_id += 1;
        Param::from_mapped_value(ParamId::from(self.next_id), value, mapper)
    }

    fn uniform<const D: usize>(&mut self, shape: [usize; D], bound: f32) -> Param<Tensor<D>> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..=bound))
            .collect();
        self.param(TensorData::new(values, shape))
    }

    fn constant<const D: usize>(&mut self, shape: [usize; D], value: f32) -> Param<Tensor<D>> {
        let n: usize = shape.iter().product();
        self.param(TensorData::new(vec![value; n], shape))
    }

    /// Xavier-uniform weight, zero bias.
    fn dense(&mut self, d_in: usize, d_out: usize) -> Dense {
        let bound = (6.0 / (d_in + d_out) as f32).sqrt();
        Dense {
            weight: self.uniform([d_in, d_out], bound),
            bias: self.constant([d_out], 0.0),
        }
    }

    /// Embedding-style table with standard deviation 0.02 (uniform with that variance).
    fn embedding(&mut self, shape: [usize; 2]) -> Param<Tensor<2>> {
        self.uniform(shape, 0.02 * 3f32.sqrt())
    }

    fn norm(&mut self, d: usize) -> Norm {
        Norm {
            gamma: self.constant([d], 1.0),
            beta: self.constant([d], 0.0),
        }
    }
}

/// Dropout driven by a caller-owned RNG; the identity when there is none (evaluation) or `p` is zero.
pub struct Dropout<'a> {
    rng: Option<&'a mut ChaCha8Rng>,
    p: f64,
}

impl<'a> Dropout<'a> {
    /// Training dropout with probability `p`, masks drawn from `rng`.
    pub fn train(rng: &'a mut ChaCha8Rng, p: f64) -> Self {
        Self { rng: Some(rng), p }
    }

    /// No dropout (evaluation, scoring under a frozen reference).
    pub fn off() -> Self {
        Self { rng: None, p: 0.0 }
    }

    fn apply<const D: usize>(&mut self, x: Tensor<D>) -> Tensor<D> {
        let Some(rng) = self.rng.as_deref_mut() else {
            return x;
        };
        if self.p <= 0.0 {
            return x;
        }
        let dims = x.dims();
        let n: usize = dims.iter().product();
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let device = x.device();
        if device != Device::flex() {
            // On a GPU the mask is drawn where the tensor lives, seeded from `rng`: drawing it here and
            // uploading it cost more than the layer itself (a host pass and a copy per dropout site).
            device.seed(rng.random());
            let mask = x
                .random_like(Distribution::Bernoulli(keep))
                .mul_scalar(scale);
            return x * mask;
        }
        // One u32 per element, kept when below `keep * 2^32`: a quarter of the ChaCha output that
        // `random_bool` (one u64 per element) draws, and a branch-free map.
        let threshold = (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        let mut bits = vec![0u32; n];
        rng.fill(&mut bits[..]);
        let mask: Vec<f32> = bits
            .into_iter()
            .map(|r| if r < threshold { scale } else { 0.0 })
            .collect();
        let mask = Tensor::<D>::from_data(TensorData::new(mask, dims), &x.device());
        x * mask
    }
}

/// `x @ W + b` with `W` stored `[d_in, d_out]`.
#[derive(Module, Debug)]
pub struct Dense {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

impl Dense {
    /// Folds every leading axis into the rows, so the product is one `[rows, d_in] @ [d_in, d_out]`
    /// matmul (burn's `linear` keeps a batched matmul of `batch` small products when the rows per
    /// sample are a multiple of 8, which on the CPU costs ~2x in per-call packing and dispatch).
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        if D <= 2 {
            return ops::linear(x, self.weight.val(), Some(self.bias.val()));
        }
        let d_in = dims[D - 1];
        let rows = dims.iter().take(D - 1).product::<usize>();
        let [_, d_out] = self.weight.val().dims();
        let y = ops::linear(
            x.reshape([rows, d_in]),
            self.weight.val(),
            Some(self.bias.val()),
        );
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

/// LayerNorm over the last axis (epsilon 1e-5).
#[derive(Module, Debug)]
pub struct Norm {
    gamma: Param<Tensor<1>>,
    beta: Param<Tensor<1>>,
}

impl Norm {
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        ops::layer_norm(x, self.gamma.val(), Some(self.beta.val()), 1e-5)
    }
}

/// Multi-head attention; self-attention projects q, k, v with one fused matmul.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[d, 3d]` for self-attention, `[d, d]` (queries only) for cross-attention.
    query: Dense,
    /// `[d, 2d]` keys and values of the memory, for cross-attention only.
    key_value: Option<Dense>,
    out: Dense,
}

/// `[b, n, parts * heads * head_dim]` -> `[b, parts * heads, n, head_dim]` as a strided view (no copy):
/// the batched matmul reads any strides, so q, k and v are narrowed out of it without a transpose copy.
fn head_view(x: Tensor<3>, head_dim: usize) -> Tensor<4> {
    let [b, n, width] = x.dims();
    x.reshape([b, n, width / head_dim, head_dim])
        .swap_dims(1, 2)
}

impl Attention {
    /// `inner` is heads x head width: `d` for an unpruned layer, less after structured pruning (the
    /// projections are `[d, 3 inner]` or `[d, inner]` + `[d, 2 inner]`, and `out` is `[inner, d]`).
    fn new(init: &mut Init, d: usize, inner: usize, cross: bool) -> Self {
        if cross {
            Self {
                query: init.dense(d, inner),
                key_value: Some(init.dense(d, 2 * inner)),
                out: init.dense(inner, d),
            }
        } else {
            Self {
                query: init.dense(d, 3 * inner),
                key_value: None,
                out: init.dense(inner, d),
            }
        }
    }

    /// `bias` is `[B or 1, 1, Lq or 1, Lk]`, added to the scores. The number of heads is read off the
    /// weights (`out` is `[heads * head_dim, d]`), so structurally pruned layers need no extra state.
    fn forward(
        &self,
        x: Tensor<3>,
        memory: Option<Tensor<3>>,
        bias: Tensor<4>,
        heads: usize,
    ) -> Tensor<3> {
        let kv = match (&self.key_value, memory) {
            (Some(kv), Some(memory)) => Some(kv.forward(memory)),
            _ => None,
        };
        self.forward_projected(x, kv, bias, heads)
    }

    /// The keys and values of `memory` for cross-attention (`[b, m, 2 inner]`), computed once and reused
    /// for every decoding step by [`MultimodalModel::generate`].
    fn project_memory(&self, memory: Tensor<3>) -> Option<Tensor<3>> {
        self.key_value.as_ref().map(|kv| kv.forward(memory))
    }

    /// Attention with the memory's keys and values already projected (`kv`, cross-attention) or none
    /// (self-attention).
    ///
    /// The `1/sqrt(head_dim)` score scale is folded into the query projection (weights and bias of the
    /// query columns are scaled, `[d, inner]`, instead of the `[b, h, n, head_dim]` queries), and q, k, v
    /// are strided views of the projections, so the only copy is the head merge of the context.
    fn forward_projected(
        &self,
        x: Tensor<3>,
        kv: Option<Tensor<3>>,
        bias: Tensor<4>,
        heads: usize,
    ) -> Tensor<3> {
        let [b, n, d_model] = x.dims();
        let head_dim = d_model / heads.max(1);
        let [inner, _] = self.out.weight.val().dims(); // heads * head_dim
        let h = inner / head_dim.max(1);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let weight = self.query.weight.val();
        let qbias = self.query.bias.val();
        let device = weight.device();
        let (q, k, v) = match kv {
            Some(kv) => {
                let q = ops::linear(
                    x.reshape([b * n, d_model]),
                    weight.mul_scalar(scale),
                    Some(qbias.mul_scalar(scale)),
                )
                .reshape([b, n, inner]);
                let kv = head_view(kv, head_dim);
                (
                    head_view(q, head_dim),
                    kv.clone().narrow(1, 0, h),
                    kv.narrow(1, h, h),
                )
            }
            None => {
                // Scale only the query columns of the fused [d, 3 inner] projection.
                let mut col = vec![1f32; 3 * inner];
                col[..inner].fill(scale);
                let col = Tensor::<1>::from_data(TensorData::new(col, [3 * inner]), &device);
                let qkv = ops::linear(
                    x.reshape([b * n, d_model]),
                    weight * col.clone().unsqueeze_dim(0),
                    Some(qbias * col),
                )
                .reshape([b, n, 3 * inner]);
                let qkv = head_view(qkv, head_dim);
                (
                    qkv.clone().narrow(1, 0, h),
                    qkv.clone().narrow(1, h, h),
                    qkv.narrow(1, 2 * h, h),
                )
            }
        };
        let scores = q.matmul(k.swap_dims(2, 3)) + bias;
        let weights = activation::softmax(scores, 3);
        let context = weights.matmul(v).swap_dims(1, 2).reshape([b, n, inner]);
        self.out.forward(context)
    }
}

/// Linear(d, ff) -> GELU -> Linear(ff, d).
#[derive(Module, Debug)]
pub struct FeedForward {
    up: Dense,
    down: Dense,
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down.forward(activation::gelu(self.up.forward(x)))
    }
}

/// Pre-norm encoder layer.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    norm_attn: Norm,
    attn: Attention,
    norm_ff: Norm,
    ff: FeedForward,
}

impl EncoderLayer {
    fn new(init: &mut Init, d: usize, inner: usize, ff: usize) -> Self {
        Self {
            norm_attn: init.norm(d),
            attn: Attention::new(init, d, inner, false),
            norm_ff: init.norm(d),
            ff: FeedForward {
                up: init.dense(d, ff),
                down: init.dense(ff, d),
            },
        }
    }

    fn forward(
        &self,
        x: Tensor<3>,
        bias: Tensor<4>,
        heads: usize,
        drop: &mut Dropout,
    ) -> Tensor<3> {
        let a = self
            .attn
            .forward(self.norm_attn.forward(x.clone()), None, bias, heads);
        let x = x + drop.apply(a);
        let f = self.ff.forward(self.norm_ff.forward(x.clone()));
        x + drop.apply(f)
    }
}

/// Pre-norm decoder layer: causal self-attention, cross-attention, feed-forward.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    norm_self: Norm,
    self_attn: Attention,
    norm_cross: Norm,
    cross_attn: Attention,
    norm_ff: Norm,
    ff: FeedForward,
}

impl DecoderLayer {
    fn new(init: &mut Init, d: usize, inner: usize, cross_inner: usize, ff: usize) -> Self {
        Self {
            norm_self: init.norm(d),
            self_attn: Attention::new(init, d, inner, false),
            norm_cross: init.norm(d),
            cross_attn: Attention::new(init, d, cross_inner, true),
            norm_ff: init.norm(d),
            ff: FeedForward {
                up: init.dense(d, ff),
                down: init.dense(ff, d),
            },
        }
    }

    /// `cross_kv`: the memory's keys and values of this layer's cross-attention when already projected
    /// (greedy/sampled decoding reuses them across steps), else projected here.
    fn forward(
        &self,
        y: Tensor<3>,
        enc: &Encoded,
        cross_kv: Option<Tensor<3>>,
        causal: Tensor<4>,
        heads: usize,
        drop: &mut Dropout,
    ) -> Tensor<3> {
        let a = self
            .self_attn
            .forward(self.norm_self.forward(y.clone()), None, causal, heads);
        let y = y + drop.apply(a);
        let kv = cross_kv.or_else(|| self.cross_attn.project_memory(enc.memory.clone()));
        let c = self.cross_attn.forward_projected(
            self.norm_cross.forward(y.clone()),
            kv,
            enc.bias.clone(),
            heads,
        );
        let y = y + drop.apply(c);
        let f = self.ff.forward(self.norm_ff.forward(y.clone()));
        y + drop.apply(f)
    }
}

/// Patch projection plus learned positions.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    proj: Dense,
    pos: Param<Tensor<2>>,
}

/// FT-Transformer numeric feature tokens: `x_f * weight_f + bias_f`.
#[derive(Module, Debug)]
pub struct NumericEmbed {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<2>>,
}

/// Token segments, each with its own type embedding.
#[derive(Debug, Clone, Copy)]
enum Segment {
    Fusion = 0,
    Question = 1,
    Image = 2,
    Audio = 3,
    Tabular = 4,
}

impl Segment {
    const COUNT: usize = 5;
}

/// One modality of a host batch: `values` row-major `[batch, ...shape]`, `present[i]` false when sample `i`
/// lacks it (its values are then never attended to).
#[derive(Debug, Clone, PartialEq)]
pub struct ModalityBatch {
    /// The values.
    pub values: Vec<f32>,
    /// Whether each sample has the modality.
    pub present: Vec<bool>,
}

/// Tabular features of a host batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TabularBatch {
    /// Numeric values `[batch, numeric_features]`.
    pub numeric: Vec<f32>,
    /// Categorical codes `[batch, categorical features]` (codes at or beyond a feature's cardinality map to
    /// its unknown slot).
    pub categorical: Vec<u32>,
    /// Whether each sample has tabular features.
    pub present: Vec<bool>,
}

/// The model inputs of a batch of samples, on the host. Build it with [`Batch::new`] and the `with_*`
/// methods; absent modalities are `None` (every sample lacks them).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Samples.
    pub size: usize,
    /// Question ids per sample (unpadded).
    pub questions: Vec<Vec<u32>>,
    /// Images `[batch, C, H, W]`.
    pub image: Option<ModalityBatch>,
    /// Audio `[batch, mels, frames]`.
    pub audio: Option<ModalityBatch>,
    /// Tabular features.
    pub tabular: Option<TabularBatch>,
}

/// Samples per forward pass of [`MultimodalModel::generate`]: larger batches run in chunks of this size.
pub const GENERATE_CHUNK: usize = 64;

impl Batch {
    /// The samples `range` of the batch (every modality sliced alike).
    fn rows(&self, range: std::ops::Range<usize>) -> Batch {
        let n = self.size.max(1);
        let slice = |m: &Option<ModalityBatch>| {
            m.as_ref().map(|m| {
                let per = m.values.len() / n;
                ModalityBatch {
                    values: m.values[range.start * per..range.end * per].to_vec(),
                    present: m.present[range.clone()].to_vec(),
                }
            })
        };
        let tabular = self.tabular.as_ref().map(|t| {
            let num = t.numeric.len() / n;
            let cat = t.categorical.len() / n;
            TabularBatch {
                numeric: t.numeric[range.start * num..range.end * num].to_vec(),
                categorical: t.categorical[range.start * cat..range.end * cat].to_vec(),
                present: t.present[range.clone()].to_vec(),
            }
        });
        Batch {
            size: range.len(),
            questions: self.questions[range.clone()].to_vec(),
            image: slice(&self.image),
            audio: slice(&self.audio),
            tabular,
        }
    }

    /// A batch of questions only.
    pub fn new(questions: Vec<Vec<u32>>) -> Self {
        Self {
            size: questions.len(),
            questions,
            image: None,
            audio: None,
            tabular: None,
        }
    }

    /// Whether any input value of a present modality is NaN or infinite.
    pub fn has_non_finite(&self, config: &ModelConfig) -> bool {
        let bad = |m: &Option<ModalityBatch>, per: usize| {
            m.as_ref().is_some_and(|m| {
                m.values
                    .chunks(per.max(1))
                    .zip(&m.present)
                    .any(|(row, &present)| present && row.iter().any(|v| !v.is_finite()))
            })
        };
        let image_per = config.image_shape.map_or(1, |s| s.iter().product());
        let audio_per = config.audio_shape.map_or(1, |s| s.iter().product());
        let tab = self.tabular.as_ref().is_some_and(|t| {
            t.numeric
                .chunks(config.numeric_features.max(1))
                .zip(&t.present)
                .any(|(row, &present)| present && row.iter().any(|v| !v.is_finite()))
        });
        bad(&self.image, image_per) || bad(&self.audio, audio_per) || tab
    }
}

/// Encoder output: fused tokens and the attention bias that masks absent keys.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[batch, tokens, d_model]`.
    pub memory: Tensor<3>,
    /// `[batch, 1, 1, tokens]`: 0 for attended keys, -1e9 for masked ones.
    pub bias: Tensor<4>,
}

/// Per-token scores of given answer sequences (batched, differentiable on an autodiff device).
#[derive(Debug, Clone)]
pub struct SequenceScores {
    /// `log p(target_t | ...)`, `[batch, steps]`; the last scored step of each row is `<eos>`.
    pub token_logprobs: Tensor<2>,
    /// Entropy of the next-token distribution at each step, `[batch, steps]`.
    pub entropy: Tensor<2>,
    /// 1 for real steps, 0 for padding, `[batch, steps]`.
    pub mask: Tensor<2>,
}

impl SequenceScores {
    /// Sum of token log-probabilities per sequence, `[batch]`.
    pub fn sequence_logprobs(&self) -> Tensor<1> {
        (self.token_logprobs.clone() * self.mask.clone())
            .sum_dim(1)
            .squeeze_dim(1)
    }
}

/// How to pick the next answer token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoding {
    /// The most probable token.
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the `top_k` most probable tokens
    /// (`None`: all); with probability `epsilon` pick a uniformly random token instead. A temperature at or
    /// below 1e-6 is greedy.
    Sample {
        /// Softmax temperature.
        temperature: f32,
        /// Keep only the k most probable tokens.
        top_k: Option<usize>,
        /// Probability of a uniformly random token.
        epsilon: f64,
    },
}

/// A generated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Answer token ids, without `<eos>`.
    pub tokens: Vec<u32>,
    /// Log-probability under the model (temperature 1) of each generated token, `<eos>` included when
    /// it was generated.
    pub token_logprobs: Vec<f32>,
    /// Their sum.
    pub logprob: f32,
}

/// The multimodal question-answering transformer.
#[derive(Module, Debug)]
pub struct MultimodalModel {
    fusion: Param<Tensor<2>>,
    type_embed: Param<Tensor<2>>,
    question_embed: Param<Tensor<2>>,
    question_pos: Param<Tensor<2>>,
    image: Option<PatchEmbed>,
    audio: Option<PatchEmbed>,
    numeric: Option<NumericEmbed>,
    categorical: Option<Param<Tensor<2>>>,
    encoder: Vec<EncoderLayer>,
    encoder_norm: Norm,
    answer_embed: Param<Tensor<2>>,
    answer_pos: Param<Tensor<2>>,
    decoder: Vec<DecoderLayer>,
    decoder_norm: Norm,
    head: Dense,
    #[module(skip)]
    config: ModelConfig,
}

fn bias_tensor(masked: &[bool], b: usize, n: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = masked
        .iter()
        .map(|&m| if m { MASKED } else { 0.0 })
        .collect();
    Tensor::<4>::from_data(TensorData::new(values, [b, 1, 1, n]), device)
}

/// The token segments of a batch being encoded, in order, each with its key mask.
#[derive(Default)]
struct Segments {
    tokens: Vec<Tensor<3>>,
    /// Key mask per segment, row-major [b, tokens of the segment].
    masks: Vec<(usize, Vec<bool>)>,
}

impl Segments {
    /// Appends a segment of `len` tokens per row and its key mask (true: masked).
    fn push(&mut self, tokens: Tensor<3>, len: usize, mask: Vec<bool>) {
        self.tokens.push(tokens);
        self.masks.push((len, mask));
    }

    /// The segments concatenated along the token axis, and the attention bias of their key masks.
    fn fuse(self, b: usize, device: &Device) -> (Tensor<3>, Tensor<4>) {
        let n: usize = self.masks.iter().map(|(len, _)| len).sum();
        let mut masked = Vec::with_capacity(b * n);
        for i in 0..b {
            for (len, m) in &self.masks {
                masked.extend_from_slice(&m[i * len..(i + 1) * len]);
            }
        }
        let bias = bias_tensor(&masked, b, n, device);
        (Tensor::cat(self.tokens, 1), bias)
    }
}

impl MultimodalModel {
    /// The config the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device of the parameters (autodiff while training, plain for a [`valid`](Module::valid) copy).
    pub fn device(&self) -> Device {
        self.fusion.val().device()
    }

    /// A frozen copy for use as a reference model: no autodiff, no dropout; later optimizer steps on
    /// `self` never change it.
    pub fn reference(&self) -> Self {
        self.valid()
    }

    fn type_row(&self, segment: Segment) -> Tensor<3> {
        let d = self.config.d_model;
        self.type_embed
            .val()
            .narrow(0, segment as usize, 1)
            .reshape([1, 1, d])
    }

    /// Encodes a batch into fused tokens.
    pub fn encode(&self, batch: &Batch, drop: &mut Dropout) -> Encoded {
        let device = self.device();
        let cfg = &self.config;
        let b = batch.size;
        let mut segments = Segments::default();
        self.fusion_tokens(b, &mut segments);
        self.question_tokens(batch, &device, &mut segments);
        self.image_tokens(batch, &device, &mut segments);
        self.audio_tokens(batch, &device, &mut segments);
        self.tabular_tokens(batch, &device, &mut segments);
        let (tokens, bias) = segments.fuse(b, &device);
        let mut x = drop.apply(tokens);
        for layer in &self.encoder {
            x = layer.forward(x, bias.clone(), cfg.heads, drop);
        }
        Encoded {
            memory: self.encoder_norm.forward(x),
            bias,
        }
    }

    /// The fusion token (learned), never masked.
    fn fusion_tokens(&self, b: usize, segments: &mut Segments) {
        let d = self.config.d_model;
        segments.push(
            self.fusion.val().reshape([1, 1, d]).expand([b, 1, d]) + self.type_row(Segment::Fusion),
            1,
            vec![false; b],
        );
    }

    /// The question words (ids past the vocabulary clamped to its last id), with learned positions;
    /// padding masked.
    fn question_tokens(&self, batch: &Batch, device: &Device, segments: &mut Segments) {
        let cfg = &self.config;
        let b = batch.size;
        let lq = batch
            .questions
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .clamp(1, cfg.max_question_len);
        let mut ids = vec![PAD as i64; b * lq];
        let mut q_mask = vec![true; b * lq];
        for (i, q) in batch.questions.iter().enumerate() {
            for (t, &id) in q.iter().take(lq).enumerate() {
                ids[i * lq + t] = i64::from(id.min(cfg.question_vocab.saturating_sub(1) as u32));
                q_mask[i * lq + t] = false;
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, lq]), device);
        let q = ops::embedding(self.question_embed.val(), ids)
            + self.question_pos.val().narrow(0, 0, lq).unsqueeze_dim(0)
            + self.type_row(Segment::Question);
        segments.push(q, lq, q_mask);
    }

    /// The image's non-overlapping patches, projected, with learned positions; masked where absent.
    fn image_tokens(&self, batch: &Batch, device: &Device, segments: &mut Segments) {
        let cfg = &self.config;
        let b = batch.size;
        if let (Some(embed), Some(img), Some([c, h, w])) =
            (&self.image, &batch.image, cfg.image_shape)
        {
            let p = cfg.image_patch;
            let (gh, gw) = (h / p, w / p);
            let x =
                Tensor::<4>::from_data(TensorData::new(img.values.clone(), [b, c, h, w]), device)
                    .reshape([b, c, gh, p, gw, p])
                    .permute([0, 2, 4, 1, 3, 5])
                    .reshape([b, gh * gw, c * p * p]);
            let tokens = embed.proj.forward(x)
                + embed.pos.val().unsqueeze_dim(0)
                + self.type_row(Segment::Image);
            segments.push(tokens, gh * gw, absent_mask(&img.present, gh * gw));
        }
    }

    /// The audio's groups of `audio_patch` frames, projected, with learned positions; masked where absent.
    fn audio_tokens(&self, batch: &Batch, device: &Device, segments: &mut Segments) {
        let cfg = &self.config;
        let b = batch.size;
        if let (Some(embed), Some(aud), Some([mels, frames])) =
            (&self.audio, &batch.audio, cfg.audio_shape)
        {
            let pf = cfg.audio_patch;
            let n = frames / pf;
            let x = Tensor::<3>::from_data(
                TensorData::new(aud.values.clone(), [b, mels, frames]),
                device,
            )
            .narrow(2, 0, n * pf)
            .swap_dims(1, 2)
            .reshape([b, n, pf * mels]);
            let tokens = embed.proj.forward(x)
                + embed.pos.val().unsqueeze_dim(0)
                + self.type_row(Segment::Audio);
            segments.push(tokens, n, absent_mask(&aud.present, n));
        }
    }

    /// The tabular features: a token per numeric feature, then one per categorical feature (its own
    /// embedding table; the last row is the unseen code); masked where absent.
    fn tabular_tokens(&self, batch: &Batch, device: &Device, segments: &mut Segments) {
        let cfg = &self.config;
        let b = batch.size;
        let Some(tab) = &batch.tabular else {
            return;
        };
        if let Some(embed) = &self.numeric {
            let f = cfg.numeric_features;
            let x = Tensor::<3>::from_data(TensorData::new(tab.numeric.clone(), [b, f, 1]), device);
            let tokens = x * embed.weight.val().unsqueeze_dim(0)
                + embed.bias.val().unsqueeze_dim(0)
                + self.type_row(Segment::Tabular);
            segments.push(tokens, f, absent_mask(&tab.present, f));
        }
        if let Some(table) = &self.categorical {
            let cards = &cfg.categorical_cardinalities;
            let nc = cards.len();
            let mut offsets = Vec::with_capacity(nc);
            let mut acc = 0usize;
            for c in cards {
                offsets.push(acc);
                acc += c + 1;
            }
            let idx: Vec<i64> = (0..b * nc)
                .map(|k| {
                    let j = k % nc;
                    let code =
                        (tab.categorical.get(k).copied().unwrap_or(0) as usize).min(cards[j]);
                    (offsets[j] + code) as i64
                })
                .collect();
            let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [b, nc]), device);
            let tokens = ops::embedding(table.val(), idx) + self.type_row(Segment::Tabular);
            segments.push(tokens, nc, absent_mask(&tab.present, nc));
        }
    }

    fn causal_bias(&self, steps: usize) -> Tensor<4> {
        let mut values = vec![0f32; steps * steps];
        for i in 0..steps {
            for j in i + 1..steps {
                values[i * steps + j] = MASKED;
            }
        }
        Tensor::<4>::from_data(
            TensorData::new(values, [1, 1, steps, steps]),
            &self.device(),
        )
    }

    /// Decoder logits `[batch, steps, answer_vocab]` for decoder inputs `[batch, steps]` (starting with `<bos>`).
    pub fn decode(&self, enc: &Encoded, inputs: Tensor<2, Int>, drop: &mut Dropout) -> Tensor<3> {
        self.decode_with(enc, None, inputs, drop)
    }

    /// [`decode`](Self::decode) with each decoder layer's cross-attention keys and values of the memory
    /// given (`cross_kv[layer]`), or projected here when `None`.
    fn decode_with(
        &self,
        enc: &Encoded,
        cross_kv: Option<&[Tensor<3>]>,
        inputs: Tensor<2, Int>,
        drop: &mut Dropout,
    ) -> Tensor<3> {
        let [_, steps] = inputs.dims();
        let mut y = ops::embedding(self.answer_embed.val(), inputs)
            + self.answer_pos.val().narrow(0, 0, steps).unsqueeze_dim(0);
        y = drop.apply(y);
        let causal = self.causal_bias(steps);
        for (i, layer) in self.decoder.iter().enumerate() {
            let kv = cross_kv.and_then(|kv| kv.get(i).cloned());
            y = layer.forward(y, enc, kv, causal.clone(), self.config.heads, drop);
        }
        self.head.forward(self.decoder_norm.forward(y))
    }

    /// Decoder inputs (`<bos>` + answer) and targets (answer + `<eos>`), padded, `[batch, steps]`, with the
    /// mask of real steps. Answers longer than `max_answer_len` are truncated.
    pub fn teacher_forcing(
        &self,
        answers: &[Vec<u32>],
    ) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>) {
        let max = self.config.max_answer_len;
        let b = answers.len();
        let steps = answers.iter().map(|a| a.len().min(max)).max().unwrap_or(0) + 1;
        let mut inputs = vec![PAD as i64; b * steps];
        let mut targets = vec![PAD as i64; b * steps];
        let mut mask = vec![0f32; b * steps];
        for (i, a) in answers.iter().enumerate() {
            let a = &a[..a.len().min(max)];
            inputs[i * steps] = i64::from(BOS);
            for (t, &tok) in a.iter().enumerate() {
                inputs[i * steps + t + 1] = i64::from(tok);
                targets[i * steps + t] = i64::from(tok);
                mask[i * steps + t] = 1.0;
            }
            targets[i * steps + a.len()] = i64::from(EOS);
            mask[i * steps + a.len()] = 1.0;
        }
        let device = self.device();
        (
            Tensor::from_data(TensorData::new(inputs, [b, steps]), &device),
            Tensor::from_data(TensorData::new(targets, [b, steps]), &device),
            Tensor::from_data(TensorData::new(mask, [b, steps]), &device),
        )
    }

    /// Per-token log-probabilities and entropies of `answers` (token ids without `<bos>`/`<eos>`) given the
    /// batch; differentiable when the model is on an autodiff device.
    pub fn score(&self, batch: &Batch, answers: &[Vec<u32>], drop: &mut Dropout) -> SequenceScores {
        let enc = self.encode(batch, drop);
        self.score_encoded(&enc, answers, drop)
    }

    /// [`score`](Self::score) given an encoded batch, for callers that also read the encoder output (PPO's
    /// value head).
    pub fn score_encoded(
        &self,
        enc: &Encoded,
        answers: &[Vec<u32>],
        drop: &mut Dropout,
    ) -> SequenceScores {
        let (inputs, targets, mask) = self.teacher_forcing(answers);
        let logits = self.decode(enc, inputs, drop);
        let logp = activation::log_softmax(logits, 2);
        let entropy = -(logp.clone().exp() * logp.clone())
            .sum_dim(2)
            .squeeze_dim(2);
        let token_logprobs = logp.gather(2, targets.unsqueeze_dim(2)).squeeze_dim(2);
        SequenceScores {
            token_logprobs,
            entropy,
            mask,
        }
    }

    /// The supervised loss: summed negative log-likelihood of the answer tokens (and `<eos>`) divided by
    /// `normalizer` (the number of scored tokens of the whole optimizer batch, so accumulated micro-batches
    /// add up to the full-batch mean).
    pub fn nll(
        &self,
        batch: &Batch,
        answers: &[Vec<u32>],
        normalizer: f32,
        drop: &mut Dropout,
    ) -> Tensor<1> {
        let s = self.score(batch, answers, drop);
        -(s.token_logprobs * s.mask).sum().div_scalar(normalizer)
    }

    /// Generates an answer per sample. The encoder runs once; the decoder reruns on the growing prefix
    /// (answers are a few tokens, so a self-attention KV cache would not pay off; the cross-attention
    /// keys and values of the memory are projected once). Large batches run in chunks of
    /// [`GENERATE_CHUNK`] samples (one after the other, rows in order), which keeps every activation
    /// cache-sized: on the CPU a 256-sample encoder pass is memory-bound (fresh 10 MB buffers per op).
    pub fn generate(
        &self,
        batch: &Batch,
        decoding: Decoding,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        // A GPU runs the whole batch at once: chunks only help the CPU's caches.
        let chunk = if self.device() == Device::flex() {
            GENERATE_CHUNK
        } else {
            batch.size.max(1)
        };
        if batch.size <= chunk {
            return self.generate_chunk(batch, decoding, rng);
        }
        // Chunks run concurrently ([`crate::parallel::threads`]); each samples from its own generator
        // seeded from `rng` in chunk order, so the answers do not depend on the thread count.
        let chunks = batch.size.div_ceil(chunk);
        let seeds: Vec<u64> = match decoding {
            Decoding::Greedy => vec![0; chunks],
            _ => (0..chunks).map(|_| rng.random()).collect(),
        };
        crate::parallel::map_ordered(chunks, crate::parallel::threads(), |c| {
            let rows = c * chunk..((c + 1) * chunk).min(batch.size);
            let mut chunk_rng = ChaCha8Rng::seed_from_u64(seeds[c]);
            self.generate_chunk(&batch.rows(rows), decoding, &mut chunk_rng)
        })
        .into_iter()
        .flatten()
        .collect()
    }

    fn generate_chunk(
        &self,
        batch: &Batch,
        decoding: Decoding,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        let b = batch.size;
        let vocab = self.config.answer_vocab;
        let device = self.device();
        let enc = self.encode(batch, &mut Dropout::off());
        // The memory's cross-attention keys and values do not change between steps: project them once.
        let cross_kv: Vec<Tensor<3>> = self
            .decoder
            .iter()
            .filter_map(|layer| layer.cross_attn.project_memory(enc.memory.clone()))
            .collect();
        let mut prefix: Vec<Vec<i64>> = vec![vec![i64::from(BOS)]; b];
        let mut out: Vec<Generated> = (0..b)
            .map(|_| Generated {
                tokens: Vec::new(),
                token_logprobs: Vec::new(),
                logprob: 0.0,
            })
            .collect();
        let mut done = vec![false; b];
        for step in 0..=self.config.max_answer_len {
            let steps = step + 1;
            let flat: Vec<i64> = prefix.iter().flatten().copied().collect();
            let inputs = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, steps]), &device);
            let logits = self
                .decode_with(&enc, Some(&cross_kv), inputs, &mut Dropout::off())
                .narrow(1, step, 1)
                .reshape([b, vocab]);
            let logits: Vec<f32> = logits.into_data().try_into_vec::<f32>().unwrap_or_default();
            for i in 0..b {
                let row = &logits[i * vocab..(i + 1) * vocab];
                let (token, lp) = if done[i] {
                    (PAD, 0.0)
                } else {
                    let force_eos = step == self.config.max_answer_len;
                    let token = if force_eos {
                        EOS
                    } else {
                        pick(row, decoding, rng)
                    };
                    (token, log_softmax_at(row, token as usize))
                };
                if !done[i] {
                    out[i].token_logprobs.push(lp);
                    out[i].logprob += lp;
                    if token == EOS {
                        done[i] = true;
                    } else {
                        out[i].tokens.push(token);
                    }
                }
                prefix[i].push(i64::from(token));
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        out
    }
}

/// Tokens a generated answer may hold: everything but `<pad>` and `<bos>`.
fn allowed(token: usize) -> bool {
    token != PAD as usize && token != BOS as usize
}

fn log_softmax_at(row: &[f32], token: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    row.get(token)
        .map_or(f32::NEG_INFINITY, |&v| v - max - sum.ln())
}

/// Picks the next token from one row of logits.
pub fn pick(row: &[f32], decoding: Decoding, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = || {
        row.iter()
            .enumerate()
            .filter(|(t, _)| allowed(*t))
            .fold((EOS as usize, f32::NEG_INFINITY), |best, (t, &v)| {
                if v > best.1 { (t, v) } else { best }
            })
            .0 as u32
    };
    match decoding {
        Decoding::Greedy => argmax(),
        Decoding::Sample {
            temperature,
            top_k,
            epsilon,
        } => {
            let candidates: Vec<usize> = (0..row.len()).filter(|&t| allowed(t)).collect();
            if candidates.is_empty() {
                return EOS;
            }
            if epsilon > 0.0 && rng.random_bool(epsilon.min(1.0)) {
                return candidates[rng.random_range(0..candidates.len())] as u32;
            }
            if temperature <= 1e-6 {
                return argmax();
            }
            let mut ranked: Vec<(usize, f32)> = candidates
                .iter()
                .map(|&t| (t, row[t] / temperature))
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if let Some(k) = top_k {
                ranked.truncate(k.max(1));
            }
            let max = ranked[0].1;
            let weights: Vec<f64> = ranked
                .iter()
                .map(|(_, v)| f64::from(v - max).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            let mut u = rng.random_range(0.0..total);
            for ((t, _), w) in ranked.iter().zip(&weights) {
                if u < *w {
                    return *t as u32;
                }
                u -= w;
            }
            ranked[ranked.len() - 1].0 as u32
        }
    }
}

/// The key-padding mask of a segment of `tokens` tokens per sample: true where the sample lacks the modality.
fn absent_mask(present: &[bool], tokens: usize) -> Vec<bool> {
    present
        .iter()
        .flat_map(|&pr| std::iter::repeat_n(!pr, tokens))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch larger than [`GENERATE_CHUNK`] runs in chunks; every row must come out as if it had been
    /// generated alone (rows are independent, chunk boundaries and padding change nothing).
    #[test]
    fn chunked_generation_matches_rows_generated_alone() -> Result<()> {
        let mut config = ModelConfig::preset(Preset::Tiny);
        config.question_vocab = 30;
        config.answer_vocab = 12;
        config.numeric_features = 2;
        config.categorical_cardinalities = vec![3];
        let model = config.init(&Device::flex(), 7)?;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = GENERATE_CHUNK + 9;
        let questions: Vec<Vec<u32>> = (0..n)
            .map(|i| (0..1 + i % 5).map(|_| rng.random_range(2..30)).collect())
            .collect();
        let mut batch = Batch::new(questions);
        batch.tabular = Some(TabularBatch {
            numeric: (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect(),
            categorical: (0..n as u32).map(|i| i % 4).collect(),
            present: (0..n).map(|i| i % 3 != 0).collect(),
        });
        let all = model.generate(&batch, Decoding::Greedy, &mut rng);
        assert_eq!(all.len(), n);
        for (i, got) in all.iter().enumerate() {
            let alone = model.generate(&batch.rows(i..i + 1), Decoding::Greedy, &mut rng);
            assert_eq!(got.tokens, alone[0].tokens, "row {i}");
            assert!(
                (got.logprob - alone[0].logprob).abs() < 1e-4,
                "row {i}: {} vs {}",
                got.logprob,
                alone[0].logprob
            );
        }
        Ok(())
    }
}
