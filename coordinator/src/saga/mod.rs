//! The saga strategy (`--strategy saga`): the same change as local transactions with compensations,
//! for the comparison with two-phase commit. `engine` is the orchestrator's pure state machine,
//! `runtime` executes its commands.

mod engine;
mod runtime;

pub use engine::{Config, Engine, Event, StepResult, Unfinished};
pub use runtime::Saga;
