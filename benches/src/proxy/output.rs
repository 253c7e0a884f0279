//! Writing a proxy benchmark [`Report`]: `proxy.json` (everything) and `proxy.md` (the tables
//! docs/benchmarks.md quotes). Formatting only.

use std::fmt::Write as _;
use std::path::Path;

use super::run::Report;
use crate::scale::ScaleError;

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Writes `proxy.json` and `proxy.md` into `dir`.
pub fn write_all(report: &Report, dir: &Path) -> Result<(), ScaleError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ScaleError::new(format!("creating {}: {e}", dir.display())))?;
    let json = serde_json::to_string_pretty(report).map_err(ScaleError::from_display)?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| ScaleError::new(format!("writing {}: {e}", dir.join(name).display())))
    };
    write("proxy.json", &json)?;
    write("proxy.md", &markdown(report))
}

/// The Markdown tables of `report`.
pub fn markdown(report: &Report) -> String {
    let c = &report.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Proxy run started {}: {} sequential rounds of the mix, {} clients × {} slices of {} s per route, {} watches, {} logout rounds of {} watches.\n",
        report.started,
        c.rounds,
        c.concurrency,
        c.slices,
        c.slice_seconds,
        c.watches,
        c.logout_rounds,
        c.logout_watches
    );
    let load: Vec<String> = report
        .loadavg
        .iter()
        .map(|(when, l)| format!("{when} {l}"))
        .collect();
    let _ = writeln!(out, "Load average: {}.\n", load.join("; "));
    let _ = writeln!(
        out,
        "Sequential latency, one client, the routes interleaved (ms):\n\n\
         | request | n | direct p50 | direct p99 | proxy p50 | proxy p99 | added p50 | added p99 | paired median |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for r in &report.latency {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:+.2} | {:+.2} | {:+.2} |",
            r.kind,
            r.direct.n,
            r.direct.p50_ms,
            r.direct.p99_ms,
            r.proxy.p50_ms,
            r.proxy.p99_ms,
            r.added_p50_ms,
            r.added_p99_ms,
            r.paired_median_ms
        );
    }
    let _ = writeln!(
        out,
        "\nThe server's `tka_proxy_upstream_seconds` over the sequential phase: {:.0} proxied requests, mean {:.2} ms waiting for the upstream's response headers.\n",
        report.upstream_count, report.upstream_mean_ms
    );
    let _ = writeln!(
        out,
        "| route | clients | requests | seconds | per s | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|"
    );
    for r in &report.throughput {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} |",
            r.route.name(),
            r.concurrency,
            r.requests,
            r.seconds,
            r.per_second,
            r.latency.p50_ms,
            r.latency.p99_ms
        );
    }
    let _ = writeln!(
        out,
        "\nThroughput through the proxy: {:.1} % of direct.\n",
        report.throughput_ratio * 100.0
    );
    let m = &report.memory;
    let _ = writeln!(
        out,
        "| proxied watches open | active streams (server) | server RSS MB |\n|---|---|---|"
    );
    for s in &m.steps {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} |",
            s.open,
            s.active_streams,
            mb(s.rss_kib)
        );
    }
    let _ = writeln!(
        out,
        "\nMemory per open proxied watch: {:.1} KiB ({} fds open in the server with every watch open; opened in {:.1} s); RSS 3 s after closing them all: {:.1} MB.\n",
        m.per_stream_kib,
        m.fds_open,
        m.open_seconds,
        mb(m.after_close_kib)
    );
    let l = &report.logout;
    let _ = writeln!(
        out,
        "| logout, watches open | n | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|"
    );
    for (what, s) in [
        ("`DELETE /api/v1/session` → each watch closed", &l.closed),
        ("the `DELETE /api/v1/session` call", &l.logout_call),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.n, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
        );
    }
    let _ = writeln!(
        out,
        "\nWatches not closed 60 s after their logout: {}.",
        l.not_closed
    );
    out
}
