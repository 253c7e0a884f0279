//! Reading what the processes under test report about themselves: `/proc/<pid>` (resident
//! memory, CPU time), Prometheus text (`/metrics` of tka-server and of kube-apiserver), and a
//! minimal HTTP/1.1 exchange on loopback. Reading only; must not change the processes.

use std::collections::BTreeMap;

use serde::Serialize;

use tka_testkit::testenv::devices::proc_status_kib;
pub use tka_testkit::testenv::devices::{
    Series, find_server_pid as find_pid, http_exchange as http, parse_prometheus, sum_of,
};

use super::ScaleError;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// `VmRSS` in KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS since start or since [`reset_peak`]) in KiB.
    pub hwm_kib: u64,
    /// utime + stime in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn proc_sample(pid: u32) -> Result<ProcSample, ScaleError> {
    let rss_kib = proc_status_kib(pid, "VmRSS")
        .ok_or_else(|| ScaleError::new(format!("reading VmRSS of /proc/{pid}/status")))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| ScaleError::new(format!("reading /proc/{pid}/stat: {e}")))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    Ok(ProcSample {
        rss_kib,
        hwm_kib: proc_status_kib(pid, "VmHWM").unwrap_or(0),
        // utime is field 14 and stime field 15: indexes 11 and 12 after the state (field 3).
        cpu_ticks: tick(11) + tick(12),
    })
}

/// Where a process's resident memory is, from `/proc/<pid>/smaps`: the pages of its own
/// executable, of other files (shared libraries), and anonymous ones (heap, stacks).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RssParts {
    /// Resident pages mapped from the process's executable, KiB.
    pub binary_kib: u64,
    /// Resident pages mapped from other files (shared libraries), KiB.
    pub other_files_kib: u64,
    /// Resident pages with no file behind them, KiB.
    pub anonymous_kib: u64,
}

/// Reads `/proc/<pid>/smaps` and `/proc/<pid>/exe`.
pub fn rss_parts(pid: u32) -> Result<RssParts, ScaleError> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| ScaleError::new(format!("reading /proc/{pid}/exe: {e}")))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| ScaleError::new(format!("reading /proc/{pid}/smaps: {e}")))?;
    Ok(split_smaps(&smaps, &exe.to_string_lossy()))
}

/// [`rss_parts`] of an smaps text, `exe` being the executable's path.
fn split_smaps(smaps: &str, exe: &str) -> RssParts {
    let mut parts = RssParts::default();
    // Where the current mapping's `Rss:` line is counted.
    let mut bucket = &mut parts.anonymous_kib;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, device, inode, [path].
            let inode = fields.nth(3).unwrap_or("0");
            let path = fields.collect::<Vec<_>>().join(" ");
            bucket = if inode == "0" || path.is_empty() || path.starts_with('[') {
                &mut parts.anonymous_kib
            } else if path == exe {
                &mut parts.binary_kib
            } else {
                &mut parts.other_files_kib
            };
        } else if first == "Rss:" {
            *bucket += fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    parts
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (`echo 5 > clear_refs`).
pub fn reset_peak(pid: u32) -> Result<(), ScaleError> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| ScaleError::new(format!("resetting the peak RSS of {pid}: {e}")))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails, the Linux default).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The value of label `name` in a series text.
pub fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// `apiserver_request_total` summed by `VERB resource[/subresource]`, resource requests only.
pub fn apiserver_requests(series: &Series) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in series {
        if !k.starts_with("apiserver_request_total{") {
            continue;
        }
        let resource = label(k, "resource").unwrap_or("");
        if resource.is_empty() {
            continue;
        }
        let verb = label(k, "verb").unwrap_or("?");
        let key = match label(k, "subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        *out.entry(key).or_insert(0.0) += v;
    }
    out
}

/// `after - before` per key, leaving out zeros.
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_apiserver_request_counts_by_verb_and_resource() {
        let text = "# HELP x\n\
            apiserver_request_total{code=\"200\",resource=\"serviceaccounts\",subresource=\"\",verb=\"LIST\"} 3\n\
            apiserver_request_total{code=\"200\",resource=\"serviceaccounts\",subresource=\"token\",verb=\"POST\"} 2\n\
            apiserver_request_total{code=\"201\",resource=\"serviceaccounts\",subresource=\"\",verb=\"LIST\"} 1\n\
            apiserver_request_total{code=\"200\",resource=\"\",subresource=\"\",verb=\"GET\"} 9\n\
            tka_reconcile_duration_seconds_count 4\n";
        let series = parse_prometheus(text);
        let by = apiserver_requests(&series);
        assert_eq!(by.get("LIST serviceaccounts"), Some(&4.0));
        assert_eq!(by.get("POST serviceaccounts/token"), Some(&2.0));
        assert_eq!(by.len(), 2, "{by:?}");
        assert_eq!(sum_of(&series, "tka_reconcile_duration_seconds_count"), 4.0);
        assert_eq!(sum_of(&series, "tka_reconcile_duration_seconds"), 0.0);
    }

    #[test]
    fn reads_this_process() {
        let sample = proc_sample(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0 && sample.hwm_kib >= sample.rss_kib);
        let parts = rss_parts(std::process::id()).unwrap();
        assert!(parts.binary_kib > 0, "{parts:?}");
        assert!(parts.anonymous_kib > 0, "{parts:?}");
    }

    #[test]
    fn smaps_are_split_into_the_binary_other_files_and_anonymous_memory() {
        let smaps = "\
55d0c0000000-55d0c1000000 r-xp 00000000 fd:01 1234 /opt/tka server/tka-server
Size:              16384 kB
Rss:                9000 kB
55d0c2000000-55d0c2100000 rw-p 00000000 00:00 0 
Rss:                 100 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1500 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 [heap]
Rss:                 400 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  20 kB
";
        let parts = split_smaps(smaps, "/opt/tka server/tka-server");
        assert_eq!(parts.binary_kib, 9000);
        assert_eq!(parts.other_files_kib, 1500);
        assert_eq!(parts.anonymous_kib, 520);
    }
}
