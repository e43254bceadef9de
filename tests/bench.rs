//! `tpc bench` end to end: a short real run on real processes writes results and a report. It checks
//! what the command produces, never how fast anything is.

use std::process::Command;

#[test]
fn a_short_bench_writes_results_and_a_report() {
    let dir = tempfile::Builder::new()
        .prefix("tpc-bench-test-")
        .tempdir()
        .unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args([
            "bench",
            "--strategies",
            "2pc,saga",
            "--clients",
            "2",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--readers",
            "2",
            "--reuse-rate",
            "0.2",
        ])
        .args(["--users", "8", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "tpc bench failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("committed/s"), "{stdout}");

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let floors = &results["floors"];
    for floor in [
        "forced_writes_per_s",
        "forced_writes_1_per_s",
        "argon2_hashes_per_s",
    ] {
        assert!(floors[floor].as_f64().unwrap() > 0.0, "{floor}: {floors}");
    }
    assert!(floors["rpc_per_s"]["2"].as_f64().unwrap() > 0.0, "{floors}");
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(results["config"]["readers"], 2);
    assert_eq!(results["config"]["faults"], serde_json::json!(["none"]));
    for (run, strategy) in runs.iter().zip(["2pc", "saga"]) {
        assert_eq!(run["clients"], 2);
        assert_eq!(run["strategy"], strategy);
        assert_eq!(run["faults"], "none");
        assert_eq!(run["fault_events"], serde_json::json!([]));
        assert!(run["committed_per_s"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["rpc_floor_per_s"].as_f64().unwrap() > 0.0, "{run}");
        assert!(!run["windows"].as_array().unwrap().is_empty(), "{run}");
        assert!(!run["per_second"].as_array().unwrap().is_empty(), "{run}");
        // The reused passwords were refused by the history participant.
        assert!(
            run["refused"]["password was used recently"].as_u64() > Some(0),
            "{strategy}: {}",
            run["refused"]
        );
        assert!(run["reads"]["observations"].as_u64() > Some(0), "{run}");
        let anomalies = &run["anomalies"];
        for kind in [
            "torn_reads",
            "dirty_reads",
            "divergent_users",
            "wrong_emails",
            "missing_emails",
            "duplicate_emails",
        ] {
            assert!(
                anomalies[kind].is_u64(),
                "{strategy}: {kind} in {anomalies}"
            );
        }
        // Without faults, neither strategy leaves anything wrong at rest (the saga compensates the
        // reused passwords); two-phase commit lets no reader see anything either.
        let kinds: &[&str] = if strategy == "2pc" {
            &[
                "torn_reads",
                "dirty_reads",
                "divergent_users",
                "wrong_emails",
                "missing_emails",
            ]
        } else {
            &["divergent_users", "wrong_emails", "missing_emails"]
        };
        for kind in kinds
            .iter()
            .chain(&["unreadable_users", "duplicate_emails"])
        {
            assert_eq!(anomalies[kind], 0, "{strategy}: {anomalies}");
        }
    }
    assert!(stdout.contains("saga, 2 clients: anomalies: "), "{stdout}");
    assert!(results["machine"]["cores"].as_u64().unwrap() > 0);

    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("<svg"));
    assert!(report.contains("Anomalies per strategy and fault mode"));

    // The report draws again from the saved results alone.
    std::fs::remove_file(out.join("report.html")).unwrap();
    let render = Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args(["bench", "--render"])
        .arg(out.join("results.json"))
        .output()
        .unwrap();
    assert!(render.status.success(), "{render:?}");
    assert_eq!(
        std::fs::read_to_string(out.join("report.html")).unwrap(),
        report
    );
}
