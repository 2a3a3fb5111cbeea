//! Applying a fitted [`TabularState`] to any frame: train, val, test, or new data at inference time.

use polars::prelude::*;

use crate::error::pl;
use crate::exprs;
use crate::fit::{check_kind, column_dtype};
use crate::state::{ColumnState, NumericState, TabularState};
use crate::{Error, Result};

/// Output column of [`dropped`]: the first feature whose drop rule removed the row.
pub const DROP_COLUMN: &str = "drop_column";
/// Output column of [`dropped`]: that feature's value.
pub const DROP_VALUE: &str = "drop_value";

/// Applies `state` to `frame`: the rows that break a drop rule are removed, every column that is not a feature
/// passes through unchanged and first (in input order), then the model-ready feature columns in
/// [`TabularState::output_columns`] order. Nothing is fit here: the same state gives the same output for a row
/// whatever else the frame holds.
///
/// Errors (checked on the schema, before any compute): a feature missing from the frame, a numeric feature that
/// holds text, a passthrough column whose name collides with an output column.
pub fn transform(frame: LazyFrame, state: &TabularState) -> Result<LazyFrame> {
    let mut frame = frame;
    let passthrough = check_input(&mut frame, state)?;
    let mut select: Vec<Expr> = passthrough.iter().map(|n| col(n.as_str())).collect();
    for column in &state.columns {
        match column {
            ColumnState::Numeric(n) => select.extend(exprs::numeric_outputs(n, state.flags)),
            ColumnState::Categorical(c) => {
                select.extend(exprs::categorical_outputs(c, state.flags))
            }
        }
    }
    let frame = match exprs::keep_mask(&numeric(state)) {
        Some(keep) => frame.filter(keep),
        None => frame,
    };
    let codes: Vec<Expr> = state
        .columns
        .iter()
        .filter_map(|c| match c {
            ColumnState::Categorical(c) => exprs::code_column(c).map(|(_, e)| e),
            ColumnState::Numeric(_) => None,
        })
        .collect();
    let frame = if codes.is_empty() {
        frame
    } else {
        frame.with_columns(codes)
    };
    Ok(frame.select(select))
}

/// The rows [`transform`] removes: the passthrough columns, then [`DROP_COLUMN`] (the first feature, in
/// feature order, whose drop rule the row breaks) and [`DROP_VALUE`] (its clean value). Empty without drop rules.
pub fn dropped(frame: LazyFrame, state: &TabularState) -> Result<LazyFrame> {
    let mut frame = frame;
    let passthrough = check_input(&mut frame, state)?;
    let mut select: Vec<Expr> = passthrough.iter().map(|n| col(n.as_str())).collect();
    let drop_rules: Vec<&NumericState> = numeric(state)
        .into_iter()
        .filter(|s| {
            s.outliers
                .as_ref()
                .is_some_and(|o| o.action == crate::recipe::OutlierAction::Drop)
        })
        .collect();
    let Some(keep) = exprs::keep_mask(&drop_rules) else {
        select.push(lit(NULL).cast(DataType::String).alias(DROP_COLUMN));
        select.push(lit(NULL).cast(DataType::Float64).alias(DROP_VALUE));
        return Ok(frame.filter(lit(false)).select(select));
    };
    let mut name_expr: Expr = lit(NULL).cast(DataType::String);
    let mut value_expr: Expr = lit(NULL).cast(DataType::Float64);
    // Built from the last rule to the first, so the first breaking rule wins.
    for s in drop_rules.iter().rev() {
        let flag = exprs::outlier_flag(s);
        name_expr = when(flag.clone())
            .then(lit(s.name.as_str()))
            .otherwise(name_expr);
        value_expr = when(flag)
            .then(exprs::numeric_clean(&s.name, &s.sentinels))
            .otherwise(value_expr);
    }
    select.push(name_expr.alias(DROP_COLUMN));
    select.push(value_expr.alias(DROP_VALUE));
    Ok(frame.filter(keep.not()).select(select))
}

fn numeric(state: &TabularState) -> Vec<&NumericState> {
    state
        .columns
        .iter()
        .filter_map(|c| match c {
            ColumnState::Numeric(n) => Some(n),
            ColumnState::Categorical(_) => None,
        })
        .collect()
}

/// Checks the frame against the state; returns the passthrough column names.
pub(crate) fn check_input(frame: &mut LazyFrame, state: &TabularState) -> Result<Vec<PlSmallStr>> {
    let schema = frame
        .collect_schema()
        .map_err(pl("reading the frame's schema"))?;
    for column in &state.columns {
        let dtype = column_dtype(&schema, column.name(), "state.columns")?;
        match column {
            ColumnState::Numeric(n) => {
                check_kind(&n.name, dtype, mmrl_artifact::sample::FeatureKind::Numeric)?;
            }
            ColumnState::Categorical(c) => {
                let cast = check_kind(
                    &c.name,
                    dtype,
                    mmrl_artifact::sample::FeatureKind::Categorical,
                )?;
                if cast != c.cast_from_numeric {
                    return Err(Error::Data(format!(
                        "column {:?} was fit as {} but is {dtype} here",
                        c.name,
                        if c.cast_from_numeric {
                            "numbers compared as text"
                        } else {
                            "text"
                        }
                    )));
                }
            }
        }
    }
    if let Some(reserved) = schema
        .iter_names()
        .find(|n| n.starts_with(exprs::CODE_PREFIX))
    {
        return Err(Error::Data(format!(
            "input column {reserved:?} uses the reserved prefix {:?}",
            exprs::CODE_PREFIX
        )));
    }
    let features: Vec<&str> = state.columns.iter().map(ColumnState::name).collect();
    let passthrough: Vec<PlSmallStr> = schema
        .iter_names()
        .filter(|n| !features.contains(&n.as_str()))
        .cloned()
        .collect();
    let outputs = state.output_columns();
    if let Some(clash) = passthrough
        .iter()
        .find(|p| outputs.iter().any(|(o, _)| o == p.as_str()))
    {
        return Err(Error::Data(format!(
            "input column {clash:?} has the name of an output column; rename it or drop it before transform"
        )));
    }
    Ok(passthrough)
}
