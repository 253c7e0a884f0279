//! The stage of the scale run: [`tka_testkit::testenv::devices`]'s control plane set up as
//! `tka-server/deploy` makes it, a `viewer` GrantMapping, a fake LocalAPI answering the server's
//! whois for any number of synthetic users, and the built `tka-server serve` (release) in
//! PROXY-protocol mode on 127.0.0.2 so one load generator can speak for many devices. The
//! benchmarks and the soak test share that stage; this module names it as the benchmarks do and
//! adds the API server's metrics. It must not talk to anything but loopback.

use tka_testkit::testenv::TestEnvError;
pub use tka_testkit::testenv::devices::{
    CLUSTER, Device as User, DeviceStage as Stage, NS, ROLE, StageServer as Server,
};

use super::ScaleError;
use super::probe;

impl From<TestEnvError> for ScaleError {
    fn from(e: TestEnvError) -> Self {
        Self::from_display(e)
    }
}

/// The API server's own metrics (admin access).
pub async fn apiserver_metrics(client: &kube::Client) -> Result<probe::Series, ScaleError> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(ScaleError::from_display)?;
    let text = client
        .request_text(request)
        .await
        .map_err(|e| ScaleError::new(format!("reading the API server's /metrics: {e}")))?;
    Ok(probe::parse_prometheus(&text))
}
