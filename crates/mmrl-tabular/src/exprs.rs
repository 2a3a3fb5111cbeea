//! The polars expressions of each cleaning step, shared by fit, transform and the quality report so that all
//! three see exactly the same values.

use polars::prelude::*;

use crate::recipe::{Encode, FlagType, OutlierAction};
use crate::state::{
    CategoricalState, FIRST_CATEGORY_CODE, MISSING_CODE, MISSING_SUFFIX, NumericState, UNSEEN_CODE,
    one_hot_values,
};

/// The raw input as `Float64`.
pub(crate) fn numeric_raw(name: &str) -> Expr {
    col(name).cast(DataType::Float64)
}

/// Whether a raw numeric value is a declared sentinel (null stays null).
pub(crate) fn is_sentinel(name: &str, sentinels: &[f64]) -> Option<Expr> {
    sentinels
        .iter()
        .map(|s| numeric_raw(name).eq(lit(*s)))
        .reduce(|a, b| a.or(b))
}

/// Whether a raw numeric value is NaN or infinite.
pub(crate) fn is_non_finite(name: &str) -> Expr {
    numeric_raw(name).is_finite().not()
}

/// The value after sentinels, NaN and infinities became missing: what every statistic is fit on.
pub(crate) fn numeric_clean(name: &str, sentinels: &[f64]) -> Expr {
    let bad = match is_sentinel(name, sentinels) {
        Some(s) => s.or(is_non_finite(name)),
        None => is_non_finite(name),
    };
    when(bad)
        .then(lit(NULL).cast(DataType::Float64))
        .otherwise(numeric_raw(name))
}

/// Whether the clean value lies outside the fitted bounds (false for missing values and without a rule).
pub(crate) fn outlier_flag(s: &NumericState) -> Expr {
    match &s.outliers {
        Some(o) => {
            let x = numeric_clean(&s.name, &s.sentinels);
            x.clone()
                .lt(lit(o.lower))
                .or(x.gt(lit(o.upper)))
                .fill_null(lit(false))
        }
        None => lit(false),
    }
}

/// The clean value after the clip rule (drop rules leave values alone: their rows are filtered).
pub(crate) fn numeric_clipped(s: &NumericState) -> Expr {
    let x = numeric_clean(&s.name, &s.sentinels);
    match &s.outliers {
        Some(o) if o.action == OutlierAction::Clip => x.clip(lit(o.lower), lit(o.upper)),
        _ => x,
    }
}

/// The clipped value with missing entries filled.
pub(crate) fn numeric_imputed(s: &NumericState) -> Expr {
    numeric_clipped(s).fill_null(lit(s.fill))
}

/// The model-ready `Float32` value: imputed, centered, scaled, and saturated at the `Float32` range so that huge
/// finite inputs never become infinities.
///
/// Computed as `clip((x - center) / scale, lo', hi')` then filled with `(fill - center) / scale`, where `lo'` and
/// `hi'` are the scaled outlier bounds: the same values as clip, fill, then scale (scaling is increasing), in
/// fewer passes over the column.
pub(crate) fn numeric_output(s: &NumericState) -> Expr {
    let x = numeric_clean(&s.name, &s.sentinels);
    let max = f64::from(f32::MAX);
    let scale = |v: f64| ((v - s.center) / s.scale_by).clamp(-max, max);
    let (lo, hi) = match &s.outliers {
        Some(o) if o.action == OutlierAction::Clip => (scale(o.lower), scale(o.upper)),
        _ => (-max, max),
    };
    let scaled = if s.center == 0.0 && s.scale_by == 1.0 {
        x
    } else {
        (x - lit(s.center)) / lit(s.scale_by)
    };
    let fill = scale(s.fill);
    let out = if (lo..=hi).contains(&fill) {
        // Filling first gives clip null-free input (its fast path); the fill is inside the bounds, so clip keeps it.
        scaled.fill_null(lit(fill)).clip(lit(lo), lit(hi))
    } else {
        scaled.clip(lit(lo), lit(hi)).fill_null(lit(fill))
    };
    out.cast(DataType::Float32)
}

/// A boolean expression as an output flag column.
pub(crate) fn flag(e: Expr, flags: FlagType) -> Expr {
    match flags {
        FlagType::Float32 => e.cast(DataType::Float32),
        FlagType::Boolean => e,
    }
}

/// True (1.0) where the clean value was missing.
pub(crate) fn numeric_indicator(s: &NumericState, flags: FlagType) -> Expr {
    flag(numeric_clean(&s.name, &s.sentinels).is_null(), flags)
}

/// The keep mask of all drop rules: false where any drop-rule column holds an outlier. `None` without drop rules.
pub(crate) fn keep_mask(columns: &[&NumericState]) -> Option<Expr> {
    columns
        .iter()
        .filter(|s| {
            s.outliers
                .as_ref()
                .is_some_and(|o| o.action == OutlierAction::Drop)
        })
        .map(|s| outlier_flag(s).not())
        .reduce(|a, b| a.and(b))
}

/// The raw input as text.
pub(crate) fn categorical_raw(c: &CategoricalState) -> Expr {
    if c.cast_from_numeric {
        col(c.name.as_str()).cast(DataType::String)
    } else {
        col(c.name.as_str())
    }
}

/// Whether a raw categorical value is a declared sentinel.
pub(crate) fn categorical_is_sentinel(c: &CategoricalState) -> Option<Expr> {
    c.sentinels
        .iter()
        .map(|s| categorical_raw(c).eq(lit(s.as_str())))
        .reduce(|a, b| a.or(b))
}

/// The value after sentinels became missing.
pub(crate) fn categorical_clean(c: &CategoricalState) -> Expr {
    match categorical_is_sentinel(c) {
        Some(bad) => when(bad)
            .then(lit(NULL).cast(DataType::String))
            .otherwise(categorical_raw(c)),
        None => categorical_raw(c),
    }
}

/// The clean value with missing entries filled (left missing for `impute = "missing"`).
pub(crate) fn categorical_imputed(c: &CategoricalState) -> Expr {
    match &c.fill {
        Some(fill) => categorical_clean(c).fill_null(lit(fill.as_str())),
        None => categorical_clean(c),
    }
}

/// The ordinal code, with `unseen` as the code of categories absent from the vocabulary.
pub(crate) fn categorical_codes(c: &CategoricalState, unseen: u32) -> Expr {
    let x = categorical_imputed(c);
    let old = Series::new("old".into(), c.categories.as_slice());
    let new = Series::new(
        "new".into(),
        (0..c.categories.len() as u32)
            .map(|i| FIRST_CATEGORY_CODE + i)
            .collect::<Vec<_>>(),
    );
    let mapped = x.clone().replace_strict(
        lit(old).implode(false),
        lit(new).implode(false),
        Some(lit(unseen)),
        Some(DataType::UInt32),
    );
    when(x.is_null()).then(lit(MISSING_CODE)).otherwise(mapped)
}

/// True where the (imputed) value is present but not in the train vocabulary.
pub(crate) fn categorical_is_unseen(c: &CategoricalState) -> Expr {
    categorical_codes(c, UNSEEN_CODE).eq(lit(UNSEEN_CODE))
}

/// Prefix of the temporary code columns [`categorical_outputs`] reads; input columns may not use it.
pub(crate) const CODE_PREFIX: &str = "__mmrl_tabular_code__";

/// The temporary column holding a one-hot column's codes (unseen always [`UNSEEN_CODE`]): the codes are computed
/// once per column and each one-hot column is a cheap integer comparison.
pub(crate) fn code_column(c: &CategoricalState) -> Option<(String, Expr)> {
    (c.encode == Encode::OneHot).then(|| {
        let name = format!("{CODE_PREFIX}{}", c.name);
        (name.clone(), categorical_codes(c, UNSEEN_CODE).alias(name))
    })
}

/// The output expressions of one categorical column (codes or one-hot columns, then the indicator). One-hot
/// columns read the temporary column of [`code_column`].
pub(crate) fn categorical_outputs(c: &CategoricalState, flags: FlagType) -> Vec<Expr> {
    let mut out = Vec::new();
    match code_column(c) {
        None => out.push(categorical_codes(c, c.unseen_code()).alias(c.name.as_str())),
        Some((codes, _)) => {
            let n = c.categories.len();
            for (i, value) in one_hot_values(c).into_iter().enumerate() {
                let code = if i < n {
                    FIRST_CATEGORY_CODE + i as u32
                } else if c.fill.is_none() && i == n {
                    MISSING_CODE
                } else {
                    UNSEEN_CODE
                };
                out.push(
                    flag(col(codes.as_str()).eq(lit(code)), flags)
                        .alias(format!("{}={value}", c.name)),
                );
            }
        }
    }
    if c.missing_indicator {
        out.push(
            flag(categorical_clean(c).is_null(), flags)
                .alias(format!("{}{MISSING_SUFFIX}", c.name)),
        );
    }
    out
}

/// The output expressions of one numeric column (the value, then the indicator).
pub(crate) fn numeric_outputs(s: &NumericState, flags: FlagType) -> Vec<Expr> {
    let mut out = vec![numeric_output(s).alias(s.name.as_str())];
    if s.missing_indicator {
        out.push(numeric_indicator(s, flags).alias(format!("{}{MISSING_SUFFIX}", s.name)));
    }
    out
}
