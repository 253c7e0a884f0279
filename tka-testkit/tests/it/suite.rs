//! The Kubernetes backend's behaviour suite (issuer and reconciler) against FakeCluster, with
//! fault injection and the call log. The end-to-end tests run the same suite against a real
//! kube-apiserver.

tka_testkit::behaviour_suite!(tka_testkit::suite::FakeClusterBackend::start(); faults);
