//! `report.html`: one self-contained page (inline CSS and SVG, no scripts, nothing fetched) that shows
//! a run to someone who was not there: the machine, the floors, the table, the charts, the refusals.

use std::fmt::Write;

use crate::charts;
use crate::results::{Results, Run};
use crate::table::{self, ms, percent, rate};

const STYLE: &str = r#"
:root { --ink: #1f2328; --muted: #59636e; --rule: #d8dee4; --head: #f3f5f7; --accent: #4e79a7; }
* { box-sizing: border-box; }
body { margin: 0; padding: 28px 32px 48px; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--rule); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0; }
.sub, .note { color: var(--muted); }
.note { font-size: 13px; }
.warn { color: #9a3412; font-weight: 600; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 14px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--rule); text-align: right; white-space: nowrap; }
th { background: var(--head); font-weight: 600; white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; white-space: normal; }
tbody tr:nth-child(even) { background: #fafbfc; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 16px; }
.charts figure { margin: 0; border: 1px solid var(--rule); border-radius: 6px; padding: 6px; background: #fff; }
.charts svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
"#;

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writing to a String cannot fail; `w!` drops the `fmt::Result` that says so.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => { let _ = write!($out, $($arg)*); };
}

pub fn html(results: &Results) -> String {
    let mut out = String::new();
    w!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>tpc bench: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(&results.machine.describe())
    );
    setup(&mut out, results);
    floors(&mut out, results);
    summary_table(&mut out, results);
    anomalies(&mut out, results);
    charts_section(&mut out, results);
    refusals(&mut out, results);
    windows(&mut out, results);
    w!(
        out,
        "<p class=\"note\">Every figure on this page is in <code>results.json</code> beside it.</p>\n</main>\n</body>\n</html>\n"
    );
    out
}

fn setup(out: &mut String, r: &Results) {
    let c = &r.config;
    w!(out, "<h1>tpc bench</h1>\n");
    w!(
        out,
        "<p class=\"sub\">Two-phase commit of password changes, closed-loop clients on loopback, a fresh cluster per run.</p>\n"
    );
    w!(out, "<h2>Setup</h2>\n<dl>\n");
    let m = &r.machine;
    let rows = [
        ("cores", m.cores.to_string()),
        ("CPU", escape(&m.cpu)),
        ("memory", format!("{:.1} GiB", m.memory_gib)),
        ("kernel", format!("Linux {}", escape(&m.kernel))),
        ("tpc", escape(&c.tpc_version)),
        (
            "clients",
            c.clients
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("users", c.users.to_string()),
        (
            "time per run",
            format!("{} s warm-up, then {} s measured", c.warmup_s, c.duration_s),
        ),
        (
            "faults",
            format!(
                "{} (one schedule from seed {:#x}, the same for every strategy)",
                escape(&c.faults.join(", ")),
                c.fault_seed
            ),
        ),
        ("readers", c.readers.to_string()),
        (
            "between the services",
            if c.internal_tls {
                "mutual TLS (the default)"
            } else {
                "plaintext (--insecure-internal)"
            }
            .into(),
        ),
        (
            "reused passwords",
            format!("{:.1}% of changes", c.reuse_rate * 100.0),
        ),
        ("request ids", c.request_ids.clone()),
        (
            "connections",
            format!(
                "one HTTP/2 channel per {} clients; requests time out after {} s",
                c.clients_per_channel, c.request_timeout_s
            ),
        ),
    ];
    for (k, v) in rows {
        w!(out, "<dt>{k}</dt><dd>{v}</dd>\n");
    }
    let cost = if c.argon2 == "owasp" {
        "owasp: the product's secure default (m=19456 KiB, t=2)".to_owned()
    } else {
        "fast: <span class=\"warn\">INSECURE</span> (m=8 KiB, t=1); measures the protocol, not the hashing"
            .to_owned()
    };
    w!(out, "<dt>argon2</dt><dd>{cost}</dd>\n</dl>\n");
}

fn floors(out: &mut String, r: &Results) {
    let f = &r.floors;
    w!(
        out,
        "<h2>Floors</h2>\n<p class=\"note\">Measured in the same invocation before any load, with nothing else running. A change cannot go faster than a floor divided by what one change costs of it.</p>\n"
    );
    w!(
        out,
        "<table>\n<thead><tr><th>floor</th><th>measured</th><th>per change</th><th>bound (changes/s)</th></tr></thead>\n<tbody>\n"
    );
    for (clients, per_s) in &f.rpc_per_s {
        w!(
            out,
            "<tr><td>bare RPC (health check), {}</td><td>{}/s</td><td>{}</td><td>{}</td></tr>\n",
            table::clients(*clients),
            rate(*per_s),
            f.rpcs_per_change,
            rate(per_s / f.rpcs_per_change)
        );
    }
    w!(
        out,
        "<tr><td>forced writes, {} writers (group commit)</td><td>{}/s</td><td>{}</td><td>{}</td></tr>\n",
        crate::floors::GROUPED_WRITERS,
        rate(f.forced_writes_per_s),
        f.forced_writes_per_change,
        rate(f.forced_write_bound_per_s)
    );
    w!(
        out,
        "<tr><td>forced writes, 1 writer</td><td>{}/s</td><td></td><td></td></tr>\n",
        rate(f.forced_writes_1_per_s)
    );
    w!(
        out,
        "<tr><td>argon2id hashes ({}), all cores</td><td>{}/s</td><td>{}</td><td>{}</td></tr>\n",
        escape(&r.config.argon2),
        rate(f.argon2_hashes_per_s),
        f.hashes_per_change,
        rate(f.argon2_bound_per_s)
    );
    w!(out, "</tbody>\n</table>\n");
}

fn summary_table(out: &mut String, r: &Results) {
    w!(out, "<h2>Results</h2>\n<table>\n<thead><tr>");
    for column in table::columns() {
        w!(out, "<th>{}</th>", escape(column));
    }
    w!(out, "</tr></thead>\n<tbody>\n");
    for row in table::rows(&r.runs) {
        w!(out, "<tr>");
        for cell in row {
            w!(out, "<td>{}</td>", escape(&cell));
        }
        w!(out, "</tr>\n");
    }
    w!(out, "</tbody>\n</table>\n");
    w!(
        out,
        "<p class=\"note\">Latency: client-side, committed changes only. CPU: the three services' user + system time per committed change. RSS: peak resident memory (VmHWM) of coordinator / password / history.</p>\n"
    );
    w!(
        out,
        "<h3>Cost per change</h3>\n<table>\n<thead><tr><th>run</th><th>CPU ms coordinator</th><th>password</th><th>history</th><th>load generator CPU s</th><th>disk bytes/change</th><th>without e-mails</th><th>% forced-write bound</th></tr></thead>\n<tbody>\n"
    );
    for run in &r.runs {
        let by = |s: &str| {
            run.cpu_s_per_1000_by_service
                .get(s)
                .map_or("?".into(), |c| format!("{c:.2}"))
        };
        let bytes = |b: Option<f64>| b.map_or("?".into(), rate);
        w!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&table::run_label(run)),
            by("coordinator"),
            by("password"),
            by("history"),
            run.loadgen_cpu_s.map_or("?".into(), |c| format!("{c:.2}")),
            bytes(run.disk_bytes_per_change),
            bytes(run.disk_bytes_per_change_without_mail),
            percent(run.of_forced_write_bound)
        );
    }
    w!(
        out,
        "</tbody>\n</table>\n<p class=\"note\">Disk: the data directories at the end, divided by every change committed in the run (registrations and warm-up included).</p>\n"
    );
}

fn anomalies(out: &mut String, r: &Results) {
    if r.runs.iter().all(|run| run.anomalies.is_none()) {
        return;
    }
    w!(
        out,
        "<h2>Anomalies</h2>\n<p class=\"note\">In flight, seen by the readers: a <b>torn read</b> read the same password version before and after the history and found another newest history entry (DESIGN §6.3); a <b>dirty read</b> logged in with a change's new password while it was in flight, and the change then did not take effect. At rest, once the cluster is quiet: users whose password is not their newest history entry, e-mails for changes not in effect, changes without an e-mail, and e-mails received twice (same Message-ID; delivery is at least once, a receiver drops them).</p>\n"
    );
    w!(
        out,
        "<table>\n<thead><tr><th>run</th><th>torn reads</th><th>dirty reads</th><th>divergent users</th><th>wrong e-mails</th><th>missing e-mails</th><th>duplicate e-mails</th><th>reader observations</th><th>new passwords tried / worked in flight</th><th>failed reads</th></tr></thead>\n<tbody>\n"
    );
    for run in &r.runs {
        let Some(a) = &run.anomalies else { continue };
        w!(out, "<tr><td>{}</td>", escape(&table::run_label(run)));
        for (_, n) in a.kinds() {
            w!(out, "<td>{n}</td>");
        }
        match &run.reads {
            Some(reads) => {
                w!(
                    out,
                    "<td>{} ({} moved)</td><td>{} / {}</td><td>{}</td></tr>\n",
                    reads.observations,
                    reads.moved,
                    reads.verifies,
                    reads.verified_valid,
                    reads.errors
                );
            }
            None => {
                w!(out, "<td>no readers</td><td></td><td></td></tr>\n");
            }
        }
    }
    w!(out, "</tbody>\n</table>\n");
    for run in &r.runs {
        if let Some(line) = table::fault_line(run) {
            w!(out, "<p class=\"note\">{}</p>\n", escape(&line));
        }
        if let Some(busy) = &run.not_quiet {
            w!(
                out,
                "<p class=\"warn\">{}: not quiet when the anomalies at rest were counted: {}</p>\n",
                escape(&table::run_label(run)),
                escape(busy)
            );
        }
    }
}

fn charts_section(out: &mut String, r: &Results) {
    let mut svgs: Vec<Result<Option<String>, String>> = vec![
        charts::anomalies(r),
        charts::throughput(r),
        charts::latency(r),
        charts::cdf(r),
    ];
    match charts::per_second(r) {
        Ok(more) => svgs.extend(more.into_iter().map(|s| Ok(Some(s)))),
        Err(e) => svgs.push(Err(e)),
    }
    match charts::over_time(r) {
        Ok(more) => svgs.extend(more.into_iter().map(|s| Ok(Some(s)))),
        Err(e) => svgs.push(Err(e)),
    }
    w!(out, "<h2>Charts</h2>\n<div class=\"charts\">\n");
    for svg in svgs {
        match svg {
            Ok(Some(svg)) => {
                w!(out, "<figure>{svg}</figure>\n");
            }
            Ok(None) => {}
            Err(e) => {
                w!(
                    out,
                    "<figure><p class=\"warn\">chart failed: {}</p></figure>\n",
                    escape(&e)
                );
            }
        }
    }
    w!(out, "</div>\n");
}

fn refusals(out: &mut String, r: &Results) {
    w!(out, "<h2>Refusals</h2>\n");
    let reasons = table::reasons(&r.runs);
    if reasons.is_empty() {
        w!(
            out,
            "<p>None: every request in the measured periods committed.</p>\n"
        );
    } else {
        w!(
            out,
            "<table>\n<thead><tr><th>reason</th><th>count (all runs)</th></tr></thead>\n<tbody>\n"
        );
        for (reason, n) in reasons {
            w!(
                out,
                "<tr><td class=\"text\">{}</td><td>{n}</td></tr>\n",
                escape(&reason)
            );
        }
        w!(out, "</tbody>\n</table>\n");
    }
    if let Some(b) = &r.burst {
        w!(
            out,
            "<h2>Burst</h2>\n<p>{}.</p>\n",
            escape(&table::burst_summary(b))
        );
        if !b.refused.is_empty() {
            w!(
                out,
                "<table>\n<thead><tr><th>refused because</th><th>count</th></tr></thead>\n<tbody>\n"
            );
            for (reason, n) in &b.refused {
                w!(
                    out,
                    "<tr><td class=\"text\">{}</td><td>{n}</td></tr>\n",
                    escape(reason)
                );
            }
            w!(out, "</tbody>\n</table>\n");
        }
    }
}

/// Windows of at most this many rows are shown open.
const OPEN_WINDOWS: usize = 12;

fn windows(out: &mut String, r: &Results) {
    w!(
        out,
        "<h2>Over time</h2>\n<p class=\"note\">Each run's measured period in 10-second windows (and per minute, for long runs): throughput, p99 and resident memory as the window closed, so drift and growth show.</p>\n"
    );
    for run in &r.runs {
        let open = if run.windows.len() <= OPEN_WINDOWS {
            " open"
        } else {
            ""
        };
        w!(
            out,
            "<details{open}><summary>{}: {} window{}</summary>\n",
            escape(&table::run_label(run)),
            run.windows.len(),
            if run.windows.len() == 1 { "" } else { "s" }
        );
        window_table(out, run, false);
        if run.per_minute.len() > 1 {
            w!(out, "<h3>Per minute</h3>\n");
            window_table(out, run, true);
        }
        w!(out, "</details>\n");
    }
}

fn window_table(out: &mut String, run: &Run, minutes: bool) {
    w!(
        out,
        "<table>\n<thead><tr><th>from s</th><th>committed/s</th><th>p99 ms</th><th>RSS c/p/h MiB</th></tr></thead>\n<tbody>\n"
    );
    let windows = if minutes {
        &run.per_minute
    } else {
        &run.windows
    };
    for w in windows {
        w!(
            out,
            "<tr><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            w.t_s,
            rate(w.committed_per_s),
            w.p99_ms.map_or("–".into(), ms),
            crate::sweep::rss_triple(&w.rss_mib)
        );
    }
    w!(out, "</tbody>\n</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        let mut results = crate::fixtures::results(&[1, 16]);
        results.runs[0]
            .refused
            .insert("conflict: <another> & more".into(), 3);
        let page = html(&results);
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.matches("<svg").count() >= 3);
        assert!(page.contains("conflict: &lt;another&gt; &amp; more"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("src=") && !page.contains("href=\"http"));
        assert!(!page.contains("<link"));
        assert!(page.contains("INSECURE"));
        assert!(page.contains("<h2>Anomalies</h2>"));
        assert!(page.contains("Anomalies per strategy and fault mode"));
        assert!(page.contains("Throughput per second"));
    }
}
