//! Made-up results for the renderers' tests.

use std::collections::BTreeMap;

use crate::Machine;
use crate::results::{ConfigRecord, Floors, Results, Run, Window};

/// A run at `clients` with round figures: 100 committed/s per client, half of the RPC bound.
pub fn run(clients: usize) -> Run {
    let per_s = 100.0 * clients as f64;
    Run {
        strategy: "2pc".into(),
        clients,
        faults: "none".into(),
        log: "sled".into(),
        users: 100,
        measured_s: 20.0,
        committed: (per_s * 20.0) as u64,
        committed_per_s: per_s,
        refused_per_s: 0.0,
        refused: BTreeMap::new(),
        p50_ms: 1.5 * clients as f64,
        p90_ms: 2.0 * clients as f64,
        p99_ms: 3.0 * clients as f64,
        max_ms: 9.0 * clients as f64,
        cpu_s_per_1000: Some(1.25),
        cpu_s_per_1000_by_service: BTreeMap::new(),
        loadgen_cpu_s: Some(1.0),
        rss_mib: BTreeMap::from([
            ("coordinator".into(), 30.0),
            ("password".into(), 25.0),
            ("history".into(), 26.0),
        ]),
        committed_total: 5000,
        disk_bytes: 5_000_000,
        disk_bytes_per_change: Some(1000.0),
        disk_bytes_per_change_without_mail: Some(600.0),
        rpc_floor_per_s: per_s * 10.0,
        of_rpc_bound: 0.5,
        of_forced_write_bound: 0.25,
        of_argon2_bound: 0.1,
        windows: (0..2)
            .map(|i| Window {
                t_s: i as f64 * 10.0,
                length_s: 10.0,
                committed_per_s: per_s,
                p99_ms: Some(3.0 * clients as f64),
                rss_mib: BTreeMap::from([("coordinator".into(), 30.0)]),
            })
            .collect(),
        per_minute: Vec::new(),
        latency_cdf: vec![
            (1.0, 0.1),
            (1.5 * clients as f64, 0.5),
            (9.0 * clients as f64, 1.0),
        ],
        anomalies: Some(crate::anomalies::Anomalies::default()),
        reads: None,
        fault_events: Vec::new(),
        per_second: vec![per_s as u64; 20],
        not_quiet: None,
        mail_delay: Some(crate::mail_delay::MailDelay {
            count: 100,
            missing: 0,
            p50_ms: 40.0,
            p99_ms: 120.0,
            max_ms: 300.0,
        }),
    }
}

pub fn results(clients: &[usize]) -> Results {
    let runs: Vec<Run> = clients.iter().map(|&c| run(c)).collect();
    Results {
        machine: Machine {
            cores: 2,
            cpu: "Test CPU @ 2.0GHz".into(),
            memory_gib: 24.0,
            kernel: "6.1.0".into(),
        },
        config: ConfigRecord {
            clients: clients.to_vec(),
            duration_s: 20.0,
            warmup_s: 3.0,
            users: 100,
            argon2: "fast".into(),
            burst: None,
            clients_per_channel: 16,
            request_timeout_s: 5.0,
            tpc_version: "0.1.0".into(),
            faults: vec!["none".into()],
            fault_seed: crate::faults::SEED,
            readers: 0,
            reuse_rate: 0.0,
            request_ids: "sequential".into(),
            internal_tls: true,
        },
        floors: Floors {
            rpc_per_s: runs
                .iter()
                .map(|r| (r.clients, r.rpc_floor_per_s))
                .collect(),
            forced_writes_per_s: 12_000.0,
            forced_writes_1_per_s: 5_000.0,
            argon2_hashes_per_s: 80_000.0,
            rpcs_per_change: 5.0,
            forced_writes_per_change: 3.0,
            hashes_per_change: 8.0,
            forced_write_bound_per_s: 4_000.0,
            argon2_bound_per_s: 10_000.0,
        },
        runs,
        burst: None,
    }
}
