//! Log output: `tracing-subscriber` writing JSON lines (for collectors) or pretty lines (for a
//! terminal) to stderr, filtered by `--log-filter`. Audit records are ordinary events with target
//! `tka::audit`, so they travel the same way and can be routed by target. This module only
//! installs the subscriber.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Fails if the filter does not parse or one is installed.
pub fn init(
    format: LogFormat,
    filter: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    }
}
