//! Parameters by module path (`encoder.0.attn.query.weight`): read them to the host, write them back
//! (possibly with new shapes), multiply them by masks.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{DType, Tensor, TensorData};
use mmrl_model::MultimodalModel;

use crate::error::{Error, Result};

/// One parameter on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its id (kept, so optimizer state and records line up).
    pub id: ParamId,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Row-major values (dequantized when the parameter is quantized).
    pub values: Vec<f32>,
    /// Whether the parameter is stored quantized.
    pub quantized: bool,
}

impl Entry {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Every float parameter of a model, by path.
pub type State = BTreeMap<String, Entry>;

#[derive(Default)]
struct Collect {
    path: Vec<String>,
    out: State,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let mut t = param.val();
        let quantized = matches!(t.dtype(), DType::QFloat(_));
        if quantized {
            t = t.dequantize();
        }
        let shape = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        self.out.insert(
            self.path.join("."),
            Entry {
                id: param.id,
                shape,
                values,
                quantized,
            },
        );
    }
}

/// Reads every float parameter of `model` to the host.
pub fn state(model: &MultimodalModel) -> State {
    let mut c = Collect::default();
    model.visit(&mut c);
    c.out
}

/// Whether any parameter of `model` is stored quantized.
pub fn is_quantized(model: &MultimodalModel) -> bool {
    struct Any(bool);
    impl ModuleVisitor for Any {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 |= matches!(param.val().dtype(), DType::QFloat(_));
        }
    }
    let mut v = Any(false);
    model.visit(&mut v);
    v.0
}

struct Load<'a> {
    path: Vec<String>,
    state: &'a State,
    errors: Vec<String>,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let Some(e) = self.state.get(&path) else {
            self.errors.push(format!("{path}: missing"));
            return param;
        };
        let target = param.lazy_shape().to_vec();
        if target != e.shape {
            self.errors.push(format!(
                "{path}: shape {:?} where the model has {target:?}",
                e.shape
            ));
            return param;
        }
        let device = param.lazy_device();
        let t = Tensor::<D>::from_data(TensorData::new(e.values.clone(), e.shape.clone()), &device);
        param.transform_for_load(t, e.id)
    }
}

/// Writes `state` into `model` (built with the same shapes); every parameter must be present.
pub fn load_state(model: MultimodalModel, state: &State) -> Result<MultimodalModel> {
    let mut m = Load {
        path: Vec::new(),
        state,
        errors: Vec::new(),
    };
    let model = model.map(&mut m);
    if m.errors.is_empty() {
        Ok(model)
    } else {
        Err(Error::Prune(format!(
            "the pruned parameters do not fit the pruned config: {}",
            m.errors.join("; ")
        )))
    }
}

/// Binary masks (1 keep, 0 pruned) by parameter path, same length as the parameter.
pub type Masks = BTreeMap<String, Vec<f32>>;

struct ApplyMasks<'a> {
    path: Vec<String>,
    masks: &'a Masks,
}

impl ModuleMapper for ApplyMasks<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let Some(mask) = self.masks.get(&path) else {
            return param;
        };
        let value = param.val();
        let dims = value.dims();
        let device = param.lazy_device();
        let mut values = value
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        for (v, m) in values.iter_mut().zip(mask) {
            *v *= m;
        }
        // Rebuilt from host data: the masked value is a fresh leaf with the parameter's autodiff setting.
        let masked = Tensor::<D>::from_data(TensorData::new(values, dims), &device);
        let id = param.id;
        param.transform_for_load(masked, id)
    }
}

/// Multiplies the masked parameters of `model` by their masks (pruned weights become exactly zero).
pub fn apply_masks(model: MultimodalModel, masks: &Masks) -> MultimodalModel {
    model.map(&mut ApplyMasks {
        path: Vec::new(),
        masks,
    })
}
