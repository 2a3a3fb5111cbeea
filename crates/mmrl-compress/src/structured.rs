//! Structured pruning: whole attention heads and feed-forward neurons are ranked by importance and
//! removed, physically shrinking the weight matrices (the config records the new per-layer widths in
//! `layer_shapes`).
//!
//! A head `h` of a self-attention layer with `inner = heads * head_dim` owns the columns
//! `part * inner + h * head_dim ..+ head_dim` (part 0, 1, 2: query, key, value) of `query.weight` and
//! `query.bias`, and the rows `h * head_dim ..+ head_dim` of `out.weight`; a cross-attention head owns the
//! matching columns of `query` (queries) and `key_value` (keys, values). Feed-forward neuron `n` owns column
//! `n` of `up.weight`, entry `n` of `up.bias` and row `n` of `down.weight`.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use mmrl_model::data::Dataset;
use mmrl_model::model::LayerShape;
use mmrl_model::vocab::Vocab;
use mmrl_model::{Dropout, ModelConfig, MultimodalModel};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::{Entry, Masks, State, load_state, state};

/// How heads and neurons are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// L2 norm of the weights a head or neuron owns.
    Magnitude,
    /// First-order Taylor estimate of the loss change when the group is removed, `(sum_g w * dL/dw)^2`
    /// summed over train batches (Molchanov et al. 2019).
    Taylor,
}

/// One attention block of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Self-attention: fused `query` `[d, 3 inner]`.
    SelfAttn,
    /// Cross-attention: `query` `[d, inner]` + `key_value` `[d, 2 inner]`.
    Cross,
}

/// The modules of layer `index` (encoder layers first).
fn layer_prefix(config: &ModelConfig, index: usize) -> String {
    if index < config.encoder_layers {
        format!("encoder.{index}")
    } else {
        format!("decoder.{}", index - config.encoder_layers)
    }
}

/// `(module path, block)` of every attention block of layer `index`, self-attention first.
fn attention_blocks(config: &ModelConfig, index: usize) -> Vec<(String, Block)> {
    let p = layer_prefix(config, index);
    if index < config.encoder_layers {
        vec![(format!("{p}.attn"), Block::SelfAttn)]
    } else {
        vec![
            (format!("{p}.self_attn"), Block::SelfAttn),
            (format!("{p}.cross_attn"), Block::Cross),
        ]
    }
}

fn entry<'a>(state: &'a State, path: &str) -> Result<&'a Entry> {
    state
        .get(path)
        .ok_or_else(|| Error::Prune(format!("the model has no parameter {path}")))
}

/// Flat indices of columns `cols` of a row-major `[rows, width]` matrix.
fn col_indices(rows: usize, width: usize, cols: &[usize]) -> Vec<usize> {
    (0..rows)
        .flat_map(|r| cols.iter().map(move |&c| r * width + c))
        .collect()
}

/// Flat indices of rows `rs` of a row-major `[_, width]` matrix.
fn row_indices(width: usize, rs: &[usize]) -> Vec<usize> {
    rs.iter()
        .flat_map(|&r| (r * width..(r + 1) * width).collect::<Vec<_>>())
        .collect()
}

/// The `(path, flat indices)` a head of an attention block owns.
fn head_slices(
    state: &State,
    module: &str,
    block: Block,
    head: usize,
    head_dim: usize,
) -> Result<Vec<(String, Vec<usize>)>> {
    let out = entry(state, &format!("{module}.out.weight"))?;
    let (inner, d) = (out.shape[0], out.shape[1]);
    let cols: Vec<usize> = (head * head_dim..(head + 1) * head_dim).collect();
    let parts = |n: usize| -> Vec<usize> {
        (0..n)
            .flat_map(|part| cols.iter().map(move |c| part * inner + c))
            .collect()
    };
    let mut v = Vec::new();
    match block {
        Block::SelfAttn => {
            let q = parts(3);
            v.push((
                format!("{module}.query.weight"),
                col_indices(d, 3 * inner, &q),
            ));
            v.push((format!("{module}.query.bias"), q));
        }
        Block::Cross => {
            v.push((
                format!("{module}.query.weight"),
                col_indices(d, inner, &cols),
            ));
            v.push((format!("{module}.query.bias"), cols.clone()));
            let kv = parts(2);
            v.push((
                format!("{module}.key_value.weight"),
                col_indices(d, 2 * inner, &kv),
            ));
            v.push((format!("{module}.key_value.bias"), kv));
        }
    }
    v.push((format!("{module}.out.weight"), row_indices(d, &cols)));
    Ok(v)
}

/// The `(path, flat indices)` a feed-forward neuron owns.
fn neuron_slices(state: &State, ff: &str, n: usize) -> Result<Vec<(String, Vec<usize>)>> {
    let up = entry(state, &format!("{ff}.up.weight"))?;
    let (d, width) = (up.shape[0], up.shape[1]);
    Ok(vec![
        (format!("{ff}.up.weight"), col_indices(d, width, &[n])),
        (format!("{ff}.up.bias"), vec![n]),
        (format!("{ff}.down.weight"), row_indices(d, &[n])),
    ])
}

/// Heads of an attention block and neurons of a feed-forward layer, as currently shaped.
fn heads_of(state: &State, module: &str, head_dim: usize) -> Result<usize> {
    Ok(entry(state, &format!("{module}.out.weight"))?.shape[0] / head_dim.max(1))
}

fn neurons_of(state: &State, ff: &str) -> Result<usize> {
    Ok(entry(state, &format!("{ff}.up.weight"))?.shape[1])
}

/// Importance of every head and neuron of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerScores {
    /// Self-attention heads.
    pub heads: Vec<f64>,
    /// Cross-attention heads (decoder layers; empty for encoder layers).
    pub cross_heads: Vec<f64>,
    /// Feed-forward neurons.
    pub ff: Vec<f64>,
}

/// The `(path, flat indices)` one head or neuron owns.
type Slices = Vec<(String, Vec<usize>)>;

/// Per layer: the slices of each self-attention head, each cross-attention head, each neuron.
type Groups = Vec<[Vec<Slices>; 3]>;

fn groups(config: &ModelConfig, state: &State) -> Result<Groups> {
    let hd = config.head_dim();
    let layers = config.encoder_layers + config.decoder_layers;
    let mut out = Vec::with_capacity(layers);
    for i in 0..layers {
        let mut g: [Vec<Slices>; 3] = Default::default();
        for (slot, (module, block)) in attention_blocks(config, i).into_iter().enumerate() {
            for h in 0..heads_of(state, &module, hd)? {
                g[slot].push(head_slices(state, &module, block, h, hd)?);
            }
        }
        let ff = format!("{}.ff", layer_prefix(config, i));
        for n in 0..neurons_of(state, &ff)? {
            g[2].push(neuron_slices(state, &ff, n)?);
        }
        out.push(g);
    }
    Ok(out)
}

/// Weight-magnitude importance: the L2 norm of each group's weights.
pub fn magnitude_scores(model: &MultimodalModel) -> Result<Vec<LayerScores>> {
    let st = state(model);
    let gs = groups(model.config(), &st)?;
    let norm = |slices: &Slices| -> f64 {
        slices
            .iter()
            .map(|(p, idx)| {
                let v = &st[p].values;
                idx.iter().map(|&i| f64::from(v[i]).powi(2)).sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    };
    Ok(gs
        .iter()
        .map(|[h, c, f]| LayerScores {
            heads: h.iter().map(norm).collect(),
            cross_heads: c.iter().map(norm).collect(),
            ff: f.iter().map(norm).collect(),
        })
        .collect())
}

struct GradsByPath<'a> {
    path: Vec<String>,
    grads: &'a GradientsParams,
    out: BTreeMap<String, Vec<f32>>,
}

impl ModuleVisitor for GradsByPath<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let v = g
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default();
            self.out.insert(self.path.join("."), v);
        }
    }
}

/// First-order Taylor importance on the train batches `batches` (items of [`Dataset::batch`]); `model` must
/// live on an autodiff device.
pub fn taylor_scores(
    model: &MultimodalModel,
    data: &Dataset,
    vocab: &Vocab,
    batches: &[Vec<(usize, usize)>],
) -> Result<Vec<LayerScores>> {
    let st = state(model);
    let gs = groups(model.config(), &st)?;
    let mut scores: Vec<LayerScores> = gs
        .iter()
        .map(|[h, c, f]| LayerScores {
            heads: vec![0.0; h.len()],
            cross_heads: vec![0.0; c.len()],
            ff: vec![0.0; f.len()],
        })
        .collect();
    for items in batches {
        let (batch, answers) = data.batch(items, vocab, model.config(), None);
        let tokens: usize = answers
            .iter()
            .map(|a| a.len().min(model.config().max_answer_len) + 1)
            .sum();
        let loss = model.nll(&batch, &answers, tokens.max(1) as f32, &mut Dropout::off());
        let grads = GradientsParams::from_grads(loss.backward(), model);
        let mut v = GradsByPath {
            path: Vec::new(),
            grads: &grads,
            out: BTreeMap::new(),
        };
        model.visit(&mut v);
        let dot = |slices: &Slices| -> f64 {
            let s: f64 = slices
                .iter()
                .map(|(p, idx)| {
                    let (w, g) = (&st[p].values, v.out.get(p));
                    g.map_or(0.0, |g| {
                        idx.iter()
                            .map(|&i| f64::from(w[i]) * f64::from(g[i]))
                            .sum::<f64>()
                    })
                })
                .sum();
            s * s
        };
        for (l, [h, c, f]) in gs.iter().enumerate() {
            for (k, g) in h.iter().enumerate() {
                scores[l].heads[k] += dot(g);
            }
            for (k, g) in c.iter().enumerate() {
                scores[l].cross_heads[k] += dot(g);
            }
            for (k, g) in f.iter().enumerate() {
                scores[l].ff[k] += dot(g);
            }
        }
    }
    Ok(scores)
}

/// What to keep of one layer: sorted indices of the heads, cross heads and neurons that stay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerKeep {
    /// Self-attention heads kept.
    pub heads: Vec<usize>,
    /// Cross-attention heads kept (empty in encoder layers).
    pub cross_heads: Vec<usize>,
    /// Feed-forward neurons kept.
    pub ff: Vec<usize>,
}

/// The indices of the `keep` highest scores, sorted (ties: lower index first).
fn top(scores: &[f64], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(keep);
    order.sort_unstable();
    order
}

/// Heads to remove from a layer of `heads` heads for a fraction, rounded to nearest.
pub fn heads_to_remove(heads: usize, fraction: f64) -> usize {
    (heads as f64 * fraction).round() as usize
}

/// Keeps, in every layer, all but `remove_heads[layer]` heads of each attention block and all but
/// `remove_ff[layer]` neurons, ranked by `scores`. Removing every head or neuron of a layer (or more than it
/// has) is an error.
pub fn plan(
    scores: &[LayerScores],
    remove_heads: &[usize],
    remove_ff: &[usize],
) -> Result<Vec<LayerKeep>> {
    if remove_heads.len() != scores.len() || remove_ff.len() != scores.len() {
        return Err(Error::Prune(format!(
            "need one count per layer ({} layers), got {} head counts and {} neuron counts",
            scores.len(),
            remove_heads.len(),
            remove_ff.len()
        )));
    }
    let keep = |what: &str, layer: usize, have: usize, remove: usize| -> Result<usize> {
        if remove >= have {
            return Err(Error::Prune(format!(
                "layer {layer}: cannot remove {remove} {what} of {have}; at least one must stay"
            )));
        }
        Ok(have - remove)
    };
    scores
        .iter()
        .enumerate()
        .map(|(l, s)| {
            let h = keep("attention heads", l, s.heads.len(), remove_heads[l])?;
            let c = if s.cross_heads.is_empty() {
                0
            } else {
                keep(
                    "cross-attention heads",
                    l,
                    s.cross_heads.len(),
                    remove_heads[l],
                )?
            };
            let f = keep("feed-forward neurons", l, s.ff.len(), remove_ff[l])?;
            Ok(LayerKeep {
                heads: top(&s.heads, h),
                cross_heads: top(&s.cross_heads, c),
                ff: top(&s.ff, f),
            })
        })
        .collect()
}

/// Flat indices of everything a layer drops under `keep`, by parameter path.
fn dropped(
    config: &ModelConfig,
    st: &State,
    keep: &[LayerKeep],
) -> Result<BTreeMap<String, Vec<usize>>> {
    let gs = groups(config, st)?;
    if gs.len() != keep.len() {
        return Err(Error::Prune(format!(
            "plan has {} layers, the model {}",
            keep.len(),
            gs.len()
        )));
    }
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for ([h, c, f], k) in gs.iter().zip(keep) {
        for (groups, kept) in [(h, &k.heads), (c, &k.cross_heads), (f, &k.ff)] {
            for (gi, g) in groups.iter().enumerate() {
                if !kept.contains(&gi) {
                    for (p, idx) in g {
                        out.entry(p.clone()).or_default().extend(idx);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The zero-masks of the groups `keep` drops (same shapes as the model): the reference the shrunk model
/// must reproduce.
pub fn masks(model: &MultimodalModel, keep: &[LayerKeep]) -> Result<Masks> {
    let st = state(model);
    let drop = dropped(model.config(), &st, keep)?;
    Ok(drop
        .into_iter()
        .map(|(p, idx)| {
            let mut m = vec![1.0f32; st[&p].len()];
            for i in idx {
                m[i] = 0.0;
            }
            (p, m)
        })
        .collect())
}

/// Builds the physically smaller model that keeps only `keep` (on `model`'s device): its config gains
/// `layer_shapes`, its parameters keep their ids.
pub fn shrink(model: &MultimodalModel, keep: &[LayerKeep]) -> Result<MultimodalModel> {
    let config = model.config();
    let st = state(model);
    let drop = dropped(config, &st, keep)?;
    let mut shrunk = State::new();
    for (path, e) in &st {
        let mut e = e.clone();
        if let Some(idx) = drop.get(path) {
            let mut gone = vec![false; e.len()];
            for &i in idx {
                gone[i] = true;
            }
            e.values = e
                .values
                .iter()
                .zip(&gone)
                .filter(|(_, g)| !**g)
                .map(|(v, _)| *v)
                .collect();
            // Exactly one axis shrinks: columns of [in, out] matrices and biases, rows of out/down.
            let rows_dropped = path.ends_with(".out.weight") || path.ends_with(".down.weight");
            if rows_dropped {
                e.shape[0] = e.values.len() / e.shape[1];
            } else {
                let last = e.shape.len() - 1;
                let other: usize = e.shape[..last].iter().product();
                e.shape[last] = e.values.len() / other.max(1);
            }
        }
        shrunk.insert(path.clone(), e);
    }
    let shapes = keep
        .iter()
        .map(|k| LayerShape {
            heads: k.heads.len(),
            cross_heads: k.cross_heads.len(),
            ff: k.ff.len(),
        })
        .collect();
    let new_config = config.clone().with_layer_shapes(Some(shapes));
    let fresh = new_config.init(&model.device(), 0)?;
    let out = load_state(fresh, &shrunk)?;
    debug_assert_eq!(
        out.num_params(),
        shrunk.values().map(Entry::len).sum::<usize>()
    );
    Ok(out)
}
