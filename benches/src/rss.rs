//! The process's resident memory, from `/proc/self/status` (Linux). Reading only; must not be
//! used to decide anything but what a benchmark prints.

/// Resident set size now (`VmRSS`) and at its peak (`VmHWM`), in KiB; `None` where
/// `/proc/self/status` is missing or unreadable.
pub fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
