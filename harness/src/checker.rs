//! Checks a chaos run against the invariants of DESIGN §6, after the faults healed and the cluster
//! went quiet. Pure: it takes what was observed and returns the violations, each with the operations
//! involved, so it is tested here on made-up histories (including broken ones).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use tpc_common::Strategy;

use super::history::{Call, Completion, Op};

/// The coordinator's view of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TxnState {
    Active,
    Committing,
    Committed,
    Aborted,
    /// Saga: undoing the steps done (ends as `Aborted`).
    Compensating,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoordinatorTxn {
    pub txn: String,
    pub request_id: String,
    pub user: String,
    pub state: TxnState,
    /// Why it did not (fully) take effect: for events, the consumers' refusals ("history refused: …").
    #[serde(default)]
    pub reason: String,
    /// Why its e-mail can never be sent, if it cannot.
    #[serde(default)]
    pub email_error: String,
}

/// A user as the participants show it at rest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalUser {
    /// The password participant's current version (None: unknown user).
    pub version: Option<String>,
    /// The history participant's entries, newest first.
    pub history: Vec<String>,
    /// Why the user could not be read at rest (a participant still in doubt about it), if it could not.
    pub unreadable: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParticipantState {
    pub name: String,
    pub in_doubt: Vec<String>,
    pub locked_users: u32,
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    pub ops: Vec<Op>,
    pub users: BTreeMap<String, FinalUser>,
    pub transactions: Vec<CoordinatorTxn>,
    pub participants: Vec<ParticipantState>,
    /// `Message-ID`s the mail server received, duplicates included.
    pub mail_ids: Vec<String>,
    /// Files (or mails) where a plaintext password was found.
    pub plaintext: Vec<String>,
    /// How many recent passwords the history participant refuses.
    pub history_depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    /// Indexes of the operations involved in the history.
    pub ops: Vec<usize>,
    /// The anomaly this is where a strategy allows it (a saga, events), e.g. `torn_reads`; `None` for
    /// what no strategy may do (lose acknowledged data, stay stuck, leak a password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<&'static str>,
}

fn violation(invariant: &'static str, detail: String, ops: Vec<usize>) -> Violation {
    Violation {
        invariant,
        detail,
        ops,
        anomaly: None,
    }
}

impl Violation {
    fn counted_as(mut self, anomaly: &'static str) -> Self {
        self.anomaly = Some(anomaly);
        self
    }

    /// Counted as `anomaly` only where `explained` (the coordinator recorded why); unexplained, it is
    /// a loss whatever the strategy.
    fn counted_as_if(self, anomaly: &'static str, explained: bool) -> Self {
        if explained {
            self.counted_as(anomaly)
        } else {
            self
        }
    }
}

/// What the checker concluded for one strategy: the violations, and the anomalies the strategy
/// allows, counted by kind instead.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    pub anomalies: BTreeMap<&'static str, usize>,
    /// The first few of each kind, with the operations involved, to show what happened.
    pub examples: Vec<Violation>,
}

/// How many examples of each anomaly a verdict keeps.
const EXAMPLES: usize = 3;

/// The anomalies each strategy allows by design (DESIGN §5). Two-phase commit allows none. A saga lets
/// readers see a step before the next (torn reads) and a step that is later compensated (dirty reads),
/// but must be consistent at rest once every compensation is done. Events allow everything short of
/// losing a published change or getting stuck: divergence at rest, changes accepted that never took
/// effect, e-mails for them.
pub fn allowed(strategy: Strategy) -> &'static [&'static str] {
    match strategy {
        Strategy::TwoPc => &[],
        Strategy::Saga => &["torn_reads", "dirty_reads"],
        Strategy::Events => &[
            "torn_reads",
            "dirty_reads",
            "divergent_users",
            "not_in_effect",
            "broken_chains",
            "wrong_emails",
            "missing_emails",
        ],
    }
}

/// [`check`], with what `strategy` allows counted instead of failing.
pub fn judge(o: &Observed, strategy: Strategy) -> Verdict {
    let mut verdict = Verdict::default();
    for v in check(o) {
        match v.anomaly {
            Some(kind) if allowed(strategy).contains(&kind) => {
                let seen = verdict.anomalies.entry(kind).or_default();
                *seen += 1;
                if *seen <= EXAMPLES {
                    verdict.examples.push(v);
                }
            }
            _ => verdict.violations.push(v),
        }
    }
    verdict
}

/// The `Message-ID` tpc gives a transaction's e-mail.
pub fn message_id(txn: &str) -> String {
    format!("<{txn}@tpc.local>")
}

pub fn check(o: &Observed) -> Vec<Violation> {
    let mut out = Vec::new();
    let committed: HashSet<&str> = o
        .transactions
        .iter()
        .filter(|t| matches!(t.state, TxnState::Committing | TxnState::Committed))
        .map(|t| t.txn.as_str())
        .collect();
    let txn_by_id: HashMap<&str, &CoordinatorTxn> =
        o.transactions.iter().map(|t| (t.txn.as_str(), t)).collect();
    // A change not in effect is a strategy's anomaly only when a consumer is on record refusing it;
    // an e-mail missing, only when the coordinator is on record giving up on it.
    let refused = |txn: &str| {
        txn_by_id
            .get(txn)
            .is_some_and(|t| t.reason.contains("refused"))
    };
    let mail_given_up = |txn: &str| {
        txn_by_id
            .get(txn)
            .is_some_and(|t| !t.email_error.is_empty())
    };
    let op_by_request: HashMap<&str, &Op> = o
        .ops
        .iter()
        .map(|op| (op.request_id.as_str(), op))
        .collect();
    let op_of_txn = |txn: &str| -> Option<&Op> {
        txn_by_id
            .get(txn)
            .and_then(|t| op_by_request.get(t.request_id.as_str()).copied())
    };
    let in_any_history: HashSet<&str> = o
        .users
        .values()
        .flat_map(|u| u.history.iter().map(String::as_str))
        .collect();

    // 1 + 3 at rest: agreement and atomic visibility of the final state.
    for (user, state) in &o.users {
        if let Some(why) = &state.unreadable {
            out.push(violation(
                "termination",
                format!("{user} cannot be read at rest: {why}"),
                vec![],
            ));
            continue;
        }
        let ops_of = |txns: &[&str]| {
            txns.iter()
                .filter_map(|t| op_of_txn(t))
                .map(|op| op.index)
                .collect()
        };
        if state.version.as_deref() != state.history.first().map(String::as_str) {
            out.push(
                violation(
                    "atomic visibility",
                    format!(
                        "{user}: password version {:?} but newest history entry {:?}",
                        state.version,
                        state.history.first()
                    ),
                    ops_of(
                        &state
                            .history
                            .iter()
                            .take(1)
                            .map(String::as_str)
                            .collect::<Vec<_>>(),
                    ),
                )
                .counted_as("divergent_users"),
            );
        }
        for txn in &state.history {
            if !committed.contains(txn.as_str()) {
                out.push(violation(
                    "agreement",
                    format!("{user}: {txn} applied by the history participant but not committed by the coordinator"),
                    ops_of(&[txn.as_str()]),
                ));
            }
        }
    }
    for t in o
        .transactions
        .iter()
        .filter(|t| committed.contains(t.txn.as_str()))
    {
        let applied = o
            .users
            .get(&t.user)
            .is_some_and(|u| u.history.contains(&t.txn));
        let unreadable = o.users.get(&t.user).is_some_and(|u| u.unreadable.is_some());
        if !applied && !unreadable {
            out.push(
                violation(
                    "agreement",
                    format!(
                        "{}: {} committed by the coordinator but missing at the participants",
                        t.user, t.txn
                    ),
                    op_of_txn(&t.txn)
                        .map(|op| vec![op.index])
                        .unwrap_or_default(),
                )
                .counted_as_if("not_in_effect", refused(&t.txn)),
            );
        }
    }

    // 2: validity. Committed changes of a user form one chain of passwords: each update knew the
    // password the previous one set, and never reused one of the last `depth`.
    for (user, state) in &o.users {
        let mut recent: Vec<usize> = Vec::new();
        for txn in state.history.iter().rev() {
            let Some(op) = op_of_txn(txn) else {
                out.push(violation(
                    "validity",
                    format!("{user}: {txn} committed, but no client asked for it"),
                    vec![],
                ));
                continue;
            };
            match (&op.call, recent.last()) {
                (Call::Register { password }, None) => recent.push(*password),
                (Call::Update { current, new }, Some(last)) if current == last => {
                    let window = recent.len().saturating_sub(o.history_depth.max(1));
                    if recent[window..].contains(new) {
                        out.push(violation(
                            "validity",
                            format!(
                                "{user}: {txn} reused password #{new} within the last {}",
                                o.history_depth
                            ),
                            vec![op.index],
                        ));
                    }
                    recent.push(*new);
                }
                (call, last) => {
                    out.push(
                        violation(
                            "validity",
                            format!("{user}: {txn} ({call:?}) committed after password {last:?}"),
                            vec![op.index],
                        )
                        .counted_as("broken_chains"),
                    );
                    // The history participant has it among its recent passwords all the same.
                    match call {
                        Call::Register { password } => recent.push(*password),
                        Call::Update { new, .. } => recent.push(*new),
                        Call::Read => {}
                    }
                }
            }
        }
    }

    // A request id runs at most one transaction to commit.
    let mut commits_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for t in o
        .transactions
        .iter()
        .filter(|t| committed.contains(t.txn.as_str()))
    {
        commits_of
            .entry(t.request_id.as_str())
            .or_default()
            .push(t.txn.as_str());
    }
    for (request_id, txns) in commits_of.iter().filter(|(_, txns)| txns.len() > 1) {
        out.push(violation(
            "validity",
            format!(
                "request {request_id} committed {} times: {txns:?}",
                txns.len()
            ),
            op_by_request
                .get(request_id)
                .map(|op| vec![op.index])
                .unwrap_or_default(),
        ));
    }

    // The client's view: every answer belongs to its request; durability, no effect of aborts,
    // all-or-nothing for unknown outcomes; every read saw only committed changes, atomically.
    for op in &o.ops {
        if let Some(Completion::Ok { txn } | Completion::Fail { txn, .. }) = &op.completion
            && let Some(t) = txn_by_id.get(txn.as_str())
            && (t.request_id != op.request_id || t.user != op.user)
        {
            let mut involved = vec![op.index];
            involved.extend(
                op_by_request
                    .get(t.request_id.as_str())
                    .map(|other| other.index),
            );
            out.push(violation(
                "validity",
                format!(
                    "{} ({}) was answered with {txn}, which belongs to request {} of {}",
                    op.request_id, op.user, t.request_id, t.user
                ),
                involved,
            ));
        }
        let coordinator = || {
            o.transactions
                .iter()
                .filter(|t| t.request_id == op.request_id)
        };
        match &op.completion {
            Some(Completion::Ok { txn }) => {
                if !committed.contains(txn.as_str()) {
                    out.push(violation(
                        "durability",
                        format!(
                            "{}: {txn} was COMMITTED to the client but the coordinator lost it",
                            op.user
                        ),
                        vec![op.index],
                    ));
                } else if !in_any_history.contains(txn.as_str()) {
                    // Committed, yet not applied: events' consumers may refuse what was accepted.
                    out.push(
                        violation(
                            "durability",
                            format!(
                                "{}: {txn} was COMMITTED to the client but is not in effect",
                                op.user
                            ),
                            vec![op.index],
                        )
                        .counted_as_if("not_in_effect", refused(txn)),
                    );
                }
            }
            Some(Completion::Fail { txn, reason }) => {
                if committed.contains(txn.as_str()) || in_any_history.contains(txn.as_str()) {
                    out.push(violation(
                        "no effect of abort",
                        format!(
                            "{}: {txn} was ABORTED ({reason}) to the client but took effect",
                            op.user
                        ),
                        vec![op.index],
                    ));
                }
            }
            Some(Completion::Info { .. }) => {
                for t in coordinator() {
                    let is_committed = committed.contains(t.txn.as_str());
                    if is_committed != in_any_history.contains(t.txn.as_str()) {
                        out.push(
                            violation(
                                "all-or-nothing",
                                format!("{}: unknown outcome {} is half done", op.user, t.txn),
                                vec![op.index],
                            )
                            .counted_as_if("not_in_effect", refused(&t.txn)),
                        );
                    }
                }
            }
            Some(Completion::Read {
                first_version,
                newest_history,
                second_version,
            }) => {
                for seen in [first_version, newest_history, second_version] {
                    if !seen.is_empty() && !committed.contains(seen.as_str()) {
                        out.push(
                            violation(
                                "no effect of abort",
                                format!("{}: a read saw {seen}, which never committed", op.user),
                                vec![op.index],
                            )
                            .counted_as("dirty_reads"),
                        );
                    }
                }
                if first_version == second_version && newest_history != first_version {
                    out.push(violation(
                        "atomic visibility",
                        format!(
                            "{}: read version {first_version} twice but newest history {newest_history}",
                            op.user
                        ),
                        vec![op.index],
                    ).counted_as("torn_reads"));
                }
            }
            Some(Completion::ReadFailed { .. }) | None => {}
        }
    }

    // 6: termination.
    for p in &o.participants {
        if !p.in_doubt.is_empty() || p.locked_users > 0 {
            out.push(violation(
                "termination",
                format!(
                    "{} still holds {} in-doubt transactions ({:?}) and {} locked users",
                    p.name,
                    p.in_doubt.len(),
                    p.in_doubt,
                    p.locked_users
                ),
                vec![],
            ));
        }
    }
    for t in &o.transactions {
        if matches!(
            t.state,
            TxnState::Active | TxnState::Committing | TxnState::Compensating
        ) {
            out.push(violation(
                "termination",
                format!("coordinator still has {} in state {:?}", t.txn, t.state),
                op_by_request
                    .get(t.request_id.as_str())
                    .map(|op| vec![op.index])
                    .unwrap_or_default(),
            ));
        }
    }

    // 7: one e-mail per committed transaction, none for others.
    let received: HashSet<&str> = o.mail_ids.iter().map(String::as_str).collect();
    for txn in &committed {
        if !received.contains(message_id(txn).as_str()) {
            out.push(
                violation(
                    "e-mail",
                    format!("no e-mail for committed {txn}"),
                    op_of_txn(txn).map(|op| vec![op.index]).unwrap_or_default(),
                )
                .counted_as_if("missing_emails", mail_given_up(txn)),
            );
        }
    }
    let expected: HashSet<String> = committed.iter().map(|t| message_id(t)).collect();
    for id in &received {
        if !expected.contains(*id) {
            out.push(
                violation(
                    "e-mail",
                    format!("e-mail {id} for a transaction that did not commit"),
                    vec![],
                )
                .counted_as("wrong_emails"),
            );
        }
    }

    // An e-mail announcing a change that is not in effect (committed, yet applied nowhere).
    for id in &received {
        let Some(txn) = id
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix("@tpc.local>"))
        else {
            continue;
        };
        if committed.contains(txn) && !in_any_history.contains(txn) {
            out.push(
                violation(
                    "e-mail",
                    format!("e-mail {id} for a change that is not in effect"),
                    op_of_txn(txn).map(|op| vec![op.index]).unwrap_or_default(),
                )
                .counted_as("wrong_emails"),
            );
        }
    }

    // 8: secrecy.
    for place in &o.plaintext {
        out.push(violation(
            "secrecy",
            format!("plaintext password in {place}"),
            vec![],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: usize, user: &str, call: Call, completion: Completion) -> Op {
        Op {
            index,
            client: 0,
            user: user.into(),
            call,
            request_id: format!("r{index}"),
            invoked_ms: 0,
            completed_ms: Some(1),
            completion: Some(completion),
        }
    }

    fn txn(id: &str, request: usize, state: TxnState) -> CoordinatorTxn {
        CoordinatorTxn {
            txn: id.into(),
            request_id: format!("r{request}"),
            user: "u".into(),
            state,
            reason: String::new(),
            email_error: String::new(),
        }
    }

    /// A clean run: register, update, an aborted update, an unknown-outcome update that committed, a read.
    fn clean() -> Observed {
        Observed {
            ops: vec![
                op(
                    0,
                    "u",
                    Call::Register { password: 0 },
                    Completion::Ok { txn: "t1".into() },
                ),
                op(
                    1,
                    "u",
                    Call::Update { current: 0, new: 1 },
                    Completion::Ok { txn: "t2".into() },
                ),
                op(
                    2,
                    "u",
                    Call::Update { current: 1, new: 0 },
                    Completion::Fail {
                        txn: "t3".into(),
                        reason: "password was used recently".into(),
                    },
                ),
                op(
                    3,
                    "u",
                    Call::Update { current: 1, new: 2 },
                    Completion::Info {
                        error: "reset".into(),
                    },
                ),
                op(
                    4,
                    "u",
                    Call::Read,
                    Completion::Read {
                        first_version: "t2".into(),
                        newest_history: "t2".into(),
                        second_version: "t2".into(),
                    },
                ),
            ],
            users: BTreeMap::from([(
                "u".into(),
                FinalUser {
                    version: Some("t4".into()),
                    history: vec!["t4".into(), "t2".into(), "t1".into()],
                    unreadable: None,
                },
            )]),
            transactions: vec![
                txn("t1", 0, TxnState::Committed),
                txn("t2", 1, TxnState::Committed),
                txn("t3", 2, TxnState::Aborted),
                txn("t4", 3, TxnState::Committed),
            ],
            participants: vec![ParticipantState {
                name: "password".into(),
                in_doubt: vec![],
                locked_users: 0,
            }],
            mail_ids: ["t1", "t2", "t4", "t4"]
                .iter()
                .map(|t| message_id(t))
                .collect(),
            plaintext: vec![],
            history_depth: 5,
        }
    }

    fn invariants(o: &Observed) -> Vec<&'static str> {
        check(o).into_iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_clean_run_has_no_violations() {
        assert_eq!(check(&clean()), vec![]);
    }

    #[test]
    fn detects_a_half_applied_transaction() {
        let mut o = clean();
        o.users.get_mut("u").unwrap().version = Some("t2".into());
        assert!(invariants(&o).contains(&"atomic visibility"));
    }

    #[test]
    fn detects_a_lost_commit() {
        let mut o = clean();
        o.users.get_mut("u").unwrap().history.retain(|t| t != "t2");
        let found = invariants(&o);
        assert!(
            found.contains(&"durability") && found.contains(&"agreement"),
            "{found:?}"
        );
    }

    #[test]
    fn detects_an_abort_that_took_effect() {
        let mut o = clean();
        o.users.get_mut("u").unwrap().history.insert(0, "t3".into());
        o.users.get_mut("u").unwrap().version = Some("t3".into());
        let found = invariants(&o);
        assert!(
            found.contains(&"no effect of abort") && found.contains(&"agreement"),
            "{found:?}"
        );
    }

    #[test]
    fn detects_a_torn_read() {
        let mut o = clean();
        o.ops[4].completion = Some(Completion::Read {
            first_version: "t2".into(),
            newest_history: "t1".into(),
            second_version: "t2".into(),
        });
        assert_eq!(check(&o)[0].ops, [4]);
    }

    #[test]
    fn each_strategy_counts_what_it_allows_and_fails_on_the_rest() {
        let mut torn = clean();
        torn.ops[4].completion = Some(Completion::Read {
            first_version: "t2".into(),
            newest_history: "t1".into(),
            second_version: "t2".into(),
        });
        assert_eq!(judge(&torn, Strategy::TwoPc).violations.len(), 1);
        let saga = judge(&torn, Strategy::Saga);
        assert!(saga.violations.is_empty(), "{saga:?}");
        assert_eq!(saga.anomalies, BTreeMap::from([("torn_reads", 1)]));

        // Divergent at rest: a saga left half-done fails; events count it.
        let mut divergent = clean();
        divergent.users.get_mut("u").unwrap().version = Some("t2".into());
        assert!(!judge(&divergent, Strategy::Saga).violations.is_empty());
        let events = judge(&divergent, Strategy::Events);
        assert!(events.violations.is_empty(), "{events:?}");
        assert_eq!(events.anomalies["divergent_users"], 1);

        // A published change the coordinator lost is lost data, whatever the strategy.
        let mut lost = clean();
        lost.transactions.retain(|t| t.txn != "t2");
        let verdict = judge(&lost, Strategy::Events);
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.invariant == "durability"),
            "{verdict:?}"
        );

        // Accepted but in effect nowhere: an anomaly of events only where a consumer refused it.
        let mut unapplied = clean();
        unapplied
            .users
            .get_mut("u")
            .unwrap()
            .history
            .retain(|t| t != "t2");
        let lost = judge(&unapplied, Strategy::Events);
        assert!(
            lost.violations.iter().any(|v| v.invariant == "durability"),
            "{lost:?}"
        );
        unapplied.transactions[1].reason = "history refused: password was used recently".into();
        let refused = judge(&unapplied, Strategy::Events);
        assert!(
            !refused
                .violations
                .iter()
                .any(|v| v.invariant == "durability"),
            "{refused:?}"
        );
        assert!(refused.anomalies["not_in_effect"] >= 1);

        // Stuck is stuck.
        let mut stuck = clean();
        stuck.participants[0].locked_users = 1;
        assert!(!judge(&stuck, Strategy::Events).violations.is_empty());
    }

    #[test]
    fn detects_a_read_of_an_aborted_change() {
        let mut o = clean();
        o.ops[4].completion = Some(Completion::Read {
            first_version: "t3".into(),
            newest_history: "t3".into(),
            second_version: "t3".into(),
        });
        assert_eq!(invariants(&o), ["no effect of abort"; 3]);
    }

    #[test]
    fn detects_an_answer_meant_for_another_request() {
        let mut o = clean();
        o.ops[1].completion = Some(Completion::Ok { txn: "t1".into() });
        let found = check(&o);
        assert!(
            found
                .iter()
                .any(|v| v.invariant == "validity" && v.ops == [1, 0]),
            "{found:?}"
        );
    }

    #[test]
    fn detects_a_request_that_ran_twice() {
        let mut o = clean();
        o.transactions.push(txn("t5", 1, TxnState::Committed));
        o.mail_ids.push(message_id("t5"));
        let u = o.users.get_mut("u").unwrap();
        u.history.insert(0, "t5".into());
        u.version = Some("t5".into());
        let found = check(&o);
        assert!(
            found.iter().any(|v| v.detail.contains("committed 2 times")),
            "{found:?}"
        );
    }

    #[test]
    fn an_unreadable_user_is_a_termination_violation() {
        let mut o = clean();
        o.users.get_mut("u").unwrap().unreadable = Some("Unavailable".into());
        assert_eq!(invariants(&o), ["termination"]);
    }

    #[test]
    fn detects_a_broken_password_chain() {
        let mut o = clean();
        o.ops[3].call = Call::Update { current: 0, new: 2 };
        assert!(invariants(&o).contains(&"validity"));
        let mut o = clean();
        o.ops[3].call = Call::Update { current: 1, new: 0 };
        assert!(
            invariants(&o).contains(&"validity"),
            "reuse within the window"
        );
    }

    #[test]
    fn detects_leftovers_missing_and_stray_mail_and_plaintext() {
        let mut o = clean();
        o.participants[0].in_doubt.push("t9".into());
        o.transactions.push(txn("t9", 9, TxnState::Committing));
        o.mail_ids.retain(|m| *m != message_id("t2"));
        o.mail_ids.push(message_id("t3"));
        o.plaintext.push("data/password/db".into());
        let found = invariants(&o);
        for expected in ["termination", "e-mail", "secrecy"] {
            assert!(found.contains(&expected), "{expected} in {found:?}");
        }
        assert_eq!(
            found.iter().filter(|i| **i == "e-mail").count(),
            3,
            "missing t2, stray t3, missing t9"
        );
    }
}
