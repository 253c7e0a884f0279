//! Micro-benchmarks of the pure work on tka's hot paths: capability parsing and policy
//! resolution (every login), whois JSON parsing (every request), the kubeconfig merge (`tka
//! login`) and the token-cache decision with ExecCredential rendering (`tka credential`).
//!
//! Run with `cargo bench -p tka-benches --bench core`. Inputs come from `tka_benches::fixtures`.

use divan::{Bencher, black_box};
use tka_benches::{fixtures, or_exit};
use tka_core::identity::{CapabilityNames, wire};
use tka_core::kubeconfig::{ContextTemplate, Kubeconfig};
use tka_core::token_cache::{self, CachedToken};
use tka_core::{ParsedGrants, PolicyContext, ResolveRequest, resolve};

fn main() {
    divan::main();
}

/// A whois answer of tailscaled (current version) for a user's device.
const WHOIS: &[u8] =
    include_bytes!("../../tka-core/tests/fixtures/localapi/whois-user-current.json");

mod policy {
    use super::*;

    /// Five capability values (one glob) into grants.
    #[divan::bench]
    fn parse_capabilities(bencher: Bencher<'_, '_>) {
        let identity = or_exit(fixtures::identity("nALICELAPTOP"));
        bencher.bench(|| ParsedGrants::from_identity(black_box(&identity)));
    }

    /// `resolve` against twenty GrantMappings, grants already parsed.
    #[divan::bench]
    fn resolve_parsed(bencher: Bencher<'_, '_>) {
        let identity = or_exit(fixtures::identity("nALICELAPTOP"));
        let grants = ParsedGrants::from_identity(&identity);
        let mappings = or_exit(fixtures::mappings());
        let cluster = or_exit(fixtures::cluster());
        let settings = or_exit(fixtures::policy_settings());
        let now = or_exit(fixtures::now());
        bencher.bench(|| {
            let request = ResolveRequest {
                context: PolicyContext {
                    identity: &identity,
                    grants: &grants,
                    mappings: &mappings,
                    cluster: &cluster,
                    settings: &settings,
                },
                role: None,
                ttl: Some("90m".into()),
                now,
            };
            resolve(black_box(&request)).is_ok()
        });
    }

    /// What a login does: parse the grants, then resolve.
    #[divan::bench]
    fn parse_and_resolve(bencher: Bencher<'_, '_>) {
        let identity = or_exit(fixtures::identity("nALICELAPTOP"));
        let mappings = or_exit(fixtures::mappings());
        let cluster = or_exit(fixtures::cluster());
        let settings = or_exit(fixtures::policy_settings());
        let now = or_exit(fixtures::now());
        bencher.bench(|| {
            let grants = ParsedGrants::from_identity(black_box(&identity));
            let request = ResolveRequest {
                context: PolicyContext {
                    identity: &identity,
                    grants: &grants,
                    mappings: &mappings,
                    cluster: &cluster,
                    settings: &settings,
                },
                role: None,
                ttl: Some("90m".into()),
                now,
            };
            resolve(&request).is_ok()
        });
    }
}

mod whois {
    use super::*;

    /// tailscaled's whois JSON into an `Identity`.
    #[divan::bench]
    fn parse_whois(bencher: Bencher<'_, '_>) {
        let names = CapabilityNames::default();
        bencher
            .counter(divan::counter::BytesCount::new(WHOIS.len()))
            .bench(|| wire::parse_whois(black_box(WHOIS), &names).is_ok());
    }
}

mod kubeconfig {
    use super::*;

    /// `tka login`'s merge into a 50-context kubeconfig: parse, merge, render.
    #[divan::bench]
    fn parse_merge_render_50(bencher: Bencher<'_, '_>) {
        let text = fixtures::kubeconfig_text(50);
        let entries = or_exit(fixtures::login_entries(&ContextTemplate::default()));
        bencher
            .counter(divan::counter::BytesCount::new(text.len()))
            .bench(|| {
                let Ok(mut config) = Kubeconfig::parse(black_box(&text)) else {
                    return 0;
                };
                if config.login(&entries, true).is_err() {
                    return 0;
                }
                config.render().map(|s| s.len()).unwrap_or(0)
            });
    }

    /// The merge alone, on an already parsed 50-context kubeconfig.
    #[divan::bench]
    fn merge_only_50(bencher: Bencher<'_, '_>) {
        let text = fixtures::kubeconfig_text(50);
        let entries = or_exit(fixtures::login_entries(&ContextTemplate::default()));
        let parsed = Kubeconfig::parse(&text);
        bencher
            .with_inputs(|| parsed.clone())
            .bench_local_values(|config| {
                config
                    .and_then(|mut c| c.login(black_box(&entries), true))
                    .is_ok()
            });
    }
}

mod token_cache_hit {
    use super::*;

    /// The whole in-process cache hit of `tka credential`: read the entry's JSON, decide,
    /// render the ExecCredential.
    #[divan::bench]
    fn parse_decide_render(bencher: Bencher<'_, '_>) {
        let now = or_exit(fixtures::now());
        let key = or_exit(fixtures::cache_key());
        let entry = or_exit(fixtures::cached_token(now));
        let Ok(bytes) = entry.to_json() else {
            return;
        };
        let last_handout = Some(now - jiff::SignedDuration::from_mins(5));
        bencher
            .counter(divan::counter::BytesCount::new(bytes.len()))
            .bench(|| {
                let entry = CachedToken::parse_for(black_box(bytes.as_bytes()), &key);
                match token_cache::decide(entry.as_ref(), last_handout, now) {
                    token_cache::CacheDecision::Reuse => {
                        entry.map(|e| e.exec_credential().len()).unwrap_or(0)
                    }
                    token_cache::CacheDecision::Refresh(_) => 0,
                }
            });
    }

    /// The decision alone.
    #[divan::bench]
    fn decide(bencher: Bencher<'_, '_>) {
        let now = or_exit(fixtures::now());
        let entry = or_exit(fixtures::cached_token(now));
        let last_handout = Some(now - jiff::SignedDuration::from_mins(5));
        bencher.bench(|| token_cache::decide(black_box(Some(&entry)), last_handout, now));
    }

    /// ExecCredential rendering alone.
    #[divan::bench]
    fn render_exec_credential(bencher: Bencher<'_, '_>) {
        let now = or_exit(fixtures::now());
        let entry = or_exit(fixtures::cached_token(now));
        bencher.bench(|| black_box(&entry).exec_credential());
    }
}
