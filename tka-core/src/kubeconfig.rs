//! The kubeconfig entries tka owns, and how they are merged into and removed from a user's
//! kubeconfig without disturbing anything else. Pure: text in, text out; the file (which one,
//! locking, atomic writes) is the caller's business.
//!
//! A kubeconfig is handled as a YAML value tree. tka touches only entries it wrote itself: a
//! cluster, a user and a context, all named after the context (default `tka-<cluster>`), each
//! carrying a `tka.dev/login` extension. Every other entry, field and top-level key is left
//! exactly as it was (comments are the one thing a YAML round trip cannot keep). An entry with
//! tka's name that lacks the marker belongs to someone else and is never overwritten.
//!
//! The entries are built here from data fields of the server's answer ([`ClusterEndpoint`]):
//! nothing executable and no TLS switches from a server ever reach the file. The user entry runs
//! `tka credential` (the kubectl exec plugin), or embeds the token with `--static`.
//!
//! Switching: a login makes its context current unless told not to, and records what was current
//! before (extension `tka.dev/previous-context`), so that logging out of the current tka context
//! restores it. Those records form chains through tka contexts; logout splices them, so after
//! logging out of everything the original current-context is back.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::api::ClusterEndpoint;
use crate::domain::{ClusterName, is_dns1123_label};
use crate::endpoint::{ServerUrl, Socks5Addr};
use crate::secret::Secret;

/// The extension that marks a cluster, user or context entry as tka's, with [`LoginMarker`] data.
pub const LOGIN_EXTENSION: &str = "tka.dev/login";
/// The context extension recording the current-context before tka switched to this context.
pub const PREVIOUS_CONTEXT_EXTENSION: &str = "tka.dev/previous-context";
/// The exec credential API version tka speaks.
pub const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1";
/// The default context name template.
pub const DEFAULT_CONTEXT_TEMPLATE: &str = "tka-{cluster}";

/// Why a kubeconfig could not be read or changed. The file is never written when this is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KubeconfigError {
    /// The text is not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// The YAML is not shaped like a kubeconfig.
    #[error("not a kubeconfig: {0}")]
    Shape(String),
    /// An entry with tka's name exists and was not written by tka.
    #[error(
        "a {kind} named {name:?} already exists and was not written by tka; choose another context name with --context-name"
    )]
    ForeignEntry {
        /// `cluster`, `user` or `context`.
        kind: &'static str,
        /// The entry's name.
        name: String,
    },
    /// A context name template that cannot be used.
    #[error(
        "invalid context name template {template:?}: {reason}; write it like tka-{{cluster}} or my-{{cluster}}"
    )]
    Template {
        /// What was given.
        template: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A namespace that is not a DNS-1123 label.
    #[error(
        "invalid namespace {0:?}; namespaces are lowercase letters, digits and '-', at most 63 characters"
    )]
    Namespace(String),
    /// The server sent a cluster endpoint that cannot go into a kubeconfig.
    #[error(
        "the server sent an unusable cluster endpoint: {0}; ask the cluster's operator to check the tka-server configuration"
    )]
    Endpoint(String),
    /// Serializing failed (not expected for a tree that was parsed from YAML).
    #[error("cannot write the kubeconfig as YAML: {0}")]
    Render(String),
}

/// The file kubectl itself would write to, by client-go's rule: with `KUBECONFIG` set (a
/// path list), the first listed file that exists, else the last one listed; without it (or with
/// it empty) `~/.kube/config`. `exists` is asked about files; nothing else is read.
///
/// ```
/// use std::path::{Path, PathBuf};
/// use tka_core::kubeconfig::destination;
/// let home = Path::new("/home/alice");
/// let only_b = |p: &Path| p == Path::new("/b");
/// assert_eq!(destination(Some("/a:/b:/c".as_ref()), Some(home), only_b), Some(PathBuf::from("/b")));
/// assert_eq!(destination(Some("/a:/c".as_ref()), Some(home), only_b), Some(PathBuf::from("/c")));
/// assert_eq!(destination(None, Some(home), only_b), Some(PathBuf::from("/home/alice/.kube/config")));
/// ```
pub fn destination(
    kubeconfig_env: Option<&OsStr>,
    home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mut listed: Vec<PathBuf> = Vec::new();
    if let Some(env) = kubeconfig_env {
        for path in std::env::split_paths(env) {
            if !path.as_os_str().is_empty() && !listed.contains(&path) {
                listed.push(path);
            }
        }
    }
    if listed.is_empty() {
        return home.map(|h| h.join(".kube").join("config"));
    }
    listed
        .iter()
        .find(|p| exists(p))
        .or_else(|| listed.last())
        .cloned()
}

/// A context name template: text with `{cluster}` standing for the cluster's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextTemplate(String);

impl ContextTemplate {
    /// Validates a template. Braces other than `{cluster}` are refused so a typo such as
    /// `{clustre}` does not end up in a context name.
    ///
    /// ```
    /// use tka_core::{ClusterName, kubeconfig::ContextTemplate};
    /// let prod = ClusterName::new("prod").unwrap();
    /// assert_eq!(ContextTemplate::default().render(&prod), "tka-prod");
    /// assert_eq!(ContextTemplate::parse("{cluster}-admin").unwrap().render(&prod), "prod-admin");
    /// assert!(ContextTemplate::parse("{clustre}").is_err());
    /// ```
    pub fn parse(template: &str) -> Result<Self, KubeconfigError> {
        let err = |reason| KubeconfigError::Template {
            template: template.to_owned(),
            reason,
        };
        if template.is_empty() {
            return Err(err("it is empty"));
        }
        if template
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(err("it contains spaces or control characters"));
        }
        if template.replace("{cluster}", "").contains(['{', '}']) {
            return Err(err("the only placeholder is {cluster}"));
        }
        if template.len() > 190 {
            return Err(err("it is longer than 190 characters"));
        }
        Ok(Self(template.to_owned()))
    }

    /// The context name for a cluster.
    pub fn render(&self, cluster: &ClusterName) -> String {
        self.0.replace("{cluster}", cluster.as_str())
    }
}

impl Default for ContextTemplate {
    fn default() -> Self {
        Self(DEFAULT_CONTEXT_TEMPLATE.to_owned())
    }
}

/// What tka records on each of its entries (extension [`LOGIN_EXTENSION`]): enough to find the
/// login again (logout, prompt) without any other state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginMarker {
    /// The cluster's name.
    pub cluster: ClusterName,
    /// The tka server the login went to.
    pub server: ServerUrl,
    /// The local identity the login was made as (see [`crate::token_cache::CacheKey`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// How kubectl gets its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCredential {
    /// The exec plugin: kubectl runs `command credential …`, which refreshes silently within
    /// the session. `command` is the absolute path of the `tka` binary.
    Exec {
        /// The absolute path of the `tka` binary.
        command: String,
    },
    /// The token itself, embedded (`--static`); it stops working when it expires.
    Static {
        /// The bearer token.
        token: Secret<String>,
    },
}

/// What a login needs besides the server's cluster endpoint.
#[derive(Debug, Clone)]
pub struct EntryOptions<'a> {
    /// Names the context (and the cluster and user entries).
    pub template: &'a ContextTemplate,
    /// The tka server the login went to.
    pub server: &'a ServerUrl,
    /// The local identity (part of the token cache key), if known.
    pub identity: Option<&'a str>,
    /// The explicit SOCKS5 proxy, if any: it becomes the cluster's `proxy-url` and the exec
    /// plugin's `--socks5`.
    pub socks5: Option<&'a Socks5Addr>,
    /// The context's default namespace.
    pub namespace: Option<&'a str>,
    /// The user entry's credential.
    pub credential: UserCredential,
}

/// tka's three entries for one login, built from data only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginEntries {
    context: String,
    marker: LoginMarker,
    api_server: ServerUrl,
    certificate_authority_data: Option<String>,
    socks5: Option<Socks5Addr>,
    namespace: Option<String>,
    credential: UserCredential,
}

impl LoginEntries {
    /// Builds the entries from the server's cluster endpoint. The API server URL must be plain
    /// `http(s)://host[:port][/path]` and the CA data base64; when the endpoint names a tka proxy,
    /// the proxy is the server (and the cluster's own CA does not apply to it).
    pub fn new(
        endpoint: &ClusterEndpoint,
        options: EntryOptions<'_>,
    ) -> Result<Self, KubeconfigError> {
        let via_proxy = endpoint.proxy.is_some();
        let raw_server = endpoint.proxy.as_deref().unwrap_or(&endpoint.server);
        let api_server =
            ServerUrl::parse(raw_server).map_err(|e| KubeconfigError::Endpoint(e.to_string()))?;
        let certificate_authority_data = match &endpoint.certificate_authority_data {
            Some(ca) if !via_proxy => {
                if ca.is_empty()
                    || !ca
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                {
                    return Err(KubeconfigError::Endpoint(
                        "certificateAuthorityData is not base64".to_owned(),
                    ));
                }
                Some(ca.clone())
            }
            _ => None,
        };
        if let Some(ns) = options.namespace
            && !is_dns1123_label(ns)
        {
            return Err(KubeconfigError::Namespace(ns.to_owned()));
        }
        Ok(Self {
            context: options.template.render(&endpoint.name),
            marker: LoginMarker {
                cluster: endpoint.name.clone(),
                server: options.server.clone(),
                identity: options.identity.map(str::to_owned),
            },
            api_server,
            certificate_authority_data,
            socks5: options.socks5.cloned(),
            namespace: options.namespace.map(str::to_owned),
            credential: options.credential,
        })
    }

    /// The context name (also the cluster and user entries' name).
    pub fn context_name(&self) -> &str {
        &self.context
    }

    /// The marker recorded on the entries.
    pub fn marker(&self) -> &LoginMarker {
        &self.marker
    }

    /// The Kubernetes API server URL written to the cluster entry.
    pub fn api_server(&self) -> &ServerUrl {
        &self.api_server
    }

    /// The arguments kubectl passes to `tka` for a token:
    /// `credential CLUSTER --server URL [--identity ID] [--socks5 HOST:PORT]`.
    pub fn exec_args(&self) -> Vec<String> {
        let mut args = vec![
            "credential".to_owned(),
            self.marker.cluster.to_string(),
            "--server".to_owned(),
            self.marker.server.to_string(),
        ];
        if let Some(id) = &self.marker.identity {
            args.push("--identity".to_owned());
            args.push(id.clone());
        }
        if let Some(socks5) = &self.socks5 {
            args.push("--socks5".to_owned());
            args.push(socks5.to_string());
        }
        args
    }

    fn install_hint(&self) -> String {
        format!(
            "This context gets its credentials from tka (Tailscale Kubernetes Auth). Install tka \
             from https://github.com/tka-dev/tka and run `tka login {}`.",
            self.marker.cluster
        )
    }

    fn marker_extension(&self) -> Value {
        let mut ext = Mapping::new();
        ext.insert(str_value("name"), str_value(LOGIN_EXTENSION));
        // A marker is plain strings; serializing it cannot fail, and an empty value is harmless.
        let marker = serde_yaml::to_value(&self.marker).unwrap_or(Value::Null);
        ext.insert(str_value("extension"), marker);
        Value::Mapping(ext)
    }

    fn cluster_entry(&self) -> Value {
        let mut body = Mapping::new();
        body.insert(str_value("server"), str_value(self.api_server.as_str()));
        if let Some(ca) = &self.certificate_authority_data {
            body.insert(str_value("certificate-authority-data"), str_value(ca));
        }
        if let Some(socks5) = &self.socks5 {
            body.insert(
                str_value("proxy-url"),
                str_value(&socks5.kubeconfig_proxy_url()),
            );
        }
        body.insert(
            str_value("extensions"),
            Value::Sequence(vec![self.marker_extension()]),
        );
        named(&self.context, "cluster", body)
    }

    fn user_entry(&self) -> Value {
        let mut body = Mapping::new();
        match &self.credential {
            UserCredential::Exec { command } => {
                let mut exec = Mapping::new();
                exec.insert(str_value("apiVersion"), str_value(EXEC_API_VERSION));
                exec.insert(str_value("command"), str_value(command));
                exec.insert(
                    str_value("args"),
                    Value::Sequence(self.exec_args().iter().map(|a| str_value(a)).collect()),
                );
                exec.insert(str_value("installHint"), str_value(&self.install_hint()));
                exec.insert(str_value("interactiveMode"), str_value("Never"));
                exec.insert(str_value("provideClusterInfo"), Value::Bool(false));
                body.insert(str_value("exec"), Value::Mapping(exec));
            }
            UserCredential::Static { token } => {
                body.insert(str_value("token"), str_value(token.expose()));
            }
        }
        body.insert(
            str_value("extensions"),
            Value::Sequence(vec![self.marker_extension()]),
        );
        named(&self.context, "user", body)
    }

    fn context_entry(&self, previous: Option<&Value>) -> Value {
        let mut body = Mapping::new();
        body.insert(str_value("cluster"), str_value(&self.context));
        body.insert(str_value("user"), str_value(&self.context));
        if let Some(ns) = &self.namespace {
            body.insert(str_value("namespace"), str_value(ns));
        }
        let mut prev = Mapping::new();
        if let Some(p) = previous {
            prev.insert(str_value("context"), p.clone());
        }
        let mut prev_ext = Mapping::new();
        prev_ext.insert(str_value("name"), str_value(PREVIOUS_CONTEXT_EXTENSION));
        prev_ext.insert(str_value("extension"), Value::Mapping(prev));
        body.insert(
            str_value("extensions"),
            Value::Sequence(vec![self.marker_extension(), Value::Mapping(prev_ext)]),
        );
        named(&self.context, "context", body)
    }
}

/// A tka context found in a kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TkaContext {
    /// The context's name.
    pub name: String,
    /// What tka recorded on it.
    pub marker: LoginMarker,
    /// Whether it is the current context.
    pub current: bool,
}

/// What a login changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginChange {
    /// The context written.
    pub context: String,
    /// Whether it replaced an earlier tka context of that name.
    pub replaced: bool,
    /// Whether it became the current context.
    pub switched: bool,
    /// The context logout will return to, if this one is current then (`None`: no
    /// current-context).
    pub previous_context: Option<String>,
}

/// What a logout changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutChange {
    /// The context removed.
    pub context: String,
    /// Set when the removed context was current: the current-context now (`None`: unset).
    pub restored: Option<Option<String>>,
}

const LISTS: [(&str, &str, &str); 3] = [
    ("clusters", "cluster", "cluster"),
    ("users", "user", "user"),
    ("contexts", "context", "context"),
];

/// A kubeconfig as a YAML value tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Kubeconfig {
    root: Mapping,
}

impl Default for Kubeconfig {
    fn default() -> Self {
        let mut root = Mapping::new();
        root.insert(str_value("apiVersion"), str_value("v1"));
        root.insert(str_value("kind"), str_value("Config"));
        root.insert(str_value("preferences"), Value::Mapping(Mapping::new()));
        root.insert(str_value("clusters"), Value::Sequence(Vec::new()));
        root.insert(str_value("users"), Value::Sequence(Vec::new()));
        root.insert(str_value("contexts"), Value::Sequence(Vec::new()));
        Self { root }
    }
}

impl Kubeconfig {
    /// Parses a kubeconfig. An empty file (or one with only comments) is an empty kubeconfig.
    /// `clusters`, `users` and `contexts` must be lists when present.
    pub fn parse(text: &str) -> Result<Self, KubeconfigError> {
        let value: Value =
            serde_yaml::from_str(text).map_err(|e| KubeconfigError::Yaml(e.to_string()))?;
        let root = match value {
            Value::Null => Mapping::new(),
            Value::Mapping(m) => m,
            _ => {
                return Err(KubeconfigError::Shape(
                    "the top level is not a mapping".to_owned(),
                ));
            }
        };
        for (key, _, _) in LISTS {
            match root.get(key) {
                None | Some(Value::Null | Value::Sequence(_)) => {}
                Some(_) => {
                    return Err(KubeconfigError::Shape(format!("`{key}` is not a list")));
                }
            }
        }
        if let Some(v) = root.get("current-context")
            && !matches!(v, Value::String(_) | Value::Null)
        {
            return Err(KubeconfigError::Shape(
                "`current-context` is not a string".to_owned(),
            ));
        }
        Ok(Self { root })
    }

    /// A kubeconfig holding only `entries`, with their context current: the private file of
    /// `tka shell`.
    pub fn only(entries: &LoginEntries) -> Self {
        let mut config = Self::default();
        // An empty kubeconfig has no entries that could conflict.
        let _ = config.login(entries, true);
        config
    }

    /// The kubeconfig as YAML.
    pub fn render(&self) -> Result<String, KubeconfigError> {
        serde_yaml::to_string(&self.root).map_err(|e| KubeconfigError::Render(e.to_string()))
    }

    /// The current context's name, if set and not empty.
    pub fn current_context(&self) -> Option<&str> {
        match self.root.get("current-context") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// The contexts tka wrote, in file order.
    pub fn tka_contexts(&self) -> Vec<TkaContext> {
        let current = self.current_context();
        self.items("contexts")
            .iter()
            .filter_map(|item| {
                let name = entry_name(item)?;
                let marker = marker_of(item, "context")?;
                Some(TkaContext {
                    name: name.to_owned(),
                    current: current == Some(name),
                    marker,
                })
            })
            .collect()
    }

    /// Fails when a login under context name `context` would have to overwrite an entry that is
    /// not tka's; lets a caller find out before asking a server for a session.
    pub fn check_login(&self, context: &str) -> Result<(), KubeconfigError> {
        for (key, body, kind) in LISTS {
            if let Some(i) = find(self.items(key), context)
                && marker_of(&self.items(key)[i], body).is_none()
            {
                return Err(KubeconfigError::ForeignEntry {
                    kind,
                    name: context.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Merges a login's entries. Fails, changing nothing, when an entry of that name exists and
    /// is not tka's. With `switch` the context becomes current.
    pub fn login(
        &mut self,
        entries: &LoginEntries,
        switch: bool,
    ) -> Result<LoginChange, KubeconfigError> {
        let name = entries.context_name();
        self.check_login(name)?;
        let existing =
            find(self.items("contexts"), name).map(|i| self.items("contexts")[i].clone());
        let old_previous = existing.as_ref().and_then(previous_of);
        let current = self.root.get("current-context").cloned();
        let name_value = str_value(name);
        let previous = match (switch, &existing) {
            (true, Some(_)) if current.as_ref() == Some(&name_value) => old_previous,
            (true, Some(_)) => {
                self.splice_previous(name, old_previous.as_ref());
                current
            }
            (true, None) | (false, None) => current,
            (false, Some(_)) => old_previous,
        };
        for (key, entry) in [
            ("clusters", entries.cluster_entry()),
            ("users", entries.user_entry()),
            ("contexts", entries.context_entry(previous.as_ref())),
        ] {
            if let Some(items) = self.items_mut(key) {
                upsert(items, name, entry);
            }
        }
        if switch {
            self.root.insert(str_value("current-context"), name_value);
        }
        Ok(LoginChange {
            context: name.to_owned(),
            replaced: existing.is_some(),
            switched: switch,
            previous_context: previous.as_ref().and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// Removes a tka context and the cluster and user entries it uses (when they are tka's and
    /// nothing else uses them). If it was current, the context it replaced becomes current
    /// again. `None` when there is no tka context of that name (a foreign one is left alone).
    pub fn logout(&mut self, context: &str) -> Option<LogoutChange> {
        let index = find(self.items("contexts"), context)?;
        let item = self.items("contexts")[index].clone();
        marker_of(&item, "context")?;
        let previous = previous_of(&item);
        let name_value = str_value(context);
        let restored = if self.root.get("current-context") == Some(&name_value) {
            match &previous {
                Some(p) => {
                    self.root.insert(str_value("current-context"), p.clone());
                }
                None => {
                    self.root.shift_remove("current-context");
                }
            }
            Some(previous.as_ref().and_then(Value::as_str).map(str::to_owned))
        } else {
            None
        };
        self.splice_previous(context, previous.as_ref());
        if let Some(contexts) = self.items_mut("contexts") {
            contexts.remove(index);
        }
        let body = item.get("context");
        for (key, field) in [("clusters", "cluster"), ("users", "user")] {
            let Some(entry) = body.and_then(|b| b.get(field)).and_then(Value::as_str) else {
                continue;
            };
            let still_used = self.items("contexts").iter().any(|c| {
                c.get("context")
                    .and_then(|b| b.get(field))
                    .and_then(Value::as_str)
                    == Some(entry)
            });
            if still_used {
                continue;
            }
            if let Some(i) = find(self.items(key), entry)
                && marker_of(&self.items(key)[i], field).is_some()
                && let Some(items) = self.items_mut(key)
            {
                items.remove(i);
            }
        }
        Some(LogoutChange {
            context: context.to_owned(),
            restored,
        })
    }

    /// Makes every tka context that would return to `context` return to `replacement` instead.
    fn splice_previous(&mut self, context: &str, replacement: Option<&Value>) {
        let target = str_value(context);
        let Some(contexts) = self.items_mut("contexts") else {
            return;
        };
        for item in contexts {
            if entry_name(item) == Some(context) || marker_of(item, "context").is_none() {
                continue;
            }
            if previous_of(item).as_ref() == Some(&target) {
                set_previous(item, replacement);
            }
        }
    }

    fn items(&self, key: &str) -> &[Value] {
        match self.root.get(key) {
            Some(Value::Sequence(s)) => s,
            _ => &[],
        }
    }

    /// The list under `key`, created when absent or `null` (`parse` refuses other non-lists).
    fn items_mut(&mut self, key: &str) -> Option<&mut Vec<Value>> {
        let slot = self.root.entry(str_value(key)).or_insert(Value::Null);
        if slot.is_null() {
            *slot = Value::Sequence(Vec::new());
        }
        slot.as_sequence_mut()
    }

    #[cfg(test)]
    pub(crate) fn root(&self) -> &Mapping {
        &self.root
    }
}

fn str_value(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn named(name: &str, body_key: &str, body: Mapping) -> Value {
    let mut entry = Mapping::new();
    entry.insert(str_value("name"), str_value(name));
    entry.insert(str_value(body_key), Value::Mapping(body));
    Value::Mapping(entry)
}

fn entry_name(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

fn find(items: &[Value], name: &str) -> Option<usize> {
    items.iter().position(|i| entry_name(i) == Some(name))
}

fn upsert(items: &mut Vec<Value>, name: &str, entry: Value) {
    match find(items, name) {
        Some(i) => items[i] = entry,
        None => items.push(entry),
    }
}

fn extension<'a>(item: &'a Value, body_key: &str, ext_name: &str) -> Option<&'a Value> {
    item.get(body_key)?
        .get("extensions")?
        .as_sequence()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(ext_name))?
        .get("extension")
}

fn marker_of(item: &Value, body_key: &str) -> Option<LoginMarker> {
    serde_yaml::from_value(extension(item, body_key, LOGIN_EXTENSION)?.clone()).ok()
}

fn previous_of(item: &Value) -> Option<Value> {
    extension(item, "context", PREVIOUS_CONTEXT_EXTENSION)?
        .get("context")
        .cloned()
}

fn set_previous(item: &mut Value, previous: Option<&Value>) {
    let Some(exts) = item
        .get_mut("context")
        .and_then(|b| b.get_mut("extensions"))
        .and_then(Value::as_sequence_mut)
    else {
        return;
    };
    let mut value = Mapping::new();
    if let Some(p) = previous {
        value.insert(str_value("context"), p.clone());
    }
    let mut ext = Mapping::new();
    ext.insert(str_value("name"), str_value(PREVIOUS_CONTEXT_EXTENSION));
    ext.insert(str_value("extension"), Value::Mapping(value));
    match exts
        .iter()
        .position(|e| e.get("name").and_then(Value::as_str) == Some(PREVIOUS_CONTEXT_EXTENSION))
    {
        Some(i) => exts[i] = Value::Mapping(ext),
        None => exts.push(Value::Mapping(ext)),
    }
}

#[cfg(test)]
mod tests;
