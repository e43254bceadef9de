//! The machine a result was measured on: without it a throughput figure cannot be compared with
//! another.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Cores this process may use (`available_parallelism`: respects CPU affinity and cgroup quotas).
    pub cores: usize,
    /// The CPU model, from `/proc/cpuinfo`.
    pub cpu: String,
    pub memory_gib: f64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown CPU".into()),
            memory_gib: crate::measure::parse_status_kib(&read("/proc/meminfo"), "MemTotal")
                .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0)),
            kernel: match read("/proc/sys/kernel/osrelease").trim() {
                "" => "unknown kernel".into(),
                release => release.to_owned(),
            },
        }
    }

    /// One line for the terminal and the report.
    pub fn describe(&self) -> String {
        format!(
            "{} cores, {}, {:.1} GiB, Linux {}",
            self.cores, self.cpu, self.memory_gib, self.kernel
        )
    }
}

/// The first `model name` of `/proc/cpuinfo` (x86), or `Model`/`CPU part` lines elsewhere.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware", "CPU part"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_owned())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_name_comes_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
