//! OpenAPI schemas (feature `openapi`) for the domain types that appear in the API's wire types
//! but serialize as plain strings: names and TTLs. The structs of [`crate::api`] and the policy
//! listings derive `utoipa::ToSchema` themselves; this module only covers the types whose serde
//! form a derive cannot see (custom `Serialize`, `try_from`/`into` strings). It does no I/O and
//! describes the wire format; it never changes it.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::{ClusterName, NodeId, RoleName, SessionName, Ttl};

fn string_schema(description: &str, pattern: Option<&str>, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .description(Some(description))
        .pattern(pattern)
        .examples([serde_json::Value::String(example.to_owned())])
        .into()
}

macro_rules! string_schema {
    ($ty:ty, $name:literal, $description:literal, $pattern:expr, $example:literal) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                string_schema($description, $pattern, $example)
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

const DNS1123_LABEL: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

string_schema!(
    ClusterName,
    "ClusterName",
    "A cluster's name: a DNS-1123 label.",
    Some(DNS1123_LABEL),
    "prod-eu"
);
string_schema!(
    RoleName,
    "RoleName",
    "A role: the name of a GrantMapping (a DNS-1123 subdomain).",
    Some("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
    "sre"
);
string_schema!(
    SessionName,
    "SessionName",
    "The name of a session and of the ServiceAccount it owns.",
    Some(DNS1123_LABEL),
    "tka-alice-7k2m9"
);
string_schema!(
    NodeId,
    "NodeId",
    "A Tailscale node's stable ID.",
    None,
    "nBvQmCNTRL"
);
string_schema!(
    Ttl,
    "Ttl",
    "A duration in Go notation (`90m`, `8h`, `1h30m`), at least one second.",
    Some("^([0-9]+(\\.[0-9]+)?(h|m|s|ms))+$"),
    "1h30m"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_string_components() {
        assert_eq!(RoleName::name(), "RoleName");
        let RefOr::T(Schema::Object(object)) = Ttl::schema() else {
            panic!("a TTL is an inline string schema");
        };
        assert!(object.schema_type == SchemaType::Type(Type::String));
        let json = serde_json::to_value(RoleName::schema()).unwrap();
        assert_eq!(json["type"], "string");
        assert_eq!(json["examples"][0], "sre");
    }
}
