//! The scenario of the scale run, in order: the API server idle without tka (background), the
//! server idle at 0 sessions, logins (tka and the baseline, 1/8/32 at once), 1,000 then 10,000
//! sessions (memory, an idle window each), a full pass forced by a GrantMapping change, logins at
//! 10,000, then expiry lag. Every wait is bounded. Reports; asserts nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::json;
use tka_core::kubernetes::GrantMapping;

use super::ScaleError;
use super::env::{ROLE, Server, Stage, User, apiserver_metrics};
use super::expiry::{self, ExpiryLags};
use super::login::{self, BaselineObjects, BaselineSteps, batch};
use super::probe::{self, ProcSample};
use super::seed::{self, Seeded};
use super::stats::{self, Summary, ms, summarize};

/// What to run, and how much.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The testenv's components (`TKA_TESTENV_BIN`).
    pub testenv_bin: PathBuf,
    /// The `tka-server` binary under test (release).
    pub server_bin: PathBuf,
    /// The kustomize base (`tka-server/deploy`).
    pub deploy: PathBuf,
    /// Where the results go.
    pub out: PathBuf,
    /// Sessions for the large point (10,000).
    pub sessions: usize,
    /// Sessions for the middle point (1,000).
    pub mid_sessions: usize,
    /// Logins one at a time per phase; 2× that at 8 and 4× at 32 in flight.
    pub logins: usize,
    /// Sessions ending during the expiry measure.
    pub expiring: usize,
    /// Over how many seconds they end.
    pub spread_seconds: u64,
    /// Length of each idle window.
    pub idle_seconds: u64,
    /// Sessions made at once while seeding.
    pub seed_concurrency: usize,
    /// The server's `--log-filter` (default `warn`); its log is then copied to
    /// `server.log` in `out` (e.g. `warn,tka_core::kubernetes::reconciler=debug` for the
    /// reconciler's per-pass and per-ending timings).
    pub server_log_filter: Option<String>,
}

/// Latency and throughput of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct LoginRow {
    /// `tka` or `baseline`.
    pub who: String,
    /// What was measured (`login`, `logout`).
    pub what: String,
    /// Live sessions during the phase.
    pub sessions: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Latencies.
    pub latency: Summary,
    /// Completed per second over the phase.
    pub per_second: f64,
    /// The raw latencies in milliseconds (plots).
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
}

/// Memory and CPU of the server over an idle window.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRow {
    /// Live sessions.
    pub sessions: usize,
    /// Length of the window.
    pub seconds: f64,
    /// RSS at the end of the window, KiB.
    pub rss_kib: u64,
    /// Largest RSS sampled during the window (once a second), KiB.
    pub max_rss_kib: u64,
    /// VmHWM at the end of the window (since start), KiB.
    pub hwm_kib: u64,
    /// Where the RSS is at the end of the window (binary, other files, anonymous).
    pub rss_parts: probe::RssParts,
    /// CPU seconds used per wall second.
    pub cpu_share: f64,
    /// Reconcile passes completed in the window (`tka_reconcile_duration_seconds_count`).
    pub passes: f64,
    /// CPU seconds per pass (the whole process's CPU in the window over its passes).
    pub cpu_per_pass_s: Option<f64>,
    /// The API server's requests in the window, per minute, by `VERB resource`.
    pub apiserver_per_minute: BTreeMap<String, f64>,
    /// LIST requests per minute, all resources.
    pub lists_per_minute: f64,
}

/// A pass forced by a GrantMapping change at the large point.
#[derive(Debug, Clone, Serialize)]
pub struct PassRow {
    /// Live sessions.
    pub sessions: usize,
    /// Passes completed in the window.
    pub passes: f64,
    /// Wall seconds of the window (from the change until passes stopped, or the bound).
    pub window_s: f64,
    /// CPU seconds of the process in the window.
    pub cpu_s: f64,
    /// Mean pass duration from the server's histogram, seconds.
    pub mean_pass_s: Option<f64>,
    /// Peak RSS in the window (VmHWM reset before), KiB.
    pub peak_kib: u64,
    /// The API server's requests in the window, by `VERB resource`.
    pub apiserver: BTreeMap<String, f64>,
}

/// The baseline's steps, p50 each, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    /// p50 of each write and of the label LIST a tka login adds (twice).
    pub baseline_p50_ms: BTreeMap<String, f64>,
    /// Mean whois time the server measured during the sequential tka logins, ms.
    pub whois_mean_ms: Option<f64>,
}

/// Seeding speed.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRow {
    /// Sessions made.
    pub sessions: usize,
    /// Wall seconds.
    pub seconds: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started (UTC).
    pub started: String,
    /// The settings.
    pub config: Config,
    /// Logins and logouts.
    pub logins: Vec<LoginRow>,
    /// Where the baseline's time goes.
    pub breakdown: Breakdown,
    /// The API server's requests per minute with no tka-server running.
    pub background_per_minute: BTreeMap<String, f64>,
    /// Idle windows at each point.
    pub idle: Vec<IdleRow>,
    /// The forced pass.
    pub pass: Option<PassRow>,
    /// Seeding.
    pub seeding: Vec<SeedRow>,
    /// Expiry lag.
    pub expiry: ExpiryLags,
    /// Summaries of the expiry lags.
    pub expiry_summary: BTreeMap<String, Summary>,
    /// The server's VmHWM at the end of the run, KiB.
    pub final_hwm_kib: u64,
}

fn per_minute(map: &BTreeMap<String, f64>, seconds: f64) -> BTreeMap<String, f64> {
    map.iter()
        .map(|(k, v)| (k.clone(), (v * 60.0 / seconds * 10.0).round() / 10.0))
        .collect()
}

fn lists(map: &BTreeMap<String, f64>) -> f64 {
    map.iter()
        .filter(|(k, _)| k.starts_with("LIST "))
        .map(|(_, v)| *v)
        .sum()
}

struct Run<'a> {
    stage: &'a Stage,
    server: &'a Server,
    ticks: f64,
    admin: kube::Client,
}

impl Run<'_> {
    fn proc(&self) -> Result<ProcSample, ScaleError> {
        probe::proc_sample(self.server.pid)
    }

    async fn api_requests(&self) -> Result<BTreeMap<String, f64>, ScaleError> {
        Ok(probe::apiserver_requests(
            &apiserver_metrics(&self.admin).await?,
        ))
    }

    async fn passes(&self) -> Result<(f64, f64), ScaleError> {
        let m = self.server.metrics().await?;
        Ok((
            probe::sum_of(&m, "tka_reconcile_duration_seconds_count"),
            probe::sum_of(&m, "tka_reconcile_duration_seconds_sum"),
        ))
    }

    async fn idle(&self, sessions: usize, seconds: u64) -> Result<IdleRow, ScaleError> {
        let (p0, _) = self.passes().await?;
        let a0 = self.api_requests().await?;
        let c0 = self.proc()?;
        let started = Instant::now();
        let mut max_rss = c0.rss_kib;
        while started.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            max_rss = max_rss.max(self.proc()?.rss_kib);
        }
        let c1 = self.proc()?;
        let wall = started.elapsed().as_secs_f64();
        let a1 = self.api_requests().await?;
        let (p1, _) = self.passes().await?;
        let cpu = (c1.cpu_ticks - c0.cpu_ticks) as f64 / self.ticks;
        let requests = probe::delta(&a0, &a1);
        let passes = p1 - p0;
        let row = IdleRow {
            sessions,
            seconds: wall,
            rss_kib: c1.rss_kib,
            max_rss_kib: max_rss,
            hwm_kib: c1.hwm_kib,
            rss_parts: probe::rss_parts(self.server.pid)?,
            cpu_share: cpu / wall,
            passes,
            cpu_per_pass_s: (passes > 0.0).then(|| cpu / passes),
            lists_per_minute: (lists(&requests) * 60.0 / wall).max(0.0),
            apiserver_per_minute: per_minute(&requests, wall),
        };
        eprintln!("scale: idle at {sessions} sessions: {row:?}");
        Ok(row)
    }

    /// `n` tka logins of new users, `concurrency` at once.
    async fn tka_logins(
        &self,
        n: usize,
        concurrency: usize,
        sessions: usize,
    ) -> Result<(LoginRow, Vec<User>), ScaleError> {
        let users: Vec<User> = (0..n).map(|_| self.stage.new_device()).collect();
        let (samples, took) =
            batch(n, concurrency, |i| login::tka_login(self.server, &users[i])).await?;
        Ok((
            row("tka", "login", sessions, concurrency, &samples, took),
            users,
        ))
    }

    /// Logs `users` out, `concurrency` at once.
    async fn tka_logouts(
        &self,
        users: &[User],
        concurrency: usize,
        sessions: usize,
    ) -> Result<LoginRow, ScaleError> {
        let (samples, took) = batch(users.len(), concurrency, |i| {
            login::tka_logout(self.server, &users[i])
        })
        .await?;
        Ok(row("tka", "logout", sessions, concurrency, &samples, took))
    }

    async fn baseline_logins(
        &self,
        n: usize,
        concurrency: usize,
        sessions: usize,
    ) -> Result<(LoginRow, Vec<BaselineSteps>, Vec<BaselineObjects>), ScaleError> {
        let mut identities = Vec::with_capacity(n);
        for _ in 0..n {
            identities.push(self.stage.identity(&self.stage.new_device()).await?);
        }
        let client = &self.stage.server_client;
        let (done, took) = batch(n, concurrency, |i| {
            login::baseline_login(client, &identities[i])
        })
        .await?;
        let samples: Vec<Duration> = done.iter().map(|(s, _)| s.total).collect();
        let (steps, objects) = done.into_iter().unzip();
        Ok((
            row("baseline", "login", sessions, concurrency, &samples, took),
            steps,
            objects,
        ))
    }

    async fn baseline_logouts(
        &self,
        objects: &[BaselineObjects],
        concurrency: usize,
        sessions: usize,
    ) -> Result<LoginRow, ScaleError> {
        let client = &self.stage.server_client;
        let (samples, took) = batch(objects.len(), concurrency, |i| {
            login::baseline_logout(client, &objects[i])
        })
        .await?;
        Ok(row(
            "baseline",
            "logout",
            sessions,
            concurrency,
            &samples,
            took,
        ))
    }
}

fn row(
    who: &str,
    what: &str,
    sessions: usize,
    concurrency: usize,
    samples: &[Duration],
    took: Duration,
) -> LoginRow {
    let row = LoginRow {
        who: who.to_owned(),
        what: what.to_owned(),
        sessions,
        concurrency,
        latency: summarize(samples),
        per_second: samples.len() as f64 / took.as_secs_f64().max(1e-9),
        samples_ms: samples.iter().copied().map(ms).collect(),
    };
    eprintln!(
        "scale: {who} {what} at {sessions} sessions, {concurrency} at once: p50 {:.1} ms, p99 {:.1} ms, {:.1}/s",
        row.latency.p50_ms, row.latency.p99_ms, row.per_second
    );
    row
}

fn median(values: impl Iterator<Item = Duration>) -> f64 {
    let v: Vec<Duration> = values.collect();
    summarize(&v).p50_ms
}

/// Runs the whole scenario.
pub async fn run(config: Config) -> Result<Report, ScaleError> {
    let started = Timestamp::now();
    eprintln!("scale: starting the control plane");
    let stage = Stage::start(&config.testenv_bin, &config.deploy).await?;
    let admin = stage.kube.client();

    // The API server's own background (controllers, leases) with no tka-server running.
    let background_seconds = (config.idle_seconds / 2).max(10);
    let a0 = probe::apiserver_requests(&apiserver_metrics(&admin).await?);
    tokio::time::sleep(Duration::from_secs(background_seconds)).await;
    let a1 = probe::apiserver_requests(&apiserver_metrics(&admin).await?);
    let background_per_minute = per_minute(&probe::delta(&a0, &a1), background_seconds as f64);

    eprintln!("scale: starting {}", config.server_bin.display());
    let server = match &config.server_log_filter {
        Some(filter) => {
            let flags = ["--log-filter".to_owned(), filter.clone()];
            stage.start_server_with(&config.server_bin, &flags).await?
        }
        None => stage.start_server(&config.server_bin).await?,
    };
    let run = Run {
        stage: &stage,
        server: &server,
        ticks: probe::clock_ticks(),
        admin: admin.clone(),
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut idle = vec![run.idle(0, config.idle_seconds).await?];

    // Logins at 0 sessions: tka and the baseline side by side, at 1, 8 and 32 at once.
    let mut logins = Vec::new();
    let mut steps_all: Vec<BaselineSteps> = Vec::new();
    let mut whois_mean_ms = None;
    let long = |_: usize| Timestamp::now() + SignedDuration::from_hours(7);
    let mut live = 0;
    for (concurrency, n) in [
        (1, config.logins),
        (8, 2 * config.logins),
        (32, 4 * config.logins),
    ] {
        let m0 = server.metrics().await?;
        let (tka, users) = run.tka_logins(n, concurrency, 0).await?;
        if concurrency == 1 {
            let m1 = server.metrics().await?;
            let count = probe::sum_of(&m1, "tka_whois_duration_seconds_count")
                - probe::sum_of(&m0, "tka_whois_duration_seconds_count");
            let sum = probe::sum_of(&m1, "tka_whois_duration_seconds_sum")
                - probe::sum_of(&m0, "tka_whois_duration_seconds_sum");
            whois_mean_ms = (count > 0.0).then(|| sum / count * 1_000.0);
        }
        let (base, steps, objects) = run.baseline_logins(n, concurrency, 0).await?;
        logins.push(tka);
        logins.push(base);
        if concurrency == 1 {
            // The same path without the issuer: HTTP, PROXY header, whois, policy, JSON.
            let (samples, took) = batch(users.len(), 1, |i| {
                let user = &users[i];
                let server = &server;
                async move {
                    Ok(
                        login::tka_call(server, user, "GET", "/api/v1/cluster", None)
                            .await?
                            .1,
                    )
                }
            })
            .await?;
            logins.push(row("tka", "GET /api/v1/cluster", 0, 1, &samples, took));
            steps_all.extend(steps);
            logins.push(run.tka_logouts(&users, 1, 0).await?);
            logins.push(run.baseline_logouts(&objects, 1, 0).await?);
        } else {
            run.tka_logouts(&users, 8, 0).await?;
            run.baseline_logouts(&objects, 8, 0).await?;
        }
    }
    // tka-core's issuer alone, in this process, one at a time: the server's login without
    // HTTP, whois and policy. These sessions stay (they count as live below).
    let (made, took) = seed::seed(&stage, config.logins, 1, long).await?;
    let samples: Vec<Duration> = made.iter().map(|s| s.took).collect();
    logins.push(row("issuer in process", "login", 0, 1, &samples, took));
    live += config.logins;
    let breakdown = Breakdown {
        baseline_p50_ms: BTreeMap::from([
            (
                "1 create Session".to_owned(),
                median(steps_all.iter().map(|s| s.session)),
            ),
            (
                "2 create ServiceAccount".to_owned(),
                median(steps_all.iter().map(|s| s.service_account)),
            ),
            (
                "3 create ClusterRoleBinding".to_owned(),
                median(steps_all.iter().map(|s| s.binding)),
            ),
            (
                "4 TokenRequest".to_owned(),
                median(steps_all.iter().map(|s| s.token)),
            ),
            (
                "5 write Session status".to_owned(),
                median(steps_all.iter().map(|s| s.status)),
            ),
            (
                "all five writes".to_owned(),
                median(steps_all.iter().map(|s| s.total)),
            ),
            (
                "(not in the baseline) LIST Sessions by node label".to_owned(),
                median(steps_all.iter().map(|s| s.lookup)),
            ),
        ]),
        whois_mean_ms,
    };

    // 1,000 and then 10,000 live sessions (they end after the run).
    let mut seeding = Vec::new();
    for target in [config.mid_sessions, config.sessions] {
        let n = target.saturating_sub(live);
        eprintln!("scale: seeding {n} sessions");
        let (_, took) = seed::seed(&stage, n, config.seed_concurrency, long).await?;
        live = target;
        seeding.push(SeedRow {
            sessions: n,
            seconds: took.as_secs_f64(),
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        idle.push(run.idle(live, config.idle_seconds).await?);
    }

    // A full pass: a GrantMapping change makes the server re-validate every session.
    probe::reset_peak(server.pid)?;
    let (p0, s0) = run.passes().await?;
    let a0 = run.api_requests().await?;
    let c0 = run.proc()?;
    let window = Instant::now();
    let mappings: Api<GrantMapping> = Api::all(admin.clone());
    mappings
        .patch(
            ROLE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxTTL": "9h"}})),
        )
        .await
        .map_err(|e| ScaleError::new(format!("changing GrantMapping {ROLE}: {e}")))?;
    // Until a pass has completed and none completed for 5 s (passes that run back to back
    // keep the window open until the bound).
    let mut last = (p0, Instant::now());
    while window.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (p, _) = run.passes().await?;
        if p != last.0 {
            last = (p, Instant::now());
        } else if p > p0 && last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let c1 = run.proc()?;
    let (p1, s1) = run.passes().await?;
    let a1 = run.api_requests().await?;
    let passes = p1 - p0;
    let pass = PassRow {
        sessions: live,
        passes,
        window_s: window.elapsed().as_secs_f64(),
        cpu_s: (c1.cpu_ticks - c0.cpu_ticks) as f64 / run.ticks,
        mean_pass_s: (passes > 0.0).then(|| (s1 - s0) / passes),
        peak_kib: c1.hwm_kib,
        apiserver: probe::delta(&a0, &a1),
    };
    eprintln!("scale: forced pass: {pass:?}");

    // Logins at the large point.
    let (tka, users) = run.tka_logins(config.logins, 1, live).await?;
    let (base, _, objects) = run.baseline_logins(config.logins, 1, live).await?;
    logins.push(tka);
    logins.push(base);
    logins.push(run.tka_logouts(&users, 1, live).await?);
    logins.push(run.baseline_logouts(&objects, 1, live).await?);

    // Expiry lag: sessions ending evenly over the spread, starting once they can all be made.
    let rate = seeding
        .last()
        .map(|s| s.sessions as f64 / s.seconds.max(1e-3))
        .unwrap_or(50.0)
        .max(1.0);
    let margin = 15.0 + 1.5 * config.expiring as f64 / rate;
    let first_end = Timestamp::now() + SignedDuration::from_secs_f64(margin);
    let spread = config.spread_seconds as f64;
    let n = config.expiring.max(1);
    eprintln!(
        "scale: seeding {} sessions that end over {spread} s from {first_end}",
        config.expiring
    );
    let ends =
        move |i: usize| first_end + SignedDuration::from_secs_f64(spread * i as f64 / n as f64);
    let (expiring, _): (Vec<Seeded>, _) =
        seed::seed(&stage, config.expiring, config.seed_concurrency, ends).await?;
    let deadline = first_end + SignedDuration::from_secs_f64(spread + 180.0);
    let expiry = expiry::measure(admin.clone(), &expiring, deadline).await?;
    let expiry_summary = BTreeMap::from([
        (
            "service_account_gone".to_owned(),
            stats::summarize_ms(&expiry.service_account_gone_ms),
        ),
        (
            "token_refused".to_owned(),
            stats::summarize_ms(&expiry.token_refused_ms),
        ),
    ]);
    eprintln!("scale: expiry lag: {expiry_summary:?}");
    let final_hwm_kib = run.proc()?.hwm_kib;
    if config.server_log_filter.is_some() {
        let to = config.out.join("server.log");
        std::fs::create_dir_all(&config.out)
            .and_then(|()| std::fs::copy(server.process.log_path(), &to))
            .map_err(|e| {
                ScaleError::new(format!("copying the server's log to {}: {e}", to.display()))
            })?;
    }
    Ok(Report {
        started: started.to_string(),
        config,
        logins,
        breakdown,
        background_per_minute,
        idle,
        pass: Some(pass),
        seeding,
        expiry,
        expiry_summary,
        final_hwm_kib,
    })
}
