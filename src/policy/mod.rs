//! Authorisation: Django's users, groups and permissions, applied per route.
//!
//! A [`Policy`] is compiled once from TOML files (see [`load`]) and then
//! consulted on every request through [`Policy::decide`], a pure function of
//! the request and the signed-in subject. Hot reload swaps whole policies
//! (see [`reload`]); nothing here mutates after compilation.

pub mod load;
pub mod pattern;
pub mod reload;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;

pub use pattern::{HostPattern, MethodSet, PathPattern};

/// What a route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Anyone,
    Authenticated,
    Superuser,
    Nobody,
    /// Member of any of these groups.
    Groups(Vec<String>),
    /// Holds all of these permissions.
    Permissions(Vec<String>),
    /// Django's model permissions: `<resource>.view|add|change|delete` chosen
    /// by method. Stored ready-made so the hot path builds no strings.
    Resource {
        name: String,
        view: String,
        add: String,
        change: String,
        delete: String,
    },
}

impl Requirement {
    pub fn resource(name: &str) -> Self {
        Requirement::Resource {
            name: name.to_string(),
            view: format!("{name}.view"),
            add: format!("{name}.add"),
            change: format!("{name}.change"),
            delete: format!("{name}.delete"),
        }
    }
}

/// Where a rule was written, for logs and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Option<String>,
    pub origin: Origin,
    label: Box<str>,
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<PathPattern>,
    pub methods: MethodSet,
    pub require: Requirement,
}

impl Rule {
    /// The name for logs and reports: the rule's own, or `file:line`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What [`Rule::label`] returns, worked out once when the policy is
    /// compiled (the access log writes it on every request).
    pub(crate) fn make_label(name: Option<&str>, origin: &Origin) -> Box<str> {
        match name {
            Some(n) => n.into(),
            None => {
                let file = origin.file.file_name().unwrap_or_default();
                format!("{}:{}", file.to_string_lossy(), origin.line).into()
            }
        }
    }

    /// `method` is [`MethodSet::bit`] of the request's method, worked out
    /// once per decision rather than once per rule.
    fn matches(&self, req: &Request<'_>, method: u16, segs: &[&str]) -> bool {
        self.methods.contains_bit(method)
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(req.host)))
            && self.paths.iter().any(|p| p.matches(segs))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Group {
    pub permissions: HashSet<String>,
    pub description: Option<String>,
}

/// The facts about a request that rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a http::Method,
    /// Host without port, as the client sent it.
    pub host: &'a str,
    /// Canonical path (see [`crate::canonical`]).
    pub path: &'a str,
}

/// Who is asking. `None` in [`Policy::decide`] means anonymous.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub superuser: bool,
    pub groups: &'a [String],
    pub permissions: &'a [String],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    LoginRequired,
    Forbidden,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::LoginRequired => "login_required",
            Outcome::Forbidden => "forbidden",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Decision<'p> {
    pub outcome: Outcome,
    /// The rule that decided, or `None` when no rule matched.
    pub rule: Option<&'p Rule>,
    /// True when the route is open to anyone (`allow = "anyone"`).
    pub public: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub groups: HashMap<String, Group>,
    pub rules: Vec<Rule>,
    pub tests: Vec<load::PolicyTest>,
    /// Decision for requests no rule matches.
    pub unmatched: Option<Requirement>,
    pub files: Vec<PathBuf>,
    /// Built by [`Policy::index_rules`] once the rules are final.
    index: RuleIndex,
}

/// The rules grouped by the first path segment they can match, so that a
/// decision only tries rules that could apply: with 100 rules a decision
/// looks at a handful instead of walking the list. First match still wins,
/// in file order.
#[derive(Debug, Clone, Default)]
struct RuleIndex {
    /// How many rules it was built for; rules changed afterwards (by hand,
    /// in tests) make [`Policy::decide`] walk the list instead.
    built_for: usize,
    /// foldhash, not SipHash: the keys come from the policy file, so a
    /// client's path can only look a key up, not crowd a bucket, and the
    /// lookup runs on every request.
    by_first: HashMap<Box<str>, Vec<u32>, foldhash::fast::RandomState>,
    /// Rules with a path whose first segment is `*`, or that has none
    /// (`/`, `/**`): they can match any first segment.
    any_first: Vec<u32>,
    /// Keys are lower case (the policy matches case-insensitively).
    lower: bool,
    /// Some rule names hosts.
    hosts: bool,
}

/// Segments up to this long are lower-cased on the stack for the index;
/// a longer first segment makes the decision walk every rule.
const INDEX_SEGMENT_MAX: usize = 64;

/// Most paths have few segments; splitting into a stack buffer keeps the
/// hot path free of allocation.
const INLINE_SEGMENTS: usize = 24;

impl Policy {
    /// Whether any rule looks at the host: if none does, callers need not
    /// work the host out for [`Request::host`].
    pub fn uses_hosts(&self) -> bool {
        self.index.hosts || self.index.built_for != self.rules.len()
    }

    /// The same policy deciding by walking every rule (tests compare the
    /// two).
    #[cfg(test)]
    pub(crate) fn unindexed(mut self) -> Self {
        self.index = RuleIndex::default();
        self
    }

    /// Groups the rules by first path segment for [`Policy::decide`]; call
    /// once the rules are final ([`load::compile`] does).
    pub fn index_rules(&mut self) {
        let mut index = RuleIndex {
            built_for: self.rules.len(),
            ..RuleIndex::default()
        };
        for (i, rule) in self.rules.iter().enumerate() {
            let i = i as u32;
            index.hosts |= !rule.hosts.is_empty();
            let mut any = rule.paths.is_empty();
            for p in &rule.paths {
                match p.segments.first() {
                    Some(pattern::Segment::Literal(l)) => {
                        index.lower |= p.case_insensitive;
                        // Case-insensitive literals are lower case already.
                        let v = index.by_first.entry(l.as_str().into()).or_default();
                        if v.last() != Some(&i) {
                            v.push(i);
                        }
                    }
                    _ => any = true,
                }
            }
            if any {
                index.any_first.push(i);
            }
        }
        self.index = index;
    }

    pub fn decide<'p>(&'p self, req: &Request<'_>, who: Option<&Subject<'_>>) -> Decision<'p> {
        let mut inline = [""; INLINE_SEGMENTS];
        let mut spill = Vec::new();
        let mut n = 0;
        for s in crate::canonical::match_segments(req.path) {
            if n < INLINE_SEGMENTS {
                inline[n] = s;
            } else {
                if spill.is_empty() {
                    spill.extend_from_slice(&inline);
                }
                spill.push(s);
            }
            n += 1;
        }
        let segs: &[&str] = if n <= INLINE_SEGMENTS {
            &inline[..n]
        } else {
            &spill
        };

        let method = MethodSet::bit(req.method);
        if self.index.built_for == self.rules.len() && !self.rules.is_empty() {
            let mut buf = [0u8; INDEX_SEGMENT_MAX];
            let first = match segs.first() {
                Some(s) if self.index.lower && s.bytes().any(|b| b.is_ascii_uppercase()) => {
                    match buf.get_mut(..s.len()) {
                        Some(b) => {
                            b.copy_from_slice(s.as_bytes());
                            b.make_ascii_lowercase();
                            // Lower-casing ASCII bytes keeps UTF-8 valid.
                            std::str::from_utf8(b).ok()
                        }
                        None => return self.decide_by_walking(req, method, segs, who),
                    }
                }
                other => other.copied(),
            };
            let keyed: &[u32] = first
                .and_then(|s| self.index.by_first.get(s))
                .map_or(&[], Vec::as_slice);
            let any = self.index.any_first.as_slice();
            // Both lists are in rule order: merging them keeps first-match.
            let (mut i, mut j) = (0, 0);
            loop {
                let next = match (keyed.get(i), any.get(j)) {
                    (Some(&a), Some(&b)) if a < b => {
                        i += 1;
                        a
                    }
                    (_, Some(&b)) => {
                        j += 1;
                        b
                    }
                    (Some(&a), None) => {
                        i += 1;
                        a
                    }
                    (None, None) => break,
                };
                let Some(rule) = self.rules.get(next as usize) else {
                    break;
                };
                if rule.matches(req, method, segs) {
                    return self.rule_decision(rule, req, who);
                }
            }
            self.unmatched_decision(req, who)
        } else {
            self.decide_by_walking(req, method, segs, who)
        }
    }

    fn decide_by_walking<'p>(
        &'p self,
        req: &Request<'_>,
        method: u16,
        segs: &[&str],
        who: Option<&Subject<'_>>,
    ) -> Decision<'p> {
        for rule in &self.rules {
            if rule.matches(req, method, segs) {
                return self.rule_decision(rule, req, who);
            }
        }
        self.unmatched_decision(req, who)
    }

    fn rule_decision<'p>(
        &'p self,
        rule: &'p Rule,
        req: &Request<'_>,
        who: Option<&Subject<'_>>,
    ) -> Decision<'p> {
        Decision {
            outcome: self.evaluate(&rule.require, req.method, who),
            rule: Some(rule),
            public: rule.require == Requirement::Anyone,
        }
    }

    fn unmatched_decision<'p>(
        &'p self,
        req: &Request<'_>,
        who: Option<&Subject<'_>>,
    ) -> Decision<'p> {
        let require = self.unmatched.as_ref().unwrap_or(&Requirement::Nobody);
        Decision {
            outcome: self.evaluate(require, req.method, who),
            rule: None,
            public: *require == Requirement::Anyone,
        }
    }

    fn evaluate(
        &self,
        require: &Requirement,
        method: &http::Method,
        who: Option<&Subject<'_>>,
    ) -> Outcome {
        match (require, who) {
            (Requirement::Anyone, _) => Outcome::Allow,
            (Requirement::Nobody, _) => Outcome::Forbidden,
            (_, None) => Outcome::LoginRequired,
            (_, Some(s)) if s.superuser => Outcome::Allow,
            (Requirement::Authenticated, Some(_)) => Outcome::Allow,
            (Requirement::Superuser, Some(_)) => Outcome::Forbidden,
            (Requirement::Groups(gs), Some(s)) => {
                allow_if(gs.iter().any(|g| s.groups.iter().any(|ug| ug == g)))
            }
            (Requirement::Permissions(ps), Some(s)) => {
                allow_if(ps.iter().all(|p| self.has_perm(s, p)))
            }
            (Requirement::Resource { .. }, Some(s)) => match resource_permission(require, method) {
                Some(p) => allow_if(self.has_perm(s, p)),
                None => Outcome::Forbidden,
            },
        }
    }

    /// Django's `has_perm`: the user's own permissions plus their groups'.
    pub fn has_perm(&self, s: &Subject<'_>, perm: &str) -> bool {
        s.superuser
            || s.permissions.iter().any(|p| p == perm)
            || s.groups.iter().any(|g| {
                self.groups
                    .get(g)
                    .is_some_and(|grp| grp.permissions.contains(perm))
            })
    }

    /// All permissions a subject holds (for `explain` and `/me`).
    pub fn effective_permissions(&self, s: &Subject<'_>) -> Vec<String> {
        let mut all: Vec<String> = s.permissions.to_vec();
        for g in s.groups {
            if let Some(grp) = self.groups.get(g) {
                all.extend(grp.permissions.iter().cloned());
            }
        }
        all.sort();
        all.dedup();
        all
    }
}

fn allow_if(ok: bool) -> Outcome {
    if ok {
        Outcome::Allow
    } else {
        Outcome::Forbidden
    }
}

/// The Django permission a `resource` rule needs for a method; `None` for
/// methods that map to no action (denied).
pub fn resource_permission<'r>(require: &'r Requirement, method: &http::Method) -> Option<&'r str> {
    let Requirement::Resource {
        view,
        add,
        change,
        delete,
        ..
    } = require
    else {
        return None;
    };
    match *method {
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => Some(view),
        http::Method::POST => Some(add),
        http::Method::PUT | http::Method::PATCH => Some(change),
        http::Method::DELETE => Some(delete),
        _ => None,
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Anyone => f.write_str("anyone"),
            Requirement::Authenticated => f.write_str("any signed-in user"),
            Requirement::Superuser => f.write_str("a superuser"),
            Requirement::Nobody => f.write_str("nobody"),
            Requirement::Groups(g) => write!(f, "membership of any of the groups [{}]", g.join(", ")),
            Requirement::Permissions(p) => write!(f, "all of the permissions [{}]", p.join(", ")),
            Requirement::Resource { name, .. } => write!(
                f,
                "the permission {name}.view (GET/HEAD/OPTIONS), {name}.add (POST), {name}.change (PUT/PATCH) or {name}.delete (DELETE)"
            ),
        }
    }
}
