//! Running the checker, and what it found, readable: a counterexample prints as the message sequence
//! that leads to it (who sent what to whom, what was forced, who crashed).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, HasDiscoveries, Model, Path};

use crate::cluster::Cluster;
use crate::model::{Action, TpcModel};
use crate::network::{Envelope, Node};
use crate::setup::Setup;
use crate::world::short;

/// How a property fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An `always` property with no counterexample in the states explored.
    Held,
    /// An `always` property broken: the trace that breaks it.
    Broken(String),
    /// A `sometimes` property with an example.
    Reached,
    /// A `sometimes` property never seen true in the states explored.
    NotReached,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub states: usize,
    pub unique_states: usize,
    pub max_depth: usize,
    pub elapsed: Duration,
    pub properties: Vec<(&'static str, Verdict)>,
}

impl Report {
    pub fn verdict(&self, name: &str) -> Option<&Verdict> {
        self.properties
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The properties broken.
    pub fn broken(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.properties.iter().filter_map(|(n, v)| match v {
            Verdict::Broken(trace) => Some((*n, trace.as_str())),
            _ => None,
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} states explored, {} unique, depth {}, in {:.1} s",
            self.states,
            self.unique_states,
            self.max_depth,
            self.elapsed.as_secs_f64()
        )?;
        for (name, verdict) in &self.properties {
            let mark = match verdict {
                Verdict::Held => "holds      ",
                Verdict::Broken(_) => "BROKEN     ",
                Verdict::Reached => "reached    ",
                Verdict::NotReached => "NOT REACHED",
            };
            writeln!(f, "  {mark} {name}")?;
        }
        for (name, trace) in self.broken() {
            writeln!(f, "\ncounterexample to \"{name}\":\n{trace}")?;
        }
        Ok(())
    }
}

/// How far and how to search.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    /// States more than this many steps from the start are not explored.
    pub depth: usize,
    pub threads: usize,
    /// Stop at the first broken property (what a test of a planted bug wants).
    pub stop_at_first: bool,
    /// Depth first: little memory however many states, but a counterexample is not the shortest,
    /// and a state first met near the depth limit is not explored again when met closer to the
    /// start. Breadth first (the default) finds the shortest counterexample and explores every state
    /// within the depth, holding a whole level of states in memory.
    pub depth_first: bool,
}

impl Search {
    pub fn to_depth(depth: usize) -> Self {
        Self {
            depth,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop_at_first: false,
            depth_first: false,
        }
    }
}

/// Explores `setup` as `search` says and reports on every property.
pub fn check(setup: Setup, search: Search) -> Report {
    let model = TpcModel::new(setup);
    let started = Instant::now();
    let finish = if search.stop_at_first {
        HasDiscoveries::AnyFailures
    } else {
        HasDiscoveries::AllFailures
    };
    let builder = model
        .clone()
        .checker()
        .threads(search.threads.max(1))
        .target_max_depth(search.depth)
        .finish_when(finish);
    if search.depth_first {
        report(&model, builder.spawn_dfs().join(), started)
    } else {
        report(&model, builder.spawn_bfs().join(), started)
    }
}

fn report(model: &TpcModel, checker: impl Checker<TpcModel>, started: Instant) -> Report {
    let elapsed = started.elapsed();
    let verdicts = model
        .properties()
        .iter()
        .map(|p| {
            let found = checker.discovery(p.name);
            let verdict = match (p.expectation.clone(), found) {
                (Expectation::Sometimes, Some(_)) => Verdict::Reached,
                (Expectation::Sometimes, None) => Verdict::NotReached,
                (_, Some(path)) => Verdict::Broken(trace(model, path)),
                (_, None) => Verdict::Held,
            };
            (p.name, verdict)
        })
        .collect();
    Report {
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        properties: verdicts,
    }
}

/// The steps of `path`, one per line, each followed by what it sent and forced.
pub fn trace(model: &TpcModel, path: Path<Cluster, Action>) -> String {
    let mut out = String::new();
    let mut state = model.init_states().remove(0);
    for (i, action) in path.into_actions().into_iter().enumerate() {
        let line = describe(&state, &action);
        let Some(next) = model.next_state(&state, action) else {
            break;
        };
        let _ = writeln!(out, "{:>3}. {line}", i + 1);
        for e in sent(&state, &next) {
            let _ = writeln!(out, "       sends {}", show(&e));
        }
        for (node, writes) in forced(&state, &next) {
            let _ = writeln!(out, "       {node} forces {writes}");
        }
        for line in happened(&state, &next) {
            let _ = writeln!(out, "       {line}");
        }
        state = next;
    }
    out
}

fn show(e: &Envelope) -> String {
    format!(
        "{} → {}: {}",
        e.from.name(),
        e.to.name(),
        crate::network::show(&e.msg)
    )
}

fn describe(s: &Cluster, action: &Action) -> String {
    match action {
        Action::Send { change } => format!("client asks for change {change}"),
        Action::Deliver(e) if !s.is_up(e.to) => {
            format!("lost ({} is down): {}", e.to.name(), show(e))
        }
        Action::Deliver(e) => format!("delivered {}", show(e)),
        Action::Lose(e) => format!("NETWORK LOSES {}", show(e)),
        Action::Duplicate(e) => format!("NETWORK DUPLICATES {}", show(e)),
        Action::TimeOut { caller, call } => {
            let fault = if s.is_dead(*call) {
                ""
            } else {
                " (the answer was still coming)"
            };
            format!(
                "{} gives up on call {}{fault}",
                caller.name(),
                crate::network::show_call(*call)
            )
        }
        Action::Validate { at, txn, ok } => format!(
            "{}: checks of {} {}",
            at.name(),
            short(txn),
            if *ok { "pass" } else { "fail: vote no" }
        ),
        Action::Flush(node) => format!("{} flushes its log", node.name()),
        Action::Deadline { txn, round, .. } => {
            format!(
                "coordinator: prepare deadline of {} (round {round}) passes",
                short(txn)
            )
        }
        Action::Tick(p) => format!("{}: timer", p.name()),
        Action::Crash(node) => {
            let lost = match node {
                Node::Coordinator => s.coordinator.unforced.len(),
                Node::Password => s.password.unforced.len(),
                Node::History => s.history.unforced.len(),
                _ => 0,
            };
            format!(
                "{} CRASHES (kill -9), losing {lost} unforced write(s)",
                node.name()
            )
        }
        Action::Restart(node) => format!("{} restarts and recovers from its log", node.name()),
        Action::Read => "reader starts reading user0".to_owned(),
    }
}

/// What the step did that the properties look at: clients told, changes dropped, e-mails sent.
fn happened(before: &Cluster, after: &Cluster) -> Vec<String> {
    let (b, a) = (&before.world.ghost, &after.world.ghost);
    let mut out = Vec::new();
    for (change, txn, told) in a.told.difference(&b.told) {
        out.push(format!(
            "client is told {told:?} for change {change} ({})",
            short(txn)
        ));
    }
    for (p, txn) in a.dropped.difference(&b.dropped) {
        out.push(format!("{} drops {} as aborted", p.name(), short(txn)));
    }
    for (txn, n) in &a.emails {
        if b.emails.get(txn) != Some(n) {
            out.push(format!("the outbox sends the e-mail of {}", short(txn)));
        }
    }
    out
}

/// Messages in `after`'s network that were not in `before`'s.
fn sent(before: &Cluster, after: &Cluster) -> Vec<Envelope> {
    let mut old: Vec<&Envelope> = before.world.network.iter().collect();
    let mut new = Vec::new();
    for e in after.world.network.iter() {
        if let Some(i) = old.iter().position(|o| *o == e) {
            old.remove(i);
        } else {
            new.push(e.clone());
        }
    }
    new
}

/// What each process forced in the step.
fn forced(before: &Cluster, after: &Cluster) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if before.coordinator.log != after.coordinator.log && after.coordinator.up {
        let writes: Vec<String> = before
            .coordinator
            .unforced
            .iter()
            .map(crate::coordinator::show)
            .collect();
        out.push(("coordinator", writes.join(", ")));
    }
    for (b, a) in [
        (&before.password, &after.password),
        (&before.history, &after.history),
    ] {
        if b.durable != a.durable && a.up {
            let writes: Vec<String> = b.unforced.iter().map(crate::participant::show).collect();
            out.push((a.role.name(), writes.join(", ")));
        }
    }
    out
}
