//! The kubeconfig entries tka owns, and how they are merged into and removed from a user's
//! kubeconfig without disturbing anything else. Pure: text in, text out; the file (which one,
//! locking, atomic writes) is the caller's business.
//!
//! tka touches only entries it wrote itself: a cluster, a user and a context, all named after
//! the context (default `tka-<cluster>`), each carrying a `tka.dev/login` extension, plus
//! `current-context`. An entry with tka's name that lacks the marker belongs to someone else and
//! is never overwritten.
//!
//! The file is edited in place, never re-serialised: kubectl reads YAML 1.1 (`no` is a boolean,
//! `0755` is 493), and a YAML 1.2 round trip would change what it reads. The text is parsed into
//! a node tree that knows where each node is (module `yaml`); an edit replaces the byte range of
//! one of tka's entries (or inserts one, or removes one) and the text is parsed again. Every
//! other byte (foreign entries, their quoting and style, comments) stays as it was. What tka
//! writes is quoted wherever YAML 1.1 and YAML 1.2 could read it differently (`yaml::scalar`).
//!
//! The entries are built here from data fields of the server's answer ([`ClusterEndpoint`]):
//! nothing executable and no TLS switches from a server ever reach the file. The user entry runs
//! `tka credential` (the kubectl exec plugin), or embeds the token with `--static`.
//!
//! Switching: a login makes its context current unless told not to, and records what was current
//! before (extension `tka.dev/previous-context`), so that logging out of the current tka context
//! restores it. Those records form chains through tka contexts; logout splices them, so after
//! logging out of everything the original current-context is back.

mod yaml;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::yaml::{Node, Out};

use crate::api::{ClusterEndpoint, Via};
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
    /// The text does not parse as YAML (tka's parser follows YAML 1.2).
    #[error("tka cannot parse it as YAML: {0}")]
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
    /// An edit went wrong (not expected: a bug in tka).
    #[error("cannot write the kubeconfig: {0}")]
    Render(String),
    /// A value that must be text is something else to kubectl (kubectl refuses such a file too).
    #[error(
        "{place} is `{text}`, which kubectl reads as {reads_as}, not as text, so kubectl cannot read this file either; write it in quotes: {quoted}"
    )]
    NotText {
        /// Where it is.
        place: String,
        /// The value as written.
        text: String,
        /// How kubectl reads it (`a boolean`, `an integer`, ...).
        reads_as: &'static str,
        /// The value quoted so that kubectl reads it as text.
        quoted: String,
    },
    /// A blank line holds a tab: YAML readers disagree about such a line once entries follow
    /// it, so a login could leave a file kubectl no longer reads.
    #[error(
        "line {0} of the kubeconfig is blank but holds a tab, which YAML readers disagree about once tka adds entries after it; delete the whitespace on that line and log in again"
    )]
    BlankLineWithTab(usize),
    /// kubectl reads it, but tka does not edit files written this way.
    #[error(
        "{0}; kubectl reads that, but tka does not edit it: write that part out in full, or point KUBECONFIG at another file"
    )]
    Unsupported(String),
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
    /// How kubectl reaches the cluster: through the tka proxy (no credential in the entries)
    /// or directly. Written only for the proxy; entries without it are direct.
    #[serde(default)]
    pub via: Via,
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
    /// None at all: kubectl talks to the tka proxy, which forwards with the session's token held
    /// in the server's memory. The cluster entry names the proxy, and the user entry carries
    /// neither a token nor an exec entry.
    Proxied,
}

impl UserCredential {
    /// How kubectl reaches the cluster with this credential.
    pub fn via(&self) -> Via {
        match self {
            Self::Proxied => Via::Proxy,
            Self::Exec { .. } | Self::Static { .. } => Via::Direct,
        }
    }
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
    /// `http(s)://host[:port][/path]` and the CA data base64. A proxied login
    /// ([`UserCredential::Proxied`]) points at the endpoint's tka proxy instead, with no CA (the
    /// cluster's CA is for its API server; a TLS proxy has the tailnet's public certificate),
    /// and needs the endpoint to name one.
    pub fn new(
        endpoint: &ClusterEndpoint,
        options: EntryOptions<'_>,
    ) -> Result<Self, KubeconfigError> {
        let via_proxy = options.credential.via() == Via::Proxy;
        let raw_server = if via_proxy {
            endpoint.proxy.as_deref().ok_or_else(|| {
                KubeconfigError::Endpoint(
                    "a login through the tka proxy needs the proxy's URL, and the server named none"
                        .to_owned(),
                )
            })?
        } else {
            &endpoint.server
        };
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
                via: options.credential.via(),
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

    fn marker_extension(&self) -> Out {
        let mut marker = vec![
            ("cluster", Out::str(self.marker.cluster.as_str())),
            ("server", Out::str(self.marker.server.as_str())),
        ];
        if let Some(identity) = &self.marker.identity {
            marker.push(("identity", Out::str(identity)));
        }
        if self.marker.via == Via::Proxy {
            marker.push(("via", Out::str(self.marker.via.as_str())));
        }
        Out::Map(vec![
            ("name", Out::str(LOGIN_EXTENSION)),
            ("extension", Out::Map(marker)),
        ])
    }

    fn cluster_entry(&self) -> Out {
        let mut body = vec![("server", Out::str(self.api_server.as_str()))];
        if let Some(ca) = &self.certificate_authority_data {
            body.push(("certificate-authority-data", Out::str(ca)));
        }
        if let Some(socks5) = &self.socks5 {
            body.push(("proxy-url", Out::str(&socks5.kubeconfig_proxy_url())));
        }
        body.push(("extensions", Out::Seq(vec![self.marker_extension()])));
        named(&self.context, "cluster", body)
    }

    fn user_entry(&self) -> Out {
        let mut body = Vec::new();
        match &self.credential {
            UserCredential::Exec { command } => {
                let exec = vec![
                    ("apiVersion", Out::str(EXEC_API_VERSION)),
                    ("command", Out::str(command)),
                    (
                        "args",
                        Out::Seq(self.exec_args().iter().map(|a| Out::str(a)).collect()),
                    ),
                    ("installHint", Out::Str(self.install_hint())),
                    ("interactiveMode", Out::str("Never")),
                    ("provideClusterInfo", Out::Bool(false)),
                ];
                body.push(("exec", Out::Map(exec)));
            }
            UserCredential::Static { token } => {
                body.push(("token", Out::str(token.expose())));
            }
            // The proxy supplies the credential on the server side.
            UserCredential::Proxied => {}
        }
        body.push(("extensions", Out::Seq(vec![self.marker_extension()])));
        named(&self.context, "user", body)
    }

    fn context_entry(&self, previous: Option<&str>) -> Out {
        let mut body = vec![
            ("cluster", Out::str(&self.context)),
            ("user", Out::str(&self.context)),
        ];
        if let Some(ns) = &self.namespace {
            body.push(("namespace", Out::str(ns)));
        }
        body.push((
            "extensions",
            Out::Seq(vec![self.marker_extension(), previous_extension(previous)]),
        ));
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

/// What a kubeconfig without a file starts as.
const EMPTY: &str =
    "apiVersion: v1\nkind: Config\npreferences: {}\nclusters: []\nusers: []\ncontexts: []\n";

/// A kubeconfig: its text, and the first document's node tree (kept in step with the text).
#[derive(Clone)]
pub struct Kubeconfig {
    text: String,
    root: Option<Node>,
}

/// Not the text: it may hold tokens.
impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("bytes", &self.text.len())
            .field("current_context", &self.current_context())
            .finish_non_exhaustive()
    }
}

/// Two kubeconfigs are equal when their texts are.
impl PartialEq for Kubeconfig {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Default for Kubeconfig {
    fn default() -> Self {
        Self {
            text: EMPTY.to_owned(),
            // A constant that parses; were it not to, `ensure_root` would start over from it.
            root: yaml::parse(EMPTY).ok().flatten(),
        }
    }
}

/// One step from a node to a child.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl Kubeconfig {
    /// Parses a kubeconfig. An empty file (or one with only comments) is an empty kubeconfig.
    /// Refused: text that is not YAML; `clusters`, `users` or `contexts` that are not lists; a
    /// `current-context` or an entry name that kubectl reads as something other than a string
    /// (kubectl refuses such a file too); entries that use `<<` merge keys.
    pub fn parse(text: &str) -> Result<Self, KubeconfigError> {
        let root = yaml::parse(text).map_err(|e| match e {
            yaml::ParseError::Syntax(m) => KubeconfigError::Yaml(m),
            yaml::ParseError::Limit(m) => KubeconfigError::Unsupported(m),
        })?;
        let config = Self {
            text: text.to_owned(),
            root,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), KubeconfigError> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        if root.is_null() {
            return Ok(());
        }
        if root.entries().is_none() {
            return Err(KubeconfigError::Shape(
                "the top level is not a mapping".to_owned(),
            ));
        }
        for (key, _, _) in LISTS {
            let Some(list) = root.get(key) else {
                continue;
            };
            if list.is_null() {
                continue;
            }
            let Some(items) = list.items() else {
                return Err(KubeconfigError::Shape(format!("`{key}` is not a list")));
            };
            for item in items {
                let Some(entries) = item.entries() else {
                    continue;
                };
                if entries
                    .iter()
                    .any(|(k, _)| k.resolved() == Some(yaml::Resolved::Merge))
                {
                    return Err(KubeconfigError::Unsupported(format!(
                        "an entry of `{key}` uses a `<<` merge key"
                    )));
                }
                if let Some(name) = item.get("name") {
                    self.check_text(name, &format!("the name of an entry of `{key}`"))?;
                }
            }
        }
        if let Some(current) = root.get("current-context") {
            if current.resolved().is_none() {
                return Err(KubeconfigError::Shape(
                    "`current-context` is not a string".to_owned(),
                ));
            }
            self.check_text(current, "`current-context`")?;
        }
        Ok(())
    }

    /// Fails when kubectl reads a scalar that must be a name as a boolean, a number, ….
    fn check_text(&self, node: &Node, place: &str) -> Result<(), KubeconfigError> {
        match node.resolved() {
            None | Some(yaml::Resolved::Str | yaml::Resolved::Null) => Ok(()),
            Some(yaml::Resolved::Tagged) => Err(KubeconfigError::Unsupported(format!(
                "{place} has an explicit YAML tag such as !!binary"
            ))),
            Some(reads_as) => {
                let source: String = self
                    .text
                    .get(node.start..node.end)
                    .unwrap_or_default()
                    .chars()
                    .take(64)
                    .collect();
                let value = match &node.kind {
                    yaml::Kind::Scalar(s) => s.value.clone(),
                    _ => source.clone(),
                };
                Err(KubeconfigError::NotText {
                    place: place.to_owned(),
                    text: source,
                    reads_as: reads_as.describe(),
                    quoted: yaml::double_quoted(&value),
                })
            }
        }
    }

    /// A kubeconfig holding only `entries`, with their context current: the private file of
    /// `tka shell`.
    pub fn only(entries: &LoginEntries) -> Self {
        let mut config = Self::default();
        // An empty kubeconfig has no entries that could conflict.
        let _ = config.login(entries, true);
        config
    }

    /// The kubeconfig as YAML: the text it was parsed from, with tka's edits.
    pub fn render(&self) -> Result<String, KubeconfigError> {
        Ok(self.text.clone())
    }

    /// The current context's name, if set and not empty.
    pub fn current_context(&self) -> Option<&str> {
        self.root
            .as_ref()?
            .get("current-context")?
            .as_str()
            .filter(|s| !s.is_empty())
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
    /// not tka's, or could not edit the file; lets a caller find out before asking a server for
    /// a session.
    pub fn check_login(&self, context: &str) -> Result<(), KubeconfigError> {
        if let Some(line) = self
            .text
            .lines()
            .position(|l| l.contains('\t') && l.trim().is_empty())
        {
            return Err(KubeconfigError::BlankLineWithTab(line + 1));
        }
        // YAML readers disagree on what an anchor's name may hold (`&a:{` …) and on tagged keys
        // (`!!binary users:`); tka writes into the top level only when it has neither.
        let mut start = self.skip_blank(0);
        if self.text[start..].starts_with("---") {
            start = self.skip_blank(start + 3);
        }
        let tagged_key = self
            .root
            .as_ref()
            .and_then(Node::entries)
            .is_some_and(|entries| {
                entries
                    .iter()
                    .any(|(k, _)| k.resolved() == Some(yaml::Resolved::Tagged))
            });
        if self.text[start..].starts_with(['&', '*', '!']) || tagged_key {
            return Err(KubeconfigError::Unsupported(
                "the top level, or one of its keys, uses a YAML anchor, alias or tag".to_owned(),
            ));
        }
        for (key, body, kind) in LISTS {
            if self
                .items(key)
                .iter()
                .any(|item| entry_name(item) == Some(context) && marker_of(item, body).is_none())
            {
                return Err(KubeconfigError::ForeignEntry {
                    kind,
                    name: context.to_owned(),
                });
            }
        }
        // A trial of the edits a login makes, so that a file written in a way tka does not edit
        // is refused before a server is asked for a session.
        let mut trial = self.clone();
        trial.ensure_root()?;
        let probe = Out::Map(vec![("name", Out::str(context))]);
        for (key, _, _) in LISTS {
            match find(trial.items(key), context) {
                Some(i) => trial.replace_item(key, i, &probe)?,
                None => trial.append_item(&[], key, &probe)?,
            }
        }
        trial.set_value(&[], "current-context", &yaml::scalar(context))
    }

    /// Merges a login's entries. Fails, changing nothing, when an entry of that name exists and
    /// is not tka's. With `switch` the context becomes current.
    ///
    /// Only tka's own entries and `current-context` are written; every other byte of the file
    /// stays as it was, so kubectl reads every foreign entry as it did before.
    pub fn login(
        &mut self,
        entries: &LoginEntries,
        switch: bool,
    ) -> Result<LoginChange, KubeconfigError> {
        let name = entries.context_name();
        self.check_login(name)?;
        let mut next = self.clone();
        next.ensure_root()?;
        let existing =
            find(next.items("contexts"), name).map(|i| next.items("contexts")[i].clone());
        let old_previous = existing.as_ref().and_then(previous_of);
        let current = next.current_context().map(str::to_owned);
        let previous = match (switch, &existing) {
            (true, Some(_)) if current.as_deref() == Some(name) => old_previous,
            (true, Some(_)) => {
                next.splice_previous(name, old_previous.as_deref())?;
                current
            }
            (_, None) => current,
            (false, Some(_)) => old_previous,
        };
        for (key, entry) in [
            ("clusters", entries.cluster_entry()),
            ("users", entries.user_entry()),
            ("contexts", entries.context_entry(previous.as_deref())),
        ] {
            match find(next.items(key), name) {
                Some(i) => next.replace_item(key, i, &entry)?,
                None => next.append_item(&[], key, &entry)?,
            }
        }
        if switch {
            next.set_value(&[], "current-context", &yaml::scalar(name))?;
        }
        *self = next;
        Ok(LoginChange {
            context: name.to_owned(),
            replaced: existing.is_some(),
            switched: switch,
            previous_context: previous,
        })
    }

    /// Removes a tka context and the cluster and user entries it uses (when they are tka's and
    /// nothing else uses them). If it was current, the context it replaced becomes current
    /// again. `Ok(None)` when there is no tka context of that name (a foreign one is left
    /// alone). Fails, changing nothing, when the file is written in a way tka does not edit.
    pub fn logout(&mut self, context: &str) -> Result<Option<LogoutChange>, KubeconfigError> {
        let Some(index) = find(self.items("contexts"), context) else {
            return Ok(None);
        };
        let item = self.items("contexts")[index].clone();
        if marker_of(&item, "context").is_none() {
            return Ok(None);
        }
        // The context to return to. Never this context itself (a hand-edited file, or a chain
        // of logins that loops back): current-context would name the context just removed.
        // Another context is restored as recorded, even one that no longer exists, so the file
        // ends as it was before the login.
        let previous = previous_of(&item).filter(|p| p != context);
        let mut next = self.clone();
        let restored = if next.current_context() == Some(context) {
            match &previous {
                Some(p) => next.set_value(&[], "current-context", &yaml::scalar(p))?,
                None => next.remove_key("current-context")?,
            }
            Some(previous.clone())
        } else {
            None
        };
        next.splice_previous(context, previous.as_deref())?;
        if let Some(i) = find(next.items("contexts"), context) {
            next.remove_item("contexts", i)?;
        }
        let body = item.get("context");
        for (key, field) in [("clusters", "cluster"), ("users", "user")] {
            let Some(entry) = body.and_then(|b| b.get(field)).and_then(Node::as_str) else {
                continue;
            };
            let still_used = next.items("contexts").iter().any(|c| {
                c.get("context")
                    .and_then(|b| b.get(field))
                    .and_then(Node::as_str)
                    == Some(entry)
            });
            if still_used {
                continue;
            }
            if let Some(i) = find(next.items(key), entry)
                && marker_of(&next.items(key)[i], field).is_some()
            {
                next.remove_item(key, i)?;
            }
        }
        *self = next;
        Ok(Some(LogoutChange {
            context: context.to_owned(),
            restored,
        }))
    }

    /// Makes every tka context that would return to `context` return to `replacement` instead.
    fn splice_previous(
        &mut self,
        context: &str,
        replacement: Option<&str>,
    ) -> Result<(), KubeconfigError> {
        let count = self.items("contexts").len();
        for i in 0..count {
            let Some(item) = self.items("contexts").get(i) else {
                break;
            };
            if entry_name(item) == Some(context) || marker_of(item, "context").is_none() {
                continue;
            }
            if previous_of(item).as_deref() != Some(context) {
                continue;
            }
            let extensions = item
                .get("context")
                .and_then(|b| b.get("extensions"))
                .and_then(Node::items)
                .unwrap_or_default();
            let path = [Step::Key("contexts"), Step::Index(i), Step::Key("context")];
            match extensions.iter().rposition(|e| {
                e.get("name").and_then(Node::as_str) == Some(PREVIOUS_CONTEXT_EXTENSION)
            }) {
                Some(j) => {
                    let ext = [
                        path[0],
                        path[1],
                        path[2],
                        Step::Key("extensions"),
                        Step::Index(j),
                    ];
                    let value = match replacement {
                        Some(p) => Out::Map(vec![("context", Out::str(p))]),
                        None => Out::Map(Vec::new()),
                    };
                    self.set_value(&ext, "extension", &value.flow())?;
                }
                None => {
                    self.append_item(&path, "extensions", &previous_extension(replacement))?;
                }
            }
        }
        Ok(())
    }

    /// The list under a top-level key (empty when absent, `null` or not a list).
    fn items(&self, key: &str) -> &[Node] {
        self.root
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(Node::items)
            .unwrap_or_default()
    }

    // ------------------------------------------------------------------------------------
    // Edits. Each one replaces a byte range of the text and parses the result again, so the
    // tree always describes the text. Positions come from the parser; the text between them is
    // only scanned for whitespace, comments, `:` and `-`.

    /// Starts a document when the file has none (only comments, or nothing), or when it is an
    /// explicit null document.
    fn ensure_root(&mut self) -> Result<(), KubeconfigError> {
        match &self.root {
            Some(root) if !root.is_null() => Ok(()),
            Some(_) => self.replace_text(EMPTY.to_owned()),
            None => {
                let mut text = self.text.clone();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(EMPTY);
                self.replace_text(text)
            }
        }
    }

    fn replace_text(&mut self, text: String) -> Result<(), KubeconfigError> {
        let root = yaml::parse(&text).map_err(|e| {
            KubeconfigError::Render(format!("the edited file would not parse ({e})"))
        })?;
        self.text = text;
        self.root = root;
        Ok(())
    }

    fn splice(&mut self, start: usize, end: usize, with: &str) -> Result<(), KubeconfigError> {
        let (Some(before), Some(after)) = (self.text.get(..start), self.text.get(end..)) else {
            return Err(KubeconfigError::Render(format!(
                "an edit at bytes {start}..{end} is outside the text"
            )));
        };
        let text = format!("{before}{with}{after}");
        self.replace_text(text)
    }

    /// The node at `path` from the root; refuses to go through an alias.
    fn node_at(&self, path: &[Step<'_>]) -> Result<&Node, KubeconfigError> {
        let mut node = self
            .root
            .as_ref()
            .ok_or_else(|| KubeconfigError::Render("the file has no document".to_owned()))?;
        for step in path {
            if node.alias {
                return Err(aliased(path));
            }
            let next = match step {
                Step::Key(key) => node.get(key),
                Step::Index(i) => node.items().and_then(|items| items.get(*i)),
            };
            node = next.ok_or_else(|| {
                KubeconfigError::Render(format!("nothing at {}", describe_path(path)))
            })?;
        }
        if node.alias {
            return Err(aliased(path));
        }
        Ok(node)
    }

    /// Where a node's content ends, without the line breaks and spaces a block scalar keeps.
    fn content_end(&self, node: &Node) -> usize {
        let slice = self.text.get(node.start..node.end).unwrap_or_default();
        node.start + slice.trim_end_matches([' ', '\t', '\r', '\n']).len()
    }

    /// What separates a flow collection's last item, ending at `at`, from one appended after
    /// it: `, `, or ` , ` after an empty value (`[a: ]`), where `a:,` would make the colon part
    /// of a plain scalar and the file unreadable.
    fn flow_separator(&self, at: usize) -> &'static str {
        if self.text[..at].ends_with(':') {
            " , "
        } else {
            ", "
        }
    }

    /// The `:` after a mapping key (comments and line breaks may come between).
    fn colon_after(&self, key: &Node) -> Result<usize, KubeconfigError> {
        let at = self.skip_blank(key.end);
        match self.text.as_bytes().get(at) {
            Some(b':') => Ok(at),
            _ => Err(KubeconfigError::Unsupported(format!(
                "the value of a key ending at byte {} is written in a way tka does not edit",
                key.end
            ))),
        }
    }

    /// The first position from `pos` that is not whitespace or a comment.
    fn skip_blank(&self, mut pos: usize) -> usize {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(pos) {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => pos += 1,
                b'#' => {
                    while bytes.get(pos).is_some_and(|&b| b != b'\n') {
                        pos += 1;
                    }
                }
                _ => break,
            }
        }
        pos
    }

    /// The column of a position (in characters).
    fn col(&self, pos: usize) -> usize {
        let before = self.text.get(..pos).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        // A byte order mark before the first line is not indentation.
        before[line_start..]
            .chars()
            .filter(|&c| c != '\u{feff}')
            .count()
    }

    fn line_start(&self, pos: usize) -> usize {
        self.text
            .get(..pos)
            .and_then(|b| b.rfind('\n'))
            .map_or(0, |i| i + 1)
    }

    /// Whether only spaces come before `pos` on its line.
    fn starts_line(&self, pos: usize) -> bool {
        self.text
            .get(self.line_start(pos)..pos)
            .is_some_and(|p| p.bytes().all(|b| b == b' '))
    }

    /// Where to add a line after content ending at `end`: the end of that line, and whether
    /// that is already the start of the next line.
    fn end_of_line(&self, end: usize) -> (usize, bool) {
        if end > 0 && self.text.as_bytes().get(end - 1) == Some(&b'\n') {
            return (end, true);
        }
        match self.text.get(end..).and_then(|rest| rest.find('\n')) {
            Some(i) => (end + i, false),
            None => (self.text.len(), false),
        }
    }

    /// The position just past the line that content ending at `end` is on.
    fn past_line(&self, end: usize) -> usize {
        match self.end_of_line(end) {
            (pos, true) => pos,
            (pos, false) if pos < self.text.len() => pos + 1,
            (pos, false) => pos,
        }
    }

    /// Sets `key` of the mapping at `path` to `value` (already YAML, on one line), adding the key
    /// when it is missing.
    fn set_value(
        &mut self,
        path: &[Step<'_>],
        key: &str,
        value: &str,
    ) -> Result<(), KubeconfigError> {
        let map = self.node_at(path)?;
        let Some(entries) = map.entries() else {
            return Err(KubeconfigError::Render(format!(
                "{} is not a mapping",
                describe_path(path)
            )));
        };
        if let Some((k, v)) = map.entry(key) {
            if v.anchors || v.alias {
                return Err(KubeconfigError::Unsupported(format!(
                    "`{key}` at {} uses a YAML anchor or alias",
                    describe_path(path)
                )));
            }
            let colon = self.colon_after(k)?;
            let end = self.content_end(v).max(colon + 1);
            return self.splice(colon + 1, end, &format!(" {value}"));
        }
        let key = yaml::scalar(key);
        if map.is_flow() {
            return match entries.last() {
                None => self.splice(map.start + 1, map.start + 1, &format!("{key}: {value}")),
                Some((_, last)) => {
                    let at = self.content_end(last);
                    let sep = self.flow_separator(at);
                    self.splice(at, at, &format!("{sep}{key}: {value}"))
                }
            };
        }
        let (Some((first, _)), Some((_, last))) = (entries.first(), entries.last()) else {
            return Err(KubeconfigError::Render("an empty block mapping".to_owned()));
        };
        let indent = " ".repeat(self.col(first.start));
        let (at, line_start) = self.end_of_line(self.content_end(last));
        let line = if line_start {
            format!("{indent}{key}: {value}\n")
        } else {
            format!("\n{indent}{key}: {value}")
        };
        self.splice(at, at, &line)
    }

    /// Removes a top-level key (its lines), or empties its value where it does not start a line.
    fn remove_key(&mut self, key: &str) -> Result<(), KubeconfigError> {
        let root = self.node_at(&[])?;
        let Some((k, v)) = root.entry(key) else {
            return Ok(());
        };
        if root.is_flow() || !self.starts_line(k.start) || v.anchors || v.alias {
            return self.set_value(&[], key, "\"\"");
        }
        let start = self.line_start(k.start);
        let colon = self.colon_after(k)?;
        let end = self.past_line(self.content_end(v).max(colon + 1));
        self.splice(start, end, "")
    }

    /// The top-level list `key` and the `:` after its key, for editing.
    fn list_for_edit(&self, key: &str) -> Result<(&Node, usize), KubeconfigError> {
        let root = self.node_at(&[])?;
        let (k, list) = root
            .entry(key)
            .ok_or_else(|| KubeconfigError::Render(format!("no `{key}` list")))?;
        if list.alias || list.anchor {
            return Err(KubeconfigError::Unsupported(format!(
                "`{key}` is a YAML anchor or alias"
            )));
        }
        Ok((list, self.colon_after(k)?))
    }

    /// Appends `item` to the list `key` of the mapping at `path`, creating the list when it is
    /// missing or `null`.
    fn append_item(
        &mut self,
        path: &[Step<'_>],
        key: &str,
        item: &Out,
    ) -> Result<(), KubeconfigError> {
        // At most: add the key, turn `null` into `[]`, append.
        for _ in 0..3 {
            let map = self.node_at(path)?;
            let Some((k, list)) = map.entry(key) else {
                self.set_value(path, key, "[]")?;
                continue;
            };
            if list.alias || list.anchor {
                return Err(KubeconfigError::Unsupported(format!(
                    "`{key}` is a YAML anchor or alias"
                )));
            }
            if list.is_null() {
                self.set_value(path, key, "[]")?;
                continue;
            }
            let Some(items) = list.items() else {
                return Err(KubeconfigError::Shape(format!("`{key}` is not a list")));
            };
            let colon = self.colon_after(k)?;
            if list.is_flow() {
                if items.is_empty() && !map.is_flow() {
                    // `key: []` in block style becomes a block list, as kubectl writes it.
                    let col = self.col(k.start);
                    let text = format!("\n{}- {}", " ".repeat(col), item.block(col + 2));
                    let end = self.content_end(list);
                    return self.splice(colon + 1, end, &text);
                }
                return match items.last() {
                    None => self.splice(list.start + 1, list.start + 1, &item.flow()),
                    Some(last) => {
                        let at = self.content_end(last);
                        let sep = self.flow_separator(at);
                        self.splice(at, at, &format!("{sep}{}", item.flow()))
                    }
                };
            }
            let dash = self.skip_blank(colon + 1);
            if self.text.as_bytes().get(dash) != Some(&b'-') {
                return Err(KubeconfigError::Unsupported(format!(
                    "the `{key}` list is written in a way tka does not edit"
                )));
            }
            let col = self.col(dash);
            let Some(last) = items.last() else {
                return Err(KubeconfigError::Render("an empty block list".to_owned()));
            };
            let (at, line_start) = self.end_of_line(self.content_end(last));
            let entry = format!("{}- {}", " ".repeat(col), item.block(col + 2));
            let text = if line_start {
                format!("{entry}\n")
            } else {
                format!("\n{entry}")
            };
            return self.splice(at, at, &text);
        }
        Err(KubeconfigError::Render(format!("could not add to `{key}`")))
    }

    /// Replaces item `index` of the top-level list `key` (one of tka's entries).
    fn replace_item(&mut self, key: &str, index: usize, item: &Out) -> Result<(), KubeconfigError> {
        let (list, _) = self.list_for_edit(key)?;
        let old = self.node_at(&[Step::Key(key), Step::Index(index)])?;
        if old.anchors {
            return Err(KubeconfigError::Unsupported(format!(
                "an entry of `{key}` defines a YAML anchor"
            )));
        }
        let (start, end) = (old.start, self.content_end(old));
        let text = if list.is_flow() {
            item.flow()
        } else {
            item.block(self.col(start))
        };
        self.splice(start, end, &text)
    }

    /// Removes item `index` of the top-level list `key` (one of tka's entries).
    fn remove_item(&mut self, key: &str, index: usize) -> Result<(), KubeconfigError> {
        let (list, colon) = self.list_for_edit(key)?;
        let Some(items) = list.items() else {
            return Err(KubeconfigError::Shape(format!("`{key}` is not a list")));
        };
        let Some(item) = items.get(index) else {
            return Ok(());
        };
        if item.anchors || item.alias {
            return Err(KubeconfigError::Unsupported(format!(
                "an entry of `{key}` uses a YAML anchor or alias"
            )));
        }
        if items.len() == 1 {
            return self.set_value(&[], key, "[]");
        }
        if list.is_flow() {
            let (start, end) = match index.checked_sub(1).and_then(|p| items.get(p)) {
                Some(prev) => (self.content_end(prev), item.end),
                None => (item.start, items.get(1).map_or(item.end, |n| n.start)),
            };
            return self.splice(start, end, "");
        }
        // The item's own `-`, found back from its content: the end of the item before it is no
        // guide, since an empty last value (`cluster:` and nothing) may be placed at the start
        // of the next item.
        let bytes = self.text.as_bytes();
        let mut dash = item.start.min(bytes.len());
        while dash > 0 && matches!(bytes[dash - 1], b' ' | b'\t') {
            dash -= 1;
        }
        let dash = dash.saturating_sub(1);
        if dash <= colon || bytes.get(dash) != Some(&b'-') || !self.starts_line(dash) {
            return Err(KubeconfigError::Unsupported(format!(
                "the `{key}` list is written in a way tka does not edit"
            )));
        }
        let start = self.line_start(dash);
        let end = self.past_line(self.content_end(item));
        self.splice(start, end, "")
    }
}

fn aliased(path: &[Step<'_>]) -> KubeconfigError {
    KubeconfigError::Unsupported(format!("{} is a YAML alias", describe_path(path)))
}

fn describe_path(path: &[Step<'_>]) -> String {
    if path.is_empty() {
        return "the top level".to_owned();
    }
    let parts: Vec<String> = path
        .iter()
        .map(|s| match s {
            Step::Key(k) => (*k).to_owned(),
            Step::Index(i) => i.to_string(),
        })
        .collect();
    format!("`{}`", parts.join("."))
}

fn named(name: &str, body_key: &'static str, body: Vec<(&'static str, Out)>) -> Out {
    Out::Map(vec![("name", Out::str(name)), (body_key, Out::Map(body))])
}

fn previous_extension(previous: Option<&str>) -> Out {
    let value = match previous {
        Some(p) => vec![("context", Out::str(p))],
        None => Vec::new(),
    };
    Out::Map(vec![
        ("name", Out::str(PREVIOUS_CONTEXT_EXTENSION)),
        ("extension", Out::Map(value)),
    ])
}

fn entry_name(item: &Node) -> Option<&str> {
    item.get("name").and_then(Node::as_str)
}

/// The entry kubectl uses for `name` (the last of that name).
fn find(items: &[Node], name: &str) -> Option<usize> {
    items.iter().rposition(|i| entry_name(i) == Some(name))
}

fn extension<'a>(item: &'a Node, body_key: &str, ext_name: &str) -> Option<&'a Node> {
    item.get(body_key)?
        .get("extensions")?
        .items()?
        .iter()
        .rev()
        .find(|e| e.get("name").and_then(Node::as_str) == Some(ext_name))?
        .get("extension")
}

fn marker_of(item: &Node, body_key: &str) -> Option<LoginMarker> {
    let ext = extension(item, body_key, LOGIN_EXTENSION)?;
    let field = |k: &str| ext.get(k).and_then(Node::as_str);
    Some(LoginMarker {
        cluster: ClusterName::new(field("cluster")?).ok()?,
        server: ServerUrl::parse(field("server")?).ok()?,
        identity: field("identity").map(str::to_owned),
        via: match field("via") {
            Some("proxy") => Via::Proxy,
            _ => Via::Direct,
        },
    })
}

/// The current-context recorded before tka switched to this context (`None`: none was set).
fn previous_of(item: &Node) -> Option<String> {
    extension(item, "context", PREVIOUS_CONTEXT_EXTENSION)?
        .get("context")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
