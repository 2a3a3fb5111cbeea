//! Unstructured magnitude pruning: the weights of the linear layers with the smallest magnitudes are set to
//! zero, globally or per layer, following the cubic sparsity schedule of Zhu & Gupta (2017).

use serde::{Deserialize, Serialize};

use crate::params::{Masks, State};

/// Whether the parameter at `path` is the weight matrix of a linear layer (attention projections,
/// feed-forward layers, patch projections, the output head); embeddings, norms and biases are never pruned.
pub fn prunable(path: &str) -> bool {
    let Some(module) = path.strip_suffix(".weight") else {
        return false;
    };
    let last = module.rsplit('.').next().unwrap_or(module);
    matches!(
        last,
        "query" | "key_value" | "out" | "up" | "down" | "proj" | "head"
    )
}

/// How sparsity targets are spread over the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One magnitude threshold over all prunable weights (layers end up with different sparsities).
    Global,
    /// Every prunable weight matrix reaches the target on its own.
    PerLayer,
}

/// The sparsity at `step` of the cubic schedule `s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3`,
/// constant `s_i` before `t0` and `s_f` from `t1` on (Zhu & Gupta 2017, eq. 1 with `t1 = t0 + n dt`).
pub fn cubic_sparsity(step: u64, start: u64, end: u64, initial: f64, target: f64) -> f64 {
    if step <= start {
        return initial;
    }
    if step >= end || end <= start {
        return target;
    }
    let progress = (step - start) as f64 / (end - start) as f64;
    target + (initial - target) * (1.0 - progress).powi(3)
}

/// Number of weights to zero in a tensor of `n` values at sparsity `s`.
fn count(n: usize, s: f64) -> usize {
    ((n as f64) * s).floor() as usize
}

/// Keeps the largest magnitudes: zeroes the `k` smallest (ties broken by position, so masks are deterministic).
fn mask_smallest(values: &[f32], k: usize) -> Vec<f32> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].abs().total_cmp(&values[b].abs()).then(a.cmp(&b)));
    let mut mask = vec![1.0; values.len()];
    for &i in order.iter().take(k) {
        mask[i] = 0.0;
    }
    mask
}

/// Whether an override key names `path` or a module above it (`encoder.1` matches `encoder.1.ff.up.weight`,
/// not `encoder.10.ff.up.weight`).
fn key_matches(key: &str, path: &str) -> bool {
    path == key
        || path
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Override keys that match no prunable parameter (typos such as `encodr.0`), in key order.
pub fn unmatched_layer_keys(
    state: &State,
    overrides: &std::collections::BTreeMap<String, f64>,
) -> Vec<String> {
    overrides
        .keys()
        .filter(|k| !state.keys().any(|p| prunable(p) && key_matches(k, p)))
        .cloned()
        .collect()
}

/// Sparsity per prunable parameter path: `target` everywhere, or the per-path `overrides`
/// (a key matches the path it names and every path below it; the longest matching key wins).
pub fn layer_targets(
    state: &State,
    target: f64,
    overrides: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    state
        .keys()
        .filter(|p| prunable(p))
        .map(|p| {
            let s = overrides
                .iter()
                .filter(|(k, _)| key_matches(k, p))
                .max_by_key(|(k, _)| k.len())
                .map_or(target, |(_, &v)| v);
            (p.clone(), s)
        })
        .collect()
}

/// Magnitude masks reaching `fraction` (in [0, 1]) of each layer's target: per layer, or with one
/// global threshold over all prunable weights (then the global target is the weighted mean of the layer
/// targets).
pub fn magnitude_masks(
    state: &State,
    targets: &std::collections::BTreeMap<String, f64>,
    scope: Scope,
    fraction: f64,
) -> Masks {
    match scope {
        Scope::PerLayer => targets
            .iter()
            .filter_map(|(p, &s)| {
                let e = state.get(p)?;
                Some((
                    p.clone(),
                    mask_smallest(&e.values, count(e.len(), s * fraction)),
                ))
            })
            .collect(),
        Scope::Global => {
            let mut all: Vec<(f32, usize, usize)> = Vec::new();
            let mut want = 0f64;
            let paths: Vec<&String> = targets.keys().collect();
            for (pi, p) in paths.iter().enumerate() {
                if let Some(e) = state.get(*p) {
                    want += e.len() as f64 * targets[*p] * fraction;
                    all.extend(e.values.iter().enumerate().map(|(i, v)| (v.abs(), pi, i)));
                }
            }
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut masks: Masks = paths
                .iter()
                .filter_map(|p| Some(((*p).clone(), vec![1.0; state.get(*p)?.len()])))
                .collect();
            for &(_, pi, i) in all.iter().take(want.floor() as usize) {
                if let Some(m) = masks.get_mut(paths[pi]) {
                    m[i] = 0.0;
                }
            }
            masks
        }
    }
}

/// The measured sparsity of one weight matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    /// Parameter path.
    pub layer: String,
    /// Weights in the matrix.
    pub parameters: u64,
    /// Weights that are exactly zero.
    pub zeros: u64,
    /// `zeros / parameters`.
    pub sparsity: f64,
    /// The requested sparsity (`None` for a global target, which sets no per-layer value).
    pub target: Option<f64>,
}

/// Counts the exact zeros of every prunable weight matrix of `state`.
pub fn measure(
    state: &State,
    targets: &std::collections::BTreeMap<String, f64>,
    scope: Scope,
) -> Vec<LayerSparsity> {
    state
        .iter()
        .filter(|(p, _)| prunable(p))
        .map(|(p, e)| {
            let zeros = e.values.iter().filter(|v| **v == 0.0).count() as u64;
            LayerSparsity {
                layer: p.clone(),
                parameters: e.len() as u64,
                zeros,
                sparsity: zeros as f64 / e.len().max(1) as f64,
                target: match scope {
                    Scope::PerLayer => targets.get(p).copied(),
                    Scope::Global => None,
                },
            }
        })
        .collect()
}

/// Zeros over all prunable weights divided by their number.
pub fn overall(rows: &[LayerSparsity]) -> f64 {
    let (z, n) = rows
        .iter()
        .fold((0u64, 0u64), |(z, n), r| (z + r.zeros, n + r.parameters));
    z as f64 / n.max(1) as f64
}
