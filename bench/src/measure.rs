//! Readings from `/proc` and the file system: CPU time, memory and disk of the cluster's processes.
//!
//! The parsers are pure (they take the file's text) so they can be tested without a process; the
//! readers around them return `None` when a process is gone rather than failing the run, because a
//! missing reading is worth reporting as absent, not worth losing the other numbers for.

use std::path::Path;

/// CPU time (user + system) of a process, in clock ticks, from the text of `/proc/<pid>/stat`.
///
/// Fields 14 and 15 (1-based) are `utime` and `stime`. Field 2, the command name, is in parentheses
/// and may itself contain spaces and parentheses, so counting starts after the *last* `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name, the next field is field 3 (state): utime is the 12th from here, stime the 13th.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Vm…:  1234 kB` line of `/proc/<pid>/status`, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` CPU times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has answered 100 on every platform for decades; a failure (-1) falls back to it.
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds a process has used so far; `None` if it is gone. `pid` `None` means this process.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let ticks = parse_stat_ticks(&std::fs::read_to_string(path).ok()?)?;
    Some(ticks as f64 / ticks_per_second())
}

/// `VmHWM` (peak resident set) or `VmRSS` (resident now) of a process, in MiB.
pub fn memory_mib(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_status_kib(&status, key)? as f64 / 1024.0)
}

/// Bytes a directory tree occupies on disk (allocated blocks, as `du` counts them, so sparse or
/// preallocated files count for what they really take).
pub fn disk_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_add_user_and_system_time_even_with_odd_command_names() {
        let stat =
            "4242 (tpc (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 1000";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(None).is_some());
        assert!(memory_mib(std::process::id(), "VmHWM").is_some_and(|m| m > 0.0));
    }

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\ttpc\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn disk_bytes_of_a_missing_dir_is_zero() {
        assert_eq!(disk_bytes(Path::new("/nonexistent/tpc-bench")).unwrap(), 0);
    }
}
