//! The YAML layer under the kubeconfig merge: a node tree that remembers where each node sits in
//! the text, how kubectl reads a plain scalar, and how tka writes its own values.
//!
//! kubectl reads a kubeconfig with YAML 1.1 rules (sigs.k8s.io/yaml over go-yaml v2): `yes`, `no`,
//! `on`, `off`, `y` and `n` are booleans, `0755` is the number 493, `1_000`, `0x1F` and `0b1` are
//! numbers. A YAML 1.2 library reads those as strings, so re-serialising a file with one changes
//! what kubectl sees. tka therefore never re-serialises anything it does not own: the parent
//! module edits the text in place, and this module tells it where things are.
//!
//! [`resolve_plain`] follows go-yaml v2's `resolve` for plain scalars. [`scalar`] writes a string
//! plain only when YAML 1.1 and YAML 1.2 both read it as that string, and double-quoted otherwise.

use granit_parser::{ErrorKind, Event, Parser, ScalarStyle, StructureStyle, Tag};

/// Deeper nesting than this is refused (a kubeconfig is a few levels deep).
const MAX_DEPTH: usize = 256;
/// More nodes than this (aliases included, counted expanded) are refused.
const MAX_NODES: usize = 1_000_000;

/// A node of the first document, with the byte range of its content in the text (anchors and
/// tags not included). A block collection's range runs from its first child's start to its last
/// child's end.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The node itself defines an anchor (`&name`).
    pub(crate) anchor: bool,
    /// The node, or a node inside it, defines an anchor.
    pub(crate) anchors: bool,
    /// The node is an alias (`*name`): a copy of the anchored node for reading; the range is the
    /// alias token, and the copy's inner ranges are the anchored node's.
    pub(crate) alias: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Seq {
        flow: bool,
        items: Vec<Node>,
    },
    Map {
        flow: bool,
        entries: Vec<(Node, Node)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scalar {
    /// The value after escape processing and folding.
    pub(crate) value: String,
    /// Written without quotes or block indicator: only then does resolution apply.
    pub(crate) plain: bool,
    pub(crate) tag: ScalarTag,
}

/// A scalar's explicit tag, as go-yaml v2 treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarTag {
    None,
    /// `!!str`, the non-specific `!`, and local tags such as `!foo` (go-yaml keeps the text).
    Str,
    Null,
    Bool,
    Int,
    Float,
    /// Another core tag (`!!binary`, `!!timestamp`, ...).
    Other,
}

/// What go-yaml v2 makes of a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    Str,
    Null,
    Bool,
    Int,
    Float,
    Merge,
    /// Another core tag (`!!binary` is decoded, `!!timestamp` checked, ...).
    Tagged,
}

impl Resolved {
    /// How a message names it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Str => "a string",
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Int => "an integer",
            Self::Float => "a floating-point number",
            Self::Merge => "a merge key",
            Self::Tagged => "a tagged value",
        }
    }
}

impl Node {
    fn leaf(kind: Kind, start: usize, end: usize) -> Self {
        Self {
            kind,
            start,
            end,
            anchor: false,
            anchors: false,
            alias: false,
        }
    }

    /// How kubectl reads this scalar; `None` for a collection.
    pub(crate) fn resolved(&self) -> Option<Resolved> {
        let Kind::Scalar(s) = &self.kind else {
            return None;
        };
        Some(match s.tag {
            ScalarTag::Str => Resolved::Str,
            ScalarTag::Null => Resolved::Null,
            ScalarTag::Bool => Resolved::Bool,
            ScalarTag::Int => Resolved::Int,
            ScalarTag::Float => Resolved::Float,
            ScalarTag::Other => Resolved::Tagged,
            ScalarTag::None if s.plain => resolve_plain(&s.value),
            ScalarTag::None => Resolved::Str,
        })
    }

    /// The string kubectl reads here, if it reads a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match (&self.kind, self.resolved()) {
            (Kind::Scalar(s), Some(Resolved::Str)) => Some(&s.value),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        self.resolved() == Some(Resolved::Null)
    }

    /// The value of `key` in a mapping; with duplicate keys the last one, as kubectl reads it.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The last entry whose key kubectl reads as `key`.
    pub(crate) fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.kind {
            Kind::Map { entries, .. } => entries
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    pub(crate) fn items(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq { items, .. } => Some(items),
            _ => None,
        }
    }

    pub(crate) fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map { entries, .. } => Some(entries),
            _ => None,
        }
    }

    pub(crate) fn is_flow(&self) -> bool {
        matches!(
            self.kind,
            Kind::Seq { flow: true, .. } | Kind::Map { flow: true, .. }
        )
    }

    fn size(&self) -> usize {
        match &self.kind {
            Kind::Scalar(_) => 1,
            Kind::Seq { items, .. } => 1 + items.iter().map(Node::size).sum::<usize>(),
            Kind::Map { entries, .. } => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }
}

/// go-yaml v2's reading of a plain scalar (its `resolve` with no tag): the fixed words, then
/// for values starting with a digit or a sign, integers in any base (underscores dropped, any
/// size) and floats, and `.5`-style floats. Timestamps stay strings when decoded into the
/// untyped values kubectl decodes into; base-60 numbers are not recognised.
pub(crate) fn resolve_plain(value: &str) -> Resolved {
    match value {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" | "n"
        | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Resolved::Bool;
        }
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF"
        | "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float,
        "<<" => return Resolved::Merge,
        _ => {}
    }
    match value.as_bytes().first() {
        Some(b'.') if go_float(value) => Resolved::Float,
        Some(b'0'..=b'9' | b'+' | b'-') => {
            let plain: String = value.chars().filter(|&c| c != '_').collect();
            if go_int(&plain) {
                Resolved::Int
            } else if yaml_style_float(&plain) && go_float(&plain) {
                Resolved::Float
            } else {
                Resolved::Str
            }
        }
        _ => Resolved::Str,
    }
}

/// Go's `strconv.ParseInt(s, 0, _)` syntax (any size: out-of-range values are still numbers
/// to go-yaml, as big integers or floats).
fn go_int(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (digits, radix) = match unsigned.get(..2) {
        Some("0x" | "0X") => (&unsigned[2..], 16),
        Some("0o" | "0O") => (&unsigned[2..], 8),
        Some("0b" | "0B") => (&unsigned[2..], 2),
        _ if unsigned.len() > 1 && unsigned.starts_with('0') => (&unsigned[1..], 8),
        _ => (unsigned, 10),
    };
    !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix))
}

/// go-yaml's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)))
}

/// Whether Go's `strconv.ParseFloat` accepts a decimal float without error (it refuses values
/// out of range, which go-yaml then keeps as strings).
fn go_float(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    yaml_style_float(unsigned) && unsigned.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Why a text was not turned into a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// It is not YAML (as a YAML 1.2 parser reads it).
    Syntax(String),
    /// It is YAML, but past tka's limits (nesting, size with aliases expanded).
    Limit(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Syntax(m) | Self::Limit(m) => f.write_str(m),
        }
    }
}

/// The first document's root node (`None` for a stream with no document), or why the text
/// could not be read.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, ParseError> {
    let mut builder = Builder::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| match e.kind() {
            ErrorKind::RecursionLimitExceeded => {
                ParseError::Limit(format!("it is nested deeper than the parser's limit ({e})"))
            }
            _ => ParseError::Syntax(e.to_string()),
        })?;
        let (Some(start), Some(end)) = (span.start.byte_offset(), span.end.byte_offset()) else {
            return Err(ParseError::Syntax(
                "the parser gave no byte offsets".to_owned(),
            ));
        };
        match event {
            Event::DocumentEnd => return Ok(builder.root),
            Event::Scalar(value, style, anchor, tag) => {
                let tag = tag.as_deref().map_or(ScalarTag::None, scalar_tag);
                let scalar = Scalar {
                    value: value.into_owned(),
                    plain: matches!(style, ScalarStyle::Plain),
                    tag,
                };
                let node = Node::leaf(Kind::Scalar(scalar), start, end);
                builder.complete(node, anchor)?;
            }
            Event::SequenceStart(style, anchor, _) => {
                builder.open(style, start, anchor, true)?;
            }
            Event::MappingStart(style, anchor, _) => {
                builder.open(style, start, anchor, false)?;
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close(end)?,
            Event::Alias(id) => {
                let Some(target) = builder.anchored.iter().rev().find(|(i, _)| *i == id) else {
                    return Err(ParseError::Syntax(format!(
                        "an alias at byte {start} names no anchor"
                    )));
                };
                let mut node = target.1.clone();
                builder.count(node.size())?;
                node.start = start;
                node.end = end;
                node.alias = true;
                builder.complete(node, 0)?;
            }
            _ => {}
        }
    }
    Ok(builder.root)
}

fn scalar_tag(tag: &Tag) -> ScalarTag {
    if tag.handle() != "tag:yaml.org,2002:" {
        return ScalarTag::Str;
    }
    match tag.suffix() {
        "str" => ScalarTag::Str,
        "null" => ScalarTag::Null,
        "bool" => ScalarTag::Bool,
        "int" => ScalarTag::Int,
        "float" => ScalarTag::Float,
        _ => ScalarTag::Other,
    }
}

struct Frame {
    seq: bool,
    flow: bool,
    start: usize,
    anchor: usize,
    items: Vec<Node>,
    pending_key: Option<Node>,
    entries: Vec<(Node, Node)>,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchored: Vec<(usize, Node)>,
    nodes: usize,
}

impl Builder {
    fn count(&mut self, n: usize) -> Result<(), ParseError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(ParseError::Limit(format!(
                "it has more than {MAX_NODES} nodes (aliases expanded)"
            )));
        }
        Ok(())
    }

    fn open(
        &mut self,
        style: StructureStyle,
        start: usize,
        anchor: usize,
        seq: bool,
    ) -> Result<(), ParseError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(ParseError::Limit(format!(
                "it is nested deeper than {MAX_DEPTH} levels"
            )));
        }
        self.stack.push(Frame {
            seq,
            flow: style == StructureStyle::Flow,
            start,
            anchor,
            items: Vec::new(),
            pending_key: None,
            entries: Vec::new(),
        });
        Ok(())
    }

    fn close(&mut self, end: usize) -> Result<(), ParseError> {
        let Some(frame) = self.stack.pop() else {
            return Err(ParseError::Syntax(
                "a collection ends that never started".to_owned(),
            ));
        };
        let (first, last) = if frame.seq {
            (
                frame.items.first().map(|n| n.start),
                frame.items.last().map(|n| n.end),
            )
        } else {
            (
                frame.entries.first().map(|(k, _)| k.start),
                frame.entries.last().map(|(_, v)| v.end),
            )
        };
        let (start, end) = if frame.flow {
            (frame.start, end)
        } else {
            (
                first.unwrap_or(frame.start),
                last.unwrap_or(frame.start)
                    .max(first.unwrap_or(frame.start)),
            )
        };
        let anchors = frame.items.iter().any(|n| n.anchors)
            || frame.entries.iter().any(|(k, v)| k.anchors || v.anchors);
        let kind = if frame.seq {
            Kind::Seq {
                flow: frame.flow,
                items: frame.items,
            }
        } else {
            Kind::Map {
                flow: frame.flow,
                entries: frame.entries,
            }
        };
        let mut node = Node::leaf(kind, start, end);
        node.anchors = anchors;
        self.complete(node, frame.anchor)
    }

    fn complete(&mut self, mut node: Node, anchor: usize) -> Result<(), ParseError> {
        self.count(1)?;
        if anchor != 0 {
            node.anchor = true;
            node.anchors = true;
            self.anchored.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(frame) if frame.seq => frame.items.push(node),
            Some(frame) => match frame.pending_key.take() {
                None => frame.pending_key = Some(node),
                Some(key) => frame.entries.push((key, node)),
            },
        }
        Ok(())
    }
}

/// A value tka writes (its own entries only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Out {
    Str(String),
    Bool(bool),
    Seq(Vec<Out>),
    Map(Vec<(&'static str, Out)>),
}

impl Out {
    pub(crate) fn str(s: &str) -> Self {
        Self::Str(s.to_owned())
    }

    /// Flow notation on one line: `{name: x, cluster: {server: "https://…"}}`.
    pub(crate) fn flow(&self) -> String {
        match self {
            Self::Str(s) => scalar(s),
            Self::Bool(b) => b.to_string(),
            Self::Seq(items) => {
                let inner: Vec<String> = items.iter().map(Out::flow).collect();
                format!("[{}]", inner.join(", "))
            }
            Self::Map(entries) => {
                let inner: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{}: {}", scalar(k), v.flow()))
                    .collect();
                format!("{{{}}}", inner.join(", "))
            }
        }
    }

    /// Block notation for a value whose first line continues where the caller stands and whose
    /// further lines are indented by `col` spaces (a mapping's keys line up at `col`).
    pub(crate) fn block(&self, col: usize) -> String {
        let Self::Map(entries) = self else {
            return self.flow();
        };
        if entries.is_empty() {
            return "{}".to_owned();
        }
        let indent = " ".repeat(col);
        let mut out = String::new();
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 {
                out.push('\n');
                out.push_str(&indent);
            }
            out.push_str(&scalar(key));
            out.push(':');
            match value {
                Self::Map(inner) if !inner.is_empty() => {
                    out.push('\n');
                    out.push_str(&" ".repeat(col + 2));
                    out.push_str(&value.block(col + 2));
                }
                Self::Seq(items) if !items.is_empty() => {
                    for item in items {
                        out.push('\n');
                        out.push_str(&indent);
                        out.push_str("- ");
                        out.push_str(&item.block(col + 2));
                    }
                }
                _ => {
                    out.push(' ');
                    out.push_str(&value.flow());
                }
            }
        }
        out
    }
}

/// A string as YAML that YAML 1.1 (kubectl) and YAML 1.2 both read as that same string: plain
/// when it starts with a letter, `/`, `-x` or `--x`, holds only unremarkable characters and is none of the
/// words YAML 1.1 reads as a boolean or null; double-quoted otherwise.
pub(crate) fn scalar(s: &str) -> String {
    if is_safe_plain(s) {
        s.to_owned()
    } else {
        double_quoted(s)
    }
}

fn is_safe_plain(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    // `-x` and `--server` too: neither a list item, a number nor a document marker.
    let dash_word = first == '-'
        && match chars.next() {
            Some('-') => chars.next().is_some_and(|c| c.is_ascii_alphabetic()),
            Some(c) => c.is_ascii_alphabetic(),
            None => false,
        };
    if !(first.is_ascii_alphabetic() || first == '/' || dash_word) {
        return false;
    }
    let ambiguous = ["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    if ambiguous.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return false;
    }
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                ' ' | '-' | '.' | '_' | '/' | ':' | '@' | '+' | '=' | '~' | '(' | ')' | '`' | '\''
            )
    }) && !s.contains(": ")
        && !s.ends_with([':', ' '])
}

/// A double-quoted scalar; every character that is not printable ASCII or a printable
/// non-ASCII character is escaped (YAML 1.1 also breaks lines at U+0085, U+2028 and U+2029).
pub(crate) fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
                || u32::from(c) > 0xffff =>
            {
                if u32::from(c) > 0xffff {
                    out.push_str(&format!("\\U{:08X}", u32::from(c)));
                } else {
                    out.push_str(&format!("\\u{:04X}", u32::from(c)));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
