//! Search spaces: floats (uniform or log), integers (step, log), categoricals and conditional parameters,
//! parsed from TOML/JSON and validated once, with an encoding into the unit cube that every sampler shares.
//!
//! Each parameter owns one coordinate `u` in `[0, 1]`. Floats map linearly (in log space when `log`);
//! integers map over `[low - step/2, high + step/2]` and round to the step on decoding; a categorical with
//! `k` choices takes choice `floor(u * k)`. A conditional parameter is present in decoded parameters only
//! when its parent is present and holds one of the listed values; an inactive coordinate encodes as NaN.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Parameter values of one trial: dotted name -> value. Inactive conditional parameters are absent.
pub type Params = BTreeMap<String, Value>;

/// The kind of a parameter in a space definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// A real number.
    Float,
    /// An integer.
    Int,
    /// One of a list of values.
    Categorical,
}

/// When a parameter is active: its parent holds one of `values`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The parent parameter's name.
    pub parent: String,
    /// Parent values that activate this parameter.
    pub values: Vec<Value>,
}

/// One parameter as written in a config (`{ type = "float", low = 1e-4, high = 1e-2, log = true }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamDef {
    /// float, int or categorical.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Lower bound (float, int).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    /// Upper bound, inclusive (float, int).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    /// Sample on a log scale (float, int).
    #[serde(default)]
    pub log: bool,
    /// Integer step (int; default 1; must be 1 with `log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// The choices (categorical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Value>>,
    /// Active only when another parameter holds some values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

/// A checked parameter domain.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// Real numbers in `[low, high]`.
    Float {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
        /// Log scale.
        log: bool,
    },
    /// Integers `low, low + step, ...` up to `high`.
    Int {
        /// Lower bound.
        low: i64,
        /// Upper bound (the largest value on the step grid not above it).
        high: i64,
        /// Step.
        step: i64,
        /// Log scale.
        log: bool,
    },
    /// One of `choices`.
    Categorical {
        /// The values.
        choices: Vec<Value>,
    },
}

/// A checked parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Dotted name.
    pub name: String,
    /// Its domain.
    pub domain: Domain,
    /// Index (into [`Space::params`]) of the parent and the activating values.
    pub condition: Option<(usize, Vec<Value>)>,
}

/// A checked search space; parameters are ordered so that parents come before their children.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    /// The parameters, parents first.
    pub params: Vec<Param>,
}

fn bad(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("space parameter {name:?}: {msg}"))
}

impl Domain {
    fn from_def(name: &str, def: &ParamDef) -> Result<Self> {
        let bounds = || -> Result<(f64, f64)> {
            let low = def.low.ok_or_else(|| bad(name, "missing `low`"))?;
            let high = def.high.ok_or_else(|| bad(name, "missing `high`"))?;
            if !low.is_finite() || !high.is_finite() {
                return Err(bad(name, "`low` and `high` must be finite numbers"));
            }
            if low > high {
                return Err(bad(name, format!("low {low} > high {high}")));
            }
            if def.log && low <= 0.0 {
                return Err(bad(
                    name,
                    format!("log scale needs a positive low bound, got low {low}"),
                ));
            }
            Ok((low, high))
        };
        match def.kind {
            ParamType::Float => {
                if def.step.is_some() || def.choices.is_some() {
                    return Err(bad(
                        name,
                        "a float takes low, high, log (not step or choices)",
                    ));
                }
                let (low, high) = bounds()?;
                Ok(Domain::Float {
                    low,
                    high,
                    log: def.log,
                })
            }
            ParamType::Int => {
                if def.choices.is_some() {
                    return Err(bad(name, "an int takes low, high, step, log (not choices)"));
                }
                let (low, high) = bounds()?;
                let step = def.step.unwrap_or(1.0);
                let whole = |v: f64| v.fract() == 0.0 && v.abs() < 9.0e15;
                if !whole(low) || !whole(high) {
                    return Err(bad(
                        name,
                        format!("int bounds must be integers, got {low}..{high}"),
                    ));
                }
                if !whole(step) || step < 1.0 {
                    return Err(bad(
                        name,
                        format!("step must be a positive integer, got {step}"),
                    ));
                }
                if def.log && step != 1.0 {
                    return Err(bad(name, "a log-scale int needs step 1"));
                }
                let (low, step) = (low as i64, step as i64);
                let high = low + (high as i64 - low) / step * step;
                Ok(Domain::Int {
                    low,
                    high,
                    step,
                    log: def.log,
                })
            }
            ParamType::Categorical => {
                if def.low.is_some() || def.high.is_some() || def.step.is_some() || def.log {
                    return Err(bad(name, "a categorical takes only choices"));
                }
                let choices = def
                    .choices
                    .clone()
                    .ok_or_else(|| bad(name, "missing `choices`"))?;
                if choices.is_empty() {
                    return Err(bad(name, "`choices` is empty"));
                }
                for (i, c) in choices.iter().enumerate() {
                    if choices[..i].contains(c) {
                        return Err(bad(name, format!("choices: {c} is listed twice")));
                    }
                    if c.is_null() || c.is_array() || c.is_object() {
                        return Err(bad(
                            name,
                            format!("choices: {c} must be a string, number or bool"),
                        ));
                    }
                }
                Ok(Domain::Categorical { choices })
            }
        }
    }

    /// Number of distinct values (`None` for a float with `low < high`).
    pub fn cardinality(&self) -> Option<u64> {
        match self {
            Domain::Float { low, high, .. } => (low == high).then_some(1),
            Domain::Int {
                low, high, step, ..
            } => Some(((high - low) / step + 1) as u64),
            Domain::Categorical { choices } => Some(choices.len() as u64),
        }
    }

    /// The value at unit coordinate `u` (clamped to `[0, 1]`).
    pub fn decode(&self, u: f64) -> Value {
        let u = if u.is_finite() {
            u.clamp(0.0, 1.0)
        } else {
            0.5
        };
        match self {
            Domain::Float { low, high, log } => {
                let x = if *log {
                    (low.ln() + u * (high.ln() - low.ln())).exp()
                } else {
                    low + u * (high - low)
                };
                Value::from(x.clamp(*low, *high))
            }
            Domain::Int {
                low,
                high,
                step,
                log,
            } => {
                let (a, b) = self.int_range();
                let x = if *log {
                    (a.ln() + u * (b.ln() - a.ln())).exp()
                } else {
                    a + u * (b - a)
                };
                let k = ((x - *low as f64) / *step as f64).round() as i64;
                let v = (low + k * step).clamp(*low, *high);
                Value::from(v)
            }
            Domain::Categorical { choices } => {
                let k = choices.len();
                let i = ((u * k as f64) as usize).min(k - 1);
                choices[i].clone()
            }
        }
    }

    /// The continuous range an int coordinate spans: half a step beyond each end.
    fn int_range(&self) -> (f64, f64) {
        match self {
            Domain::Int {
                low, high, step, ..
            } => {
                let half = *step as f64 / 2.0;
                let a = (*low as f64 - half).max(if self.is_log() {
                    *low as f64 * 0.5
                } else {
                    f64::MIN
                });
                (a, *high as f64 + half)
            }
            _ => (0.0, 1.0),
        }
    }

    fn is_log(&self) -> bool {
        matches!(
            self,
            Domain::Float { log: true, .. } | Domain::Int { log: true, .. }
        )
    }

    /// The unit coordinate of `value`, or `None` when the value is not in the domain.
    pub fn encode(&self, value: &Value) -> Option<f64> {
        match self {
            Domain::Float { low, high, log } => {
                let x = value.as_f64()?;
                if high == low {
                    return Some(0.5);
                }
                let u = if *log {
                    (x.ln() - low.ln()) / (high.ln() - low.ln())
                } else {
                    (x - low) / (high - low)
                };
                Some(u.clamp(0.0, 1.0))
            }
            Domain::Int { log, .. } => {
                let x = value.as_f64()?;
                let (a, b) = self.int_range();
                let u = if *log {
                    (x.ln() - a.ln()) / (b.ln() - a.ln())
                } else {
                    (x - a) / (b - a)
                };
                Some(u.clamp(0.0, 1.0))
            }
            Domain::Categorical { choices } => {
                let i = choices.iter().position(|c| same_value(c, value))?;
                Some((i as f64 + 0.5) / choices.len() as f64)
            }
        }
    }

    /// Snaps a unit coordinate to the coordinate of the value it decodes to (the centre of an int step or a
    /// category), so that models see what was actually evaluated.
    pub fn snap(&self, u: f64) -> f64 {
        match self {
            Domain::Float { .. } => u.clamp(0.0, 1.0),
            _ => self.encode(&self.decode(u)).unwrap_or(u),
        }
    }
}

/// Value equality that treats `1` and `1.0` as the same number.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl Space {
    /// Checks a space definition: bounds, types, conditions (the parent exists, is not conditional on the
    /// child, and the activating values are parent values).
    pub fn new(defs: &BTreeMap<String, ParamDef>) -> Result<Self> {
        if defs.is_empty() {
            return Err(Error::Config(
                "the search space is empty: add at least one parameter".into(),
            ));
        }
        let mut domains = BTreeMap::new();
        for (name, def) in defs {
            if name.is_empty() {
                return Err(Error::Config("space: a parameter has an empty name".into()));
            }
            domains.insert(name.clone(), Domain::from_def(name, def)?);
        }
        // Order parents first (a topological sort that also finds cycles).
        let mut order: Vec<String> = Vec::new();
        let mut state: BTreeMap<&str, u8> = BTreeMap::new();
        fn visit<'a>(
            name: &'a str,
            defs: &'a BTreeMap<String, ParamDef>,
            state: &mut BTreeMap<&'a str, u8>,
            order: &mut Vec<String>,
        ) -> Result<()> {
            match state.get(name) {
                Some(2) => return Ok(()),
                Some(1) => return Err(bad(name, "conditions form a cycle")),
                _ => {}
            }
            state.insert(name, 1);
            if let Some(c) = defs.get(name).and_then(|d| d.condition.as_ref()) {
                if !defs.contains_key(&c.parent) {
                    return Err(bad(
                        name,
                        format!("condition parent {:?} is not in the space", c.parent),
                    ));
                }
                visit(&c.parent, defs, state, order)?;
            }
            state.insert(name, 2);
            order.push(name.to_owned());
            Ok(())
        }
        for name in defs.keys() {
            visit(name, defs, &mut state, &mut order)?;
        }
        let index: BTreeMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut params = Vec::with_capacity(order.len());
        for name in &order {
            let def = &defs[name];
            let condition = match &def.condition {
                None => None,
                Some(c) => {
                    if c.values.is_empty() {
                        return Err(bad(name, "condition `values` is empty"));
                    }
                    let parent = &domains[&c.parent];
                    for v in &c.values {
                        if parent.encode(v).is_none() {
                            return Err(bad(
                                name,
                                format!("condition value {v} is not a value of {:?}", c.parent),
                            ));
                        }
                    }
                    Some((index[c.parent.as_str()], c.values.clone()))
                }
            };
            params.push(Param {
                name: name.clone(),
                domain: domains[name].clone(),
                condition,
            });
        }
        Ok(Space { params })
    }

    /// Parses a space from TOML text (a table of `name = { type = ..., ... }`).
    pub fn from_toml(text: &str) -> Result<Self> {
        let defs: BTreeMap<String, ParamDef> = toml::from_str(text)
            .map_err(|e| Error::Config(format!("space: {}", e.to_string().trim_end())))?;
        Self::new(&defs)
    }

    /// Parses a space from JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let defs: BTreeMap<String, ParamDef> =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("space: {e}")))?;
        Self::new(&defs)
    }

    /// A space of `d` uniform floats `x0..x{d-1}` with the given bounds (benchmarks, tests).
    pub fn floats(bounds: &[(f64, f64)]) -> Self {
        Space {
            params: bounds
                .iter()
                .enumerate()
                .map(|(i, &(low, high))| Param {
                    name: format!("x{i}"),
                    domain: Domain::Float {
                        low,
                        high,
                        log: false,
                    },
                    condition: None,
                })
                .collect(),
        }
    }

    /// Number of coordinates (one per parameter).
    pub fn dim(&self) -> usize {
        self.params.len()
    }

    /// The index of a parameter by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }

    /// Decodes a unit-cube point into parameters; inactive conditional parameters are left out.
    pub fn decode(&self, u: &[f64]) -> Params {
        let mut values: Vec<Option<Value>> = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            let active = match &p.condition {
                None => true,
                Some((parent, vals)) => values[*parent]
                    .as_ref()
                    .is_some_and(|pv| vals.iter().any(|v| same_value(v, pv))),
            };
            values.push(active.then(|| p.domain.decode(u.get(i).copied().unwrap_or(0.5))));
        }
        self.params
            .iter()
            .zip(values)
            .filter_map(|(p, v)| v.map(|v| (p.name.clone(), v)))
            .collect()
    }

    /// Encodes parameters into unit coordinates; absent parameters (or values outside the domain) are NaN.
    pub fn encode(&self, params: &Params) -> Vec<f64> {
        self.params
            .iter()
            .map(|p| {
                params
                    .get(&p.name)
                    .and_then(|v| p.domain.encode(v))
                    .unwrap_or(f64::NAN)
            })
            .collect()
    }

    /// Whether parameter `i` is active given the other coordinates of `u`.
    pub fn active(&self, u: &[f64]) -> Vec<bool> {
        let mut active = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let a = match &p.condition {
                None => true,
                Some((parent, vals)) => {
                    active[*parent] && {
                        let pv = self.params[*parent].domain.decode(u[*parent]);
                        vals.iter().any(|v| same_value(v, &pv))
                    }
                }
            };
            active.push(a);
        }
        active
    }

    /// Checks that parameters hold exactly the active parameters with in-domain values.
    pub fn validate_params(&self, params: &Params) -> Result<()> {
        let u = self.encode(params);
        for (name, v) in params {
            let Some(i) = self.index(name) else {
                return Err(bad(name, "not in the space"));
            };
            if u[i].is_nan() {
                return Err(bad(name, format!("value {v} is outside the domain")));
            }
        }
        let filled: Vec<f64> = u
            .iter()
            .map(|x| if x.is_nan() { 0.5 } else { *x })
            .collect();
        for (p, a) in self.params.iter().zip(self.active(&filled)) {
            if a != params.contains_key(&p.name) {
                return Err(bad(
                    &p.name,
                    if a {
                        "active but missing"
                    } else {
                        "present but inactive"
                    },
                ));
            }
        }
        Ok(())
    }
}
