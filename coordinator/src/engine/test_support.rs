//! For the engine's tests: a request the log does not know, started in one call.

use tpc_common::Now;

use super::{Command, Engine, Event};

pub(super) trait BeginNew {
    /// Handles `event` (a `Begin`) and, if the engine looks its request id up, the log's answer that
    /// it holds no such id: the commands of both.
    fn begin_new(&mut self, event: Event, now: impl Into<Now>) -> Vec<Command>;
}

impl BeginNew for Engine {
    fn begin_new(&mut self, event: Event, now: impl Into<Now>) -> Vec<Command> {
        let now: Now = now.into();
        let out = self.handle(event, now);
        match out.as_slice() {
            [Command::LookUp { client, .. }] => self.handle(
                Event::LookedUp {
                    client: *client,
                    logged: Ok(None),
                },
                now,
            ),
            _ => out,
        }
    }
}
