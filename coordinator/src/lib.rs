//! The tpc transaction manager.
//!
//! - `engine`: two-phase commit with presumed abort, as a pure state machine.
//! - `log`: the durable sled log: COMMIT records, the e-mail outbox, END and ABORT notes.
//! - `email`: what the user is told, composed from a COMMIT record.
//! - `mailer`: where e-mail goes (SMTP with lettre, or `.eml` files); `outbox`: the dispatcher that
//!   delivers the outbox through it, at least once.
//! - `peers`: gRPC clients of the two participants.
//! - `saga` and `events`: the strategies two-phase commit is compared with; `runner`: whichever
//!   strategy runs, behind one handle.
//! - `runtime`: executes the engine's commands; `service` the gRPC API; `server` wiring.

pub mod batcher;
mod clients;
mod dialed_smtp;
pub mod email;
pub mod engine;
pub mod events;
pub mod log;
pub mod mailer;
pub mod outbox;
pub mod peers;
mod request;
pub mod runner;
pub mod runtime;
pub mod saga;
pub mod server;
pub mod service;
