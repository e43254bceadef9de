//! Protocol bugs planted on purpose, to prove that the model checker (`tpc-check`) and the simulator
//! catch the mistakes they exist to catch. A checker that has never been seen failing proves nothing.
//!
//! Compiled only with the `planted-bugs` feature, which only the checker's tests turn on: a release
//! build of `tpc` has no such switch.

/// One deliberate mistake, set in an engine's `Config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// The coordinator tells the client "committed" as soon as it decides, before the COMMIT record is
    /// forced: a crash in between loses a commit the client was told about.
    ReplyBeforeCommitForced,
    /// A participant votes yes as soon as its checks pass, before the PREPARED record is forced: a
    /// crash in between forgets a promise the coordinator counted on.
    VoteBeforePreparedForced,
    /// The coordinator answers `QueryDecision` with "aborted" while it still collects votes: an
    /// in-doubt participant aborts a transaction that then commits.
    AbortedWhileVoting,
}
