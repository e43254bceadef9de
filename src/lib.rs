//! Library side of the `tpc` package: the [`harness`] that runs a tpc cluster as real OS processes,
//! with a real SMTP server, for the end-to-end and fault-injection tests (and `tpc chaos`).

pub mod harness;
