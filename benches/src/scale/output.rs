//! Writing a [`Report`]: `scale.json` (everything), `scale.md` (the tables docs/benchmarks.md
//! quotes) and the SVG plots. Formatting only.

use std::fmt::Write as _;
use std::path::Path;

use super::ScaleError;
use super::plot;
use super::run::Report;

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Writes every output of `report` into `dir`.
pub fn write_all(report: &Report, dir: &Path) -> Result<(), ScaleError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ScaleError::new(format!("creating {}: {e}", dir.display())))?;
    let json = serde_json::to_string_pretty(report).map_err(ScaleError::from_display)?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| ScaleError::new(format!("writing {}: {e}", dir.join(name).display())))
    };
    write("scale.json", &json)?;
    write("scale.md", &markdown(report))?;

    let sequential: Vec<(String, &[f64])> = report
        .logins
        .iter()
        .filter(|r| r.concurrency == 1 && r.what == "login")
        .map(|r| {
            (
                format!("{} at {} sessions", r.who, r.sessions),
                r.samples_ms.as_slice(),
            )
        })
        .collect();
    let series: Vec<(&str, &[f64])> = sequential.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    plot::cdf(
        &dir.join("login-latency.svg"),
        "Login latency, one at a time: tka-server vs the same writes with kube",
        "milliseconds",
        &series,
    )?;
    let rss: Vec<(f64, f64)> = report
        .idle
        .iter()
        .map(|r| (r.sessions as f64, mb(r.rss_kib)))
        .collect();
    let peak: Vec<(f64, f64)> = report
        .idle
        .iter()
        .map(|r| (r.sessions as f64, mb(r.max_rss_kib)))
        .collect();
    let mut memory = vec![
        ("RSS at the end of an idle window", rss),
        ("largest RSS in the window", peak),
    ];
    if let Some(pass) = &report.pass {
        memory.push((
            "peak during a forced full pass",
            vec![(pass.sessions as f64, mb(pass.peak_kib))],
        ));
    }
    plot::memory(
        &dir.join("memory.svg"),
        "tka-server resident memory against live sessions",
        &memory,
    )?;
    plot::cdf(
        &dir.join("expiry-lag.svg"),
        "Expiry lag: from expiresAt until the ServiceAccount is gone / the token is refused",
        "milliseconds after expiresAt",
        &[
            (
                "ServiceAccount gone",
                &report.expiry.service_account_gone_ms,
            ),
            (
                "token refused (TokenReview)",
                &report.expiry.token_refused_ms,
            ),
        ],
    )?;
    Ok(())
}

/// The tables of a report, in Markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(
        s,
        "Scale run started {}: sessions {} / {}, logins {} (×2 at 8, ×4 at 32), expiring {} over {} s, idle windows {} s.\n",
        r.started,
        c.mid_sessions,
        c.sessions,
        c.logins,
        c.expiring,
        c.spread_seconds,
        c.idle_seconds
    );
    let _ = writeln!(
        s,
        "| who | what | sessions | in flight | n | p50 ms | p90 ms | p99 ms | max ms | per s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for l in &r.logins {
        let t = &l.latency;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            l.who,
            l.what,
            l.sessions,
            l.concurrency,
            t.n,
            t.p50_ms,
            t.p90_ms,
            t.p99_ms,
            t.max_ms,
            l.per_second
        );
    }
    let _ = writeln!(
        s,
        "\nBaseline steps, p50 (sequential logins at 0 sessions):\n"
    );
    let _ = writeln!(s, "| step | p50 ms |\n|---|---|");
    for (k, v) in &r.breakdown.baseline_p50_ms {
        let _ = writeln!(s, "| {k} | {v:.2} |");
    }
    if let Some(w) = r.breakdown.whois_mean_ms {
        let _ = writeln!(s, "| whois (server's histogram, mean) | {w:.2} |");
    }
    let _ = writeln!(
        s,
        "\n| sessions | RSS MB | binary / other files / anonymous MB | max RSS in window MB | VmHWM MB | CPU share | passes | CPU s/pass | LIST/min |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for i in &r.idle {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} / {:.1} / {:.1} | {:.1} | {:.1} | {:.1} % | {} | {} | {:.1} |",
            i.sessions,
            mb(i.rss_kib),
            mb(i.rss_parts.binary_kib),
            mb(i.rss_parts.other_files_kib),
            mb(i.rss_parts.anonymous_kib),
            mb(i.max_rss_kib),
            mb(i.hwm_kib),
            i.cpu_share * 100.0,
            i.passes,
            i.cpu_per_pass_s
                .map_or("—".to_owned(), |v| format!("{v:.3}")),
            i.lists_per_minute
        );
    }
    let _ = writeln!(
        s,
        "\nAPI server requests per minute by verb and resource (idle windows; background = no tka-server):\n"
    );
    let mut keys: Vec<&String> = r.background_per_minute.keys().collect();
    for i in &r.idle {
        keys.extend(i.apiserver_per_minute.keys());
    }
    keys.sort();
    keys.dedup();
    let _ = write!(s, "| request | background |");
    for i in &r.idle {
        let _ = write!(s, " {} sessions |", i.sessions);
    }
    let _ = writeln!(s, "\n|---|---|{}", "---|".repeat(r.idle.len()));
    for k in keys {
        let _ = write!(
            s,
            "| {k} | {} |",
            r.background_per_minute.get(k).copied().unwrap_or(0.0)
        );
        for i in &r.idle {
            let _ = write!(
                s,
                " {} |",
                i.apiserver_per_minute.get(k).copied().unwrap_or(0.0)
            );
        }
        let _ = writeln!(s);
    }
    if let Some(p) = &r.pass {
        let _ = writeln!(
            s,
            "\nForced full pass at {} sessions (GrantMapping change): {} passes in {:.1} s, {:.2} CPU s, mean pass {}, peak RSS {:.1} MB; API requests: {:?}",
            p.sessions,
            p.passes,
            p.window_s,
            p.cpu_s,
            p.mean_pass_s
                .map_or("—".to_owned(), |v| format!("{v:.2} s")),
            mb(p.peak_kib),
            p.apiserver
        );
    }
    let _ = writeln!(
        s,
        "\nSeeding: {:?}",
        r.seeding
            .iter()
            .map(|x| format!("{} in {:.0} s", x.sessions, x.seconds))
            .collect::<Vec<_>>()
    );
    let _ = writeln!(
        s,
        "\n| expiry lag | n | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|"
    );
    for (k, v) in &r.expiry_summary {
        let _ = writeln!(
            s,
            "| {k} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            v.n, v.p50_ms, v.p90_ms, v.p99_ms, v.max_ms
        );
    }
    let _ = writeln!(
        s,
        "\nNot gone by the deadline: {}; tokens polled: a sample of {}, not refused 30 s after: {}. Server VmHWM at the end: {:.1} MB.",
        r.expiry.not_gone,
        r.expiry.token_sampled,
        r.expiry.not_refused,
        mb(r.final_hwm_kib)
    );
    s
}
