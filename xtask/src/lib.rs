//! mmrl's pipeline runner as a library: pipeline files ([`pipeline`]) and their execution ([`runner`]), and the
//! crash test that kills them ([`chaos`]).

pub mod chaos;
pub mod pipeline;
pub mod runner;
