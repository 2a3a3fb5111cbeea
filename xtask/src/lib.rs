//! mmrl's pipeline runner as a library: pipeline files ([`pipeline`]) and their execution ([`runner`]).

pub mod pipeline;
pub mod runner;
