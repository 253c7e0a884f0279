//! Reading what the processes under test report about themselves: `/proc/<pid>` (resident
//! memory, CPU time), Prometheus text (`/metrics` of tka-server and of kube-apiserver), and a
//! minimal HTTP/1.1 exchange on loopback. Reading only; must not change the processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| ScaleError::new(format!("reading /proc/{pid}/status: {e}")))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| ScaleError::new(format!("reading /proc/{pid}/stat: {e}")))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        // utime is field 14 and stime field 15: indexes 11 and 12 after the state (field 3).
        cpu_ticks: tick(11) + tick(12),
    })
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

/// The pid of the process whose command line contains `needle` and `serve` (the server started
/// by the testenv's launcher, found by its unique ops address).
pub fn find_pid(needle: &str) -> Result<u32, ScaleError> {
    let entries =
        std::fs::read_dir("/proc").map_err(|e| ScaleError::new(format!("reading /proc: {e}")))?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
        else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let has = |s: &str| args.contains(&s.as_bytes());
        if has(needle) && has("serve") {
            return Ok(pid);
        }
    }
    Err(ScaleError::new(format!(
        "no process with `serve` and {needle} on its command line"
    )))
}

/// Prometheus samples by full series text (`name{labels}`) → value.
pub type Series = BTreeMap<String, f64>;

/// Parses Prometheus text exposition (comments skipped).
pub fn parse_prometheus(text: &str) -> Series {
    let mut out = Series::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // The value is the last field unless a timestamp follows it; neither side has one here.
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(series.trim().to_owned(), v);
        }
    }
    out
}

/// The value of label `name` in a series text.
pub fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// Sum of every series named exactly `metric` (any labels).
pub fn sum_of(series: &Series, metric: &str) -> f64 {
    series
        .iter()
        .filter(|(k, _)| {
            k.as_str() == metric || k.strip_prefix(metric).is_some_and(|r| r.starts_with('{'))
        })
        .map(|(_, v)| *v)
        .sum()
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

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), after `preface` bytes (a
/// PROXY header, or nothing); the status, the body and the time from connecting to the last
/// byte. Bounded by 60 s.
pub async fn http(
    addr: SocketAddr,
    preface: &[u8],
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String, Duration), ScaleError> {
    let exchange = async {
        let started = std::time::Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let body = body.unwrap_or("");
        let mut request = preface.to_vec();
        request.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        stream.write_all(&request).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let took = started.elapsed();
        Ok::<_, std::io::Error>((raw, took))
    };
    let (raw, took) = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| ScaleError::new(format!("{method} {path} on {addr} took over 60 s")))?
        .map_err(|e| ScaleError::new(format!("{method} {path} on {addr}: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ScaleError::new(format!("no HTTP status from {addr}: {head}")))?;
    Ok((status, rest.to_owned(), took))
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
    }
}
