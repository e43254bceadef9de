//! The terminal's rendering of the results: the header, the floors, one line per finished run, and the
//! final table. Pure functions of the results, so what is printed is what `results.json` says.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::Machine;
use crate::results::{Burst, ConfigRecord, Floors, Results, Run};
use crate::sweep::rss_triple;

/// "1 client", "16 clients".
pub fn clients(n: usize) -> String {
    if n == 1 {
        "1 client".into()
    } else {
        format!("{n} clients")
    }
}

/// A rate with thousands separators, and a decimal only when it is small.
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() {
        return "∞".into();
    }
    if per_s < 10.0 {
        return format!("{per_s:.1}");
    }
    let digits = format!("{:.0}", per_s);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds with about three significant digits.
pub fn ms(ms: f64) -> String {
    match ms {
        m if m < 1.0 => format!("{m:.3}"),
        m if m < 10.0 => format!("{m:.2}"),
        m if m < 100.0 => format!("{m:.1}"),
        m => format!("{m:.0}"),
    }
}

/// A fraction as a percentage, with a decimal below 10%.
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

pub fn header(machine: &Machine, config: &ConfigRecord, out: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "tpc bench {}", config.tpc_version);
    let _ = writeln!(s, "machine: {}", machine.describe());
    let cost = if config.argon2 == "owasp" {
        "owasp (the product's secure default)"
    } else {
        "fast (INSECURE: measures the protocol, not the hashing)"
    };
    let _ = writeln!(s, "argon2:  {cost}");
    let _ = writeln!(
        s,
        "load:    clients {}; {} users; {} s warm-up + {} s measured per run; a fresh cluster per run",
        config
            .clients
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
        config.users,
        config.warmup_s,
        config.duration_s
    );
    if config.request_ids != crate::RequestIds::default().as_str() {
        let _ = writeln!(
            s,
            "         {} request ids (--request-ids)",
            config.request_ids
        );
    }
    let _ = writeln!(s, "output:  {}", out.display());
    s
}

pub fn floors(f: &Floors, cost: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<27} {:>9}/s  → bound {}/s ({} per change)",
        format!("forced writes, {} writers", crate::floors::GROUPED_WRITERS),
        rate(f.forced_writes_per_s),
        rate(f.forced_write_bound_per_s),
        f.forced_writes_per_change
    );
    let _ = writeln!(
        s,
        "  {:<27} {:>9}/s",
        "forced writes, 1 writer",
        rate(f.forced_writes_1_per_s)
    );
    let _ = writeln!(
        s,
        "  {:<27} {:>9}/s  → bound {}/s ({} per change)",
        format!("argon2 hashes ({cost})"),
        rate(f.argon2_hashes_per_s),
        rate(f.argon2_bound_per_s),
        f.hashes_per_change
    );
    let _ = writeln!(
        s,
        "  bare RPC round trips: measured per run ({} per change)",
        f.rpcs_per_change
    );
    s
}

/// "saga, 64 clients", and ", faults all" when the run injected faults.
pub fn run_label(run: &Run) -> String {
    let mut label = if run.log == "sled" {
        format!("{}, {}", run.strategy, clients(run.clients))
    } else {
        format!("{} on {}, {}", run.strategy, run.log, clients(run.clients))
    };
    if run.faults != "none" {
        let _ = write!(label, ", faults {}", run.faults);
    }
    label
}

/// Printed as each run finishes.
pub fn run_line(run: &Run) -> String {
    let mut line = format!(
        "  {}: {} committed/s, p99 {} ms; RPC floor {}/s",
        run_label(run),
        rate(run.committed_per_s),
        ms(run.p99_ms),
        rate(run.rpc_floor_per_s)
    );
    if let Some(a) = &run.anomalies {
        let _ = write!(line, "; {} anomalies", a.total());
    }
    line
}

/// The anomalies of a run in one line: in flight (torn and dirty reads), then at rest.
pub fn anomaly_line(run: &Run) -> Option<String> {
    let a = run.anomalies.as_ref()?;
    let mut s = format!(
        "{}: anomalies: {} torn reads, {} dirty reads; at rest: {} divergent users, {} wrong e-mails, {} missing e-mails, {} duplicate e-mails",
        run_label(run),
        a.torn_reads,
        a.dirty_reads,
        a.divergent_users,
        a.wrong_emails,
        a.missing_emails,
        a.duplicate_emails
    );
    if a.unreadable_users > 0 {
        let _ = write!(s, ", {} unreadable users", a.unreadable_users);
    }
    match &run.reads {
        Some(r) => {
            let _ = write!(
                s,
                " ({} readers: {} observations, {} with the version moved; {} new passwords tried, {} worked in flight; {} failed reads)",
                r.readers, r.observations, r.moved, r.verifies, r.verified_valid, r.errors
            );
        }
        None => s += " (no readers: torn and dirty reads not looked for)",
    }
    if let Some(busy) = &run.not_quiet {
        let _ = write!(s, "; NOT QUIET when counted: {busy}");
    }
    Some(s)
}

/// The faults of a run as they happened: "crash password 4.1–6.3 s, …".
pub fn fault_line(run: &Run) -> Option<String> {
    if run.fault_events.is_empty() {
        return None;
    }
    let events: Vec<String> = run
        .fault_events
        .iter()
        .map(|e| {
            let mut text = format!("{} {:.1}–{:.1} s", e.kind, e.start_s, e.end_s);
            if let Some(error) = &e.error {
                let _ = write!(text, " (failed: {error})");
            }
            text
        })
        .collect();
    Some(format!("{}: faults: {}", run_label(run), events.join(", ")))
}

const COLUMNS: [&str; 13] = [
    "strategy",
    "faults",
    "clients",
    "committed/s",
    "refused/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "CPU ms/change",
    "RSS c/p/h MiB",
    "% RPC bound",
    "% argon2 bound",
];

/// One row per run, as text cells (shared with the HTML table).
pub fn rows(runs: &[Run]) -> Vec<[String; 13]> {
    runs.iter()
        .map(|r| {
            [
                // The decision log, when it is not the default sled.
                if r.log == "sled" {
                    r.strategy.clone()
                } else {
                    format!("{} on {}", r.strategy, r.log)
                },
                r.faults.clone(),
                r.clients.to_string(),
                rate(r.committed_per_s),
                rate(r.refused_per_s),
                ms(r.p50_ms),
                ms(r.p90_ms),
                ms(r.p99_ms),
                ms(r.max_ms),
                r.cpu_s_per_1000.map_or("?".into(), |c| format!("{c:.2}")),
                rss_triple(&r.rss_mib),
                percent(r.of_rpc_bound),
                percent(r.of_argon2_bound),
            ]
        })
        .collect()
}

pub fn columns() -> [&'static str; 13] {
    COLUMNS
}

/// Refusal reasons summed over the runs, most frequent first.
pub fn reasons(runs: &[Run]) -> Vec<(String, u64)> {
    let mut total: BTreeMap<&str, u64> = BTreeMap::new();
    for run in runs {
        for (reason, n) in &run.refused {
            *total.entry(reason).or_default() += n;
        }
    }
    let mut sorted: Vec<(String, u64)> = total.into_iter().map(|(r, n)| (r.into(), n)).collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted
}

pub fn burst_lines(b: &Burst) -> Vec<String> {
    let mut lines = vec![format!("burst: {}", burst_summary(b))];
    let mut refused: Vec<_> = b.refused.iter().collect();
    refused.sort_by(|a, b| b.1.cmp(a.1));
    lines.extend(refused.into_iter().map(|(r, n)| format!("  {n:>8}  {r}")));
    lines
}

/// One sentence: how many were sent, committed and refused, how fast.
pub fn burst_summary(b: &Burst) -> String {
    format!(
        "{} registrations at once: {} committed, {} refused in {:.2} s (p50 {} ms, max {} ms)",
        b.requests,
        b.committed,
        b.requests as u64 - b.committed,
        b.elapsed_s,
        ms(b.p50_ms),
        ms(b.max_ms)
    )
}

/// A run's windows over time, and for long runs the first minute against the last: the figures a soak
/// test is judged by (throughput holding up, p99 in every window, memory flat).
pub fn windows(run: &Run) -> String {
    let mut s = format!("{}, per 10 s window:\n", run_label(run));
    let _ = writeln!(
        s,
        "  {:>6}  {:>11}  {:>8}  {:>14}",
        "from s", "committed/s", "p99 ms", "RSS c/p/h MiB"
    );
    for w in &run.windows {
        let _ = writeln!(
            s,
            "  {:>6.0}  {:>11}  {:>8}  {:>14}",
            w.t_s,
            rate(w.committed_per_s),
            w.p99_ms.map_or("-".into(), ms),
            rss_triple(&w.rss_mib)
        );
    }
    if let [first, .., last] = run.per_minute.as_slice() {
        let _ = writeln!(
            s,
            "  last minute / first minute: {:.2} ({}/s against {}/s)",
            crate::floors::fraction(last.committed_per_s, first.committed_per_s),
            rate(last.committed_per_s),
            rate(first.committed_per_s)
        );
    }
    s
}

/// The final table, the refusal reasons and the burst.
pub fn render(results: &Results) -> String {
    let rows = rows(&results.runs);
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut s = line(&COLUMNS);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    s += &line(&rule.iter().map(String::as_str).collect::<Vec<_>>());
    for row in &rows {
        s += &line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for run in results.runs.iter().filter(|r| r.windows.len() > 1) {
        s += "\n";
        s += &windows(run);
    }
    for run in &results.runs {
        if let Some(d) = &run.mail_delay {
            let _ = writeln!(
                s,
                "\n{}: e-mails on disk after their change began: p50 {}, p99 {}, max {} ms ({} e-mails, {} not yet sent at the end)",
                run_label(run),
                ms(d.p50_ms),
                ms(d.p99_ms),
                ms(d.max_ms),
                d.count,
                d.missing
            );
        }
    }
    for run in &results.runs {
        if let Some(line) = fault_line(run) {
            let _ = writeln!(s, "\n{line}");
        }
    }
    for run in &results.runs {
        if let Some(line) = anomaly_line(run) {
            let _ = writeln!(s, "\n{line}");
        }
    }
    let reasons = reasons(&results.runs);
    if reasons.is_empty() {
        s += "\nrefused: none\n";
    } else {
        s += "\nrefused, by reason (all runs):\n";
        for (reason, n) in reasons {
            let _ = writeln!(s, "  {n:>8}  {reason}");
        }
    }
    if let Some(burst) = &results.burst {
        s += "\n";
        for l in burst_lines(burst) {
            s += &l;
            s += "\n";
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(rate(1234567.4), "1,234,567");
        assert_eq!(rate(999.6), "1,000");
        assert_eq!(rate(512.0), "512");
        assert_eq!(rate(3.26), "3.3");
        assert_eq!(ms(0.4821), "0.482");
        assert_eq!(ms(4.821), "4.82");
        assert_eq!(ms(48.21), "48.2");
        assert_eq!(ms(482.1), "482");
        assert_eq!(percent(0.0271), "2.7%");
        assert_eq!(percent(0.456), "46%");
    }

    #[test]
    fn reasons_add_up_across_runs_most_frequent_first() {
        let mut a = crate::fixtures::run(1);
        a.refused = BTreeMap::from([("conflict".into(), 2), ("deadline".into(), 5)]);
        let mut b = crate::fixtures::run(4);
        b.refused = BTreeMap::from([("conflict".into(), 4)]);
        assert_eq!(
            reasons(&[a, b]),
            [("conflict".to_owned(), 6), ("deadline".to_owned(), 5)]
        );
    }

    #[test]
    fn the_table_has_a_row_per_run_under_aligned_headers() {
        let results = crate::fixtures::results(&[1, 16]);
        let text = render(&results);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0]
                .trim_start()
                .starts_with("strategy  faults  clients")
        );
        assert!(lines[2].trim_start().starts_with("2pc    none        1 "));
        assert!(lines[3].trim_start().starts_with("2pc    none       16 "));
        assert!(
            text.contains("2pc, 16 clients: anomalies: 0 torn reads, 0 dirty reads; at rest: 0 divergent users"),
            "{text}"
        );
        assert!(lines[3].contains("50%"), "{}", lines[3]);
        assert!(text.contains("refused: none"));
        assert!(
            text.contains(
                "e-mails on disk after their change began: p50 40.0, p99 120, max 300 ms"
            ),
            "{text}"
        );
        assert!(text.contains("2pc, 16 clients, per 10 s window:"));
    }

    #[test]
    fn a_run_with_faults_says_which_and_when() {
        let mut run = crate::fixtures::run(64);
        run.strategy = "saga".into();
        run.faults = "all".into();
        run.fault_events = vec![crate::faults::FaultEvent {
            kind: "crash password".into(),
            start_s: 4.04,
            end_s: 6.31,
            error: None,
        }];
        run.reads = Some(crate::readers::Reads {
            readers: 8,
            observations: 1000,
            torn: 12,
            ..Default::default()
        });
        if let Some(a) = run.anomalies.as_mut() {
            a.torn_reads = 12;
            a.dirty_reads = 3;
            a.duplicate_emails = 1;
        }
        assert_eq!(
            fault_line(&run).unwrap(),
            "saga, 64 clients, faults all: faults: crash password 4.0–6.3 s"
        );
        let line = anomaly_line(&run).unwrap();
        assert!(
            line.starts_with("saga, 64 clients, faults all: anomalies: 12 torn reads, 3 dirty reads; at rest: 0 divergent users, 0 wrong e-mails, 0 missing e-mails, 1 duplicate e-mails (8 readers: 1000 observations"),
            "{line}"
        );
        assert!(run_line(&run).contains("16 anomalies"));
    }

    #[test]
    fn long_runs_compare_the_last_minute_with_the_first() {
        let mut run = crate::fixtures::run(4);
        let mut minute = run.windows[0].clone();
        run.per_minute = vec![minute.clone()];
        assert!(!windows(&run).contains("last minute"));
        minute.committed_per_s = 360.0;
        run.per_minute.push(minute);
        assert!(
            windows(&run).contains("last minute / first minute: 0.90 (360/s against 400/s)"),
            "{}",
            windows(&run)
        );
    }
}
