//! tka's CRDs on a real API server: they apply (server-side dry run, then for real), and the
//! GrantMapping validation rules (CEL) refuse bad objects and accept good ones.

use serde_json::{Value, json};
use tka_core::kubernetes::{GrantMapping, crds_yaml};
use tka_core::policy::GrantMappingSpec;
use tka_testkit::testenv::{KubeEnv, bin_dir_or_skip, exclusive};

use super::kubectl;

fn mapping(name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let spec = GrantMappingSpec {
        cluster_roles: vec!["view".to_owned()],
        default_ttl: Some("1h".to_owned()),
        max_ttl: Some("8h".to_owned()),
        ..GrantMappingSpec::default()
    };
    let mut object = serde_json::to_value(GrantMapping::new(name, spec)).unwrap();
    object["spec"]["subjects"] = json!([{ "user": "alice@example.com" }]);
    edit(&mut object["spec"]);
    object.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crds_apply_and_their_rules_refuse_bad_grant_mappings() {
    let Some(bin) = bin_dir_or_skip("the_crds_apply_and_their_rules_refuse_bad_grant_mappings")
    else {
        return;
    };
    let _permit = exclusive().await;
    let env = KubeEnv::start(&bin).await.unwrap();
    let (kubectl_bin, admin) = (env.kubectl(), env.admin_kubeconfig().to_path_buf());
    let yaml = crds_yaml();

    let dry = kubectl(
        &kubectl_bin,
        &admin,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&yaml),
    )
    .await;
    assert!(dry.ok, "server-side dry run: {dry:?}");
    assert!(dry.stdout.contains("grantmappings.tka.dev"), "{dry:?}");
    let none = kubectl(&kubectl_bin, &admin, &["get", "crd", "-o", "name"], None).await;
    assert!(
        none.ok && !none.stdout.contains("tka.dev"),
        "a dry run creates nothing: {none:?}"
    );

    let applied = kubectl(&kubectl_bin, &admin, &["apply", "-f", "-"], Some(&yaml)).await;
    assert!(applied.ok, "apply: {applied:?}");
    env.wait_crds_established().await.unwrap();
    let listed = kubectl(&kubectl_bin, &admin, &["get", "crd", "-o", "name"], None).await;
    assert!(
        listed.stdout.contains("grantmappings.tka.dev"),
        "{listed:?}"
    );
    assert!(listed.stdout.contains("sessions.tka.dev"), "{listed:?}");

    // Subjects: exactly one of user, tag or group.
    let good = mapping("one-subject-field", |_| {});
    let accepted = kubectl(&kubectl_bin, &admin, &["apply", "-f", "-"], Some(&good)).await;
    assert!(accepted.ok, "a subject with one field: {accepted:?}");
    let two_fields = mapping("two-subject-fields", |spec| {
        spec["subjects"] = json!([{ "user": "alice@example.com", "tag": "tag:ci" }]);
    });
    let refused = kubectl(
        &kubectl_bin,
        &admin,
        &["apply", "-f", "-"],
        Some(&two_fields),
    )
    .await;
    assert!(
        !refused.ok,
        "a subject with two fields must be refused: {refused:?}"
    );
    assert!(
        refused.stderr.contains("exactly one of user, tag or group"),
        "{refused:?}"
    );

    // Durations: the default must not exceed the maximum.
    let inverted = mapping("default-over-max", |spec| {
        let fields: Vec<String> = spec.as_object().unwrap().keys().cloned().collect();
        for field in fields {
            if field.eq_ignore_ascii_case("defaultTtl") {
                spec[&field] = json!("9h");
            }
        }
    });
    let refused = kubectl(&kubectl_bin, &admin, &["apply", "-f", "-"], Some(&inverted)).await;
    assert!(
        !refused.ok,
        "defaultTTL 9h > maxTTL 8h must be refused: {refused:?}"
    );
    assert!(
        refused.stderr.contains("must not be longer than"),
        "{refused:?}"
    );
    let within = mapping("default-within-max", |spec| {
        let fields: Vec<String> = spec.as_object().unwrap().keys().cloned().collect();
        for field in fields {
            if field.eq_ignore_ascii_case("defaultTtl") {
                spec[&field] = json!("8h");
            }
        }
    });
    let accepted = kubectl(&kubectl_bin, &admin, &["apply", "-f", "-"], Some(&within)).await;
    assert!(accepted.ok, "defaultTTL equal to maxTTL: {accepted:?}");

    let stored = kubectl(
        &kubectl_bin,
        &admin,
        &["get", "grantmappings", "-o", "name"],
        None,
    )
    .await;
    assert!(stored.stdout.contains("one-subject-field"), "{stored:?}");
    assert!(stored.stdout.contains("default-within-max"), "{stored:?}");
    assert!(!stored.stdout.contains("two-subject-fields"), "{stored:?}");
    assert!(!stored.stdout.contains("default-over-max"), "{stored:?}");
}
