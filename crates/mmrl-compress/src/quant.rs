//! Post-training weight quantization through burn's quantization API (`burn::tensor::quantization`):
//! every weight matrix (linear layers and embedding tables) becomes a quantized tensor; biases and norms
//! stay f32. The saved record holds the quantized values and their scales, and the ordinary loader
//! (`mmrl_model::predict::load_trained`) restores them quantized, since burn's records keep the dtype.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use burn::tensor::quantization::{
    Calibration, QuantScheme, QuantStore, QuantValue, ScaleDtype, compute_q_params, compute_range,
};
use mmrl_model::MultimodalModel;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::is_quantized;

/// Quantized value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bits {
    /// Symmetric int8.
    Int8,
    /// Symmetric int4 (needs `block`).
    Int4,
}

impl Bits {
    /// The name in configs and variant names.
    pub fn name(self) -> &'static str {
        match self {
            Bits::Int8 => "int8",
            Bits::Int4 => "int4",
        }
    }
}

/// What and how to quantize.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantSpec {
    /// Value type.
    pub bits: Bits,
    /// Values per scale along the last axis (0: one scale per tensor). A tensor whose last axis it does not
    /// divide falls back to one scale per tensor.
    pub block: usize,
}

impl Default for QuantSpec {
    fn default() -> Self {
        Self {
            bits: Bits::Int8,
            block: 0,
        }
    }
}

impl QuantSpec {
    /// Checks the fields; `field` prefixes the names in messages.
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.block > 255 {
            return Err(crate::error::config_err(
                &format!("{field}.block"),
                format!(
                    "must be at most 255 (burn's block sizes are u8), got {}",
                    self.block
                ),
            ));
        }
        if self.bits == Bits::Int4 && self.block == 0 {
            return Err(crate::error::config_err(
                &format!("{field}.block"),
                "int4 needs per-block scales: set block (e.g. 32)",
            ));
        }
        Ok(())
    }

    fn scheme(&self, last_dim: usize) -> QuantScheme {
        let value = match self.bits {
            Bits::Int8 => QuantValue::Q8S,
            Bits::Int4 => QuantValue::Q4S,
        };
        let base = QuantScheme::default()
            .with_value(value)
            .with_store(QuantStore::Native);
        if self.block > 0 && last_dim.is_multiple_of(self.block) {
            base.per_block([self.block as u8], ScaleDtype::F32)
        } else {
            base.per_tensor(ScaleDtype::F32)
        }
    }
}

/// Whether the parameter at `path` is a weight matrix that quantization converts: every rank-2 float
/// parameter except the tiny per-segment type table.
pub fn quantizable(path: &str, rank: usize) -> bool {
    rank == 2 && path != "type_embed"
}

struct Quantize {
    path: Vec<String>,
    spec: QuantSpec,
    count: usize,
}

impl ModuleMapper for Quantize {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        if !quantizable(&path, D) {
            return param;
        }
        self.count += 1;
        let spec = self.spec;
        param.map(|t| {
            let last = t.dims()[D - 1];
            let scheme = spec.scheme(last);
            let range = compute_range(&scheme, &t, &Calibration::MinMax);
            let qparams = compute_q_params(&scheme, range);
            t.quantize(&scheme, qparams)
        })
    }
}

/// Quantizes the weight matrices of `model` (on a plain, non-autodiff device). Quantizing an already
/// quantized model is an error.
pub fn quantize(model: MultimodalModel, spec: QuantSpec) -> Result<MultimodalModel> {
    spec.validate("quantize")?;
    if is_quantized(&model) {
        return Err(Error::Quantize(
            "the model is already quantized; quantize the f32 model it came from".into(),
        ));
    }
    let mut q = Quantize {
        path: Vec::new(),
        spec,
        count: 0,
    };
    let model = model.map(&mut q);
    tracing::info!(tensors = q.count, ?spec, "quantized weight matrices");
    Ok(model)
}

/// A float copy of a quantized model: every quantized parameter dequantized (for f32 compute when the
/// backend lacks a quantized kernel, or for comparing against the original).
pub fn dequantize(model: MultimodalModel) -> MultimodalModel {
    struct Deq;
    impl ModuleMapper for Deq {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if matches!(param.val().dtype(), burn::tensor::DType::QFloat(_)) {
                param.map(|t| t.dequantize())
            } else {
                param
            }
        }
    }
    model.map(&mut Deq)
}
