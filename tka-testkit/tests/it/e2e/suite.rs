//! The Kubernetes backend's behaviour suite against a real kube-apiserver (a fresh control
//! plane per case). The fault-injection cases run only against FakeCluster (`suite.rs`).

tka_testkit::behaviour_suite!(
    tka_testkit::testenv::RealClusterBackend::start();
    when tka_testkit::testenv::bin_dir_or_skip("e2e behaviour suite").is_some()
);
