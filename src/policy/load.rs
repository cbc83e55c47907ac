//! Reading policy files into a compiled [`Policy`], with every error and
//! lint reported as `FILE:LINE:COL`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Group, HostPattern, MethodSet, Origin, Outcome, PathPattern, Policy, Request, Requirement,
    Rule, Subject,
};
use crate::diag::{self, Report, Source, StrOrList};

/// A string or a list of strings; the whole value carries one span and
/// each item points at it.
struct OneOrMany(Spanned<StrOrList>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::<StrOrList>::deserialize(d).map(OneOrMany)
    }
}

impl OneOrMany {
    fn into_vec(self) -> Vec<Spanned<String>> {
        let span = self.0.span();
        match self.0.into_inner() {
            StrOrList::One(s) => vec![Spanned::new(span, s)],
            StrOrList::Many(v) => v
                .into_iter()
                .map(|s| Spanned::new(span.clone(), s))
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    permissions: Vec<Spanned<String>>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Allow {
    Anyone,
    Authenticated,
    Superuser,
    Nobody,
}

impl From<Allow> for Requirement {
    fn from(a: Allow) -> Self {
        match a {
            Allow::Anyone => Requirement::Anyone,
            Allow::Authenticated => Requirement::Authenticated,
            Allow::Superuser => Requirement::Superuser,
            Allow::Nobody => Requirement::Nobody,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    host: Option<OneOrMany>,
    path: OneOrMany,
    methods: Option<Spanned<Vec<String>>>,
    allow: Option<Allow>,
    groups: Option<Vec<Spanned<String>>>,
    permissions: Option<Vec<Spanned<String>>>,
    resource: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTestUser {
    groups: Vec<String>,
    permissions: Vec<String>,
    superuser: bool,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Allow,
    Deny,
    Login,
}

impl Expect {
    /// A decision in the words `[[test]]` cases use.
    pub fn of(o: Outcome) -> Self {
        match o {
            Outcome::Allow => Expect::Allow,
            Outcome::Forbidden => Expect::Deny,
            Outcome::LoginRequired => Expect::Login,
        }
    }

    pub fn matches(&self, o: Outcome) -> bool {
        *self == Expect::of(o)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::Login => "login",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: Option<String>,
    #[serde(default)]
    user: Option<RawTestUser>,
    #[serde(default)]
    anonymous: bool,
    #[serde(default = "get")]
    method: String,
    path: Spanned<String>,
    host: Option<String>,
    expect: Expect,
}

fn get() -> String {
    "GET".into()
}

/// A `[[test]]` case: a virtual user, a request, the decision expected.
#[derive(Debug, Clone)]
pub struct PolicyTest {
    pub name: Option<String>,
    pub origin: Origin,
    pub anonymous: bool,
    pub groups: Vec<String>,
    pub permissions: Vec<String>,
    pub superuser: bool,
    pub method: http::Method,
    pub path: String,
    pub host: String,
    pub expect: Expect,
}

/// Loads and compiles policy files. Returns the policy and its warnings, or
/// every error found.
pub fn load(files: &[PathBuf], case_insensitive: bool) -> Result<(Policy, Report), Report> {
    let mut texts = Vec::new();
    let mut report = Report::default();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(t) => texts.push((f.clone(), t)),
            Err(e) => report.push(crate::diag::Diagnostic {
                file: f.clone(),
                line: 1,
                column: 1,
                severity: diag::Severity::Error,
                message: format!("cannot read policy file: {e} (it is listed in the config's [policy] files; a relative path there is relative to the config file)"),
            }),
        }
    }
    if report.has_errors() {
        return Err(report);
    }
    let refs: Vec<(&Path, &str)> = texts
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    compile(&refs, case_insensitive)
}

/// Compiles policy sources already in memory.
pub fn compile(
    sources: &[(&Path, &str)],
    case_insensitive: bool,
) -> Result<(Policy, Report), Report> {
    let mut report = Report::default();
    let mut policy = Policy {
        files: sources.iter().map(|(p, _)| p.to_path_buf()).collect(),
        ..Policy::default()
    };
    let mut group_origin: HashMap<String, Origin> = HashMap::new();
    let mut unmatched_seen = false;
    // (rule index, spans) for lints that point at the rule
    let mut rule_spans: Vec<(usize, PathBuf, std::ops::Range<usize>)> = Vec::new();
    let mut used_perm_refs: Vec<(String, PathBuf, std::ops::Range<usize>)> = Vec::new();
    let mut group_refs: Vec<(String, PathBuf, std::ops::Range<usize>)> = Vec::new();
    let mut granted: Vec<(String, PathBuf, std::ops::Range<usize>)> = Vec::new();

    for (path, text) in sources {
        let src = Source::new(path, text);
        let Some(doc) = diag::parse_toml(&src, &mut report) else {
            continue;
        };
        let origin_of = |span: std::ops::Range<usize>| {
            let (line, column) = src.line_col(span.start);
            Origin {
                file: path.to_path_buf(),
                line,
                column,
            }
        };
        for (key, value) in doc.get_ref().iter() {
            match key.get_ref().as_ref() {
                "unmatched" => {
                    if let Some(a) = diag::section::<Allow>(&src, value, &mut report) {
                        if unmatched_seen {
                            report.push(src.error(Some(key.span()), "`unmatched` is set in more than one policy file"));
                        }
                        unmatched_seen = true;
                        policy.unmatched = Some(a.into());
                    }
                }
                "groups" => {
                    let Some(table) = value.get_ref().as_table() else {
                        report.push(src.error(Some(value.span()), "`groups` must be a table of [groups.NAME] sections"));
                        continue;
                    };
                    for (gname, gval) in table.iter() {
                        let name = gname.get_ref().to_string();
                        if let Err(m) = check_name(&name, "group") {
                            report.push(src.error(Some(gname.span()), m));
                        }
                        let Some(raw) = diag::section::<RawGroup>(&src, gval, &mut report) else { continue };
                        if let Some(prev) = group_origin.get(&name) {
                            report.push(src.error(
                                Some(gname.span()),
                                format!("group `{name}` is already defined at {prev}"),
                            ));
                            continue;
                        }
                        let mut g = Group { description: raw.description, ..Group::default() };
                        for p in raw.permissions {
                            if let Err(m) = check_permission(p.get_ref()) {
                                report.push(src.error(Some(p.span()), m));
                            }
                            granted.push((p.get_ref().clone(), path.to_path_buf(), p.span()));
                            g.permissions.insert(p.into_inner());
                        }
                        group_origin.insert(name.clone(), origin_of(gname.span()));
                        policy.groups.insert(name, g);
                    }
                }
                "rule" => {
                    let Some(items) = value.get_ref().as_array() else {
                        report.push(src.error(Some(value.span()), "write rules as [[rule]] sections"));
                        continue;
                    };
                    for item in items.iter() {
                        let Some(raw) = diag::section::<RawRule>(&src, item, &mut report) else { continue };
                        let before = report.items.len();
                        let rule = compile_rule(&src, raw, origin_of(item.span()), case_insensitive, &mut report, &mut used_perm_refs, &mut group_refs);
                        if let Some(rule) = rule {
                            if report.items.len() == before || !report.has_errors() {
                                rule_spans.push((policy.rules.len(), path.to_path_buf(), item.span()));
                                policy.rules.push(rule);
                            }
                        }
                    }
                }
                "test" => {
                    let Some(items) = value.get_ref().as_array() else {
                        report.push(src.error(Some(value.span()), "write policy tests as [[test]] sections"));
                        continue;
                    };
                    for item in items.iter() {
                        let Some(raw) = diag::section::<RawTest>(&src, item, &mut report) else { continue };
                        if let Some(t) = compile_test(&src, raw, origin_of(item.span()), &mut report) {
                            policy.tests.push(t);
                        }
                    }
                }
                other => report.push(src.error(
                    Some(key.span()),
                    format!("unknown key `{other}`; a policy file holds [groups.NAME], [[rule]], [[test]] and `unmatched`"),
                )),
            }
        }
    }

    if report.has_errors() {
        report.sort();
        return Err(report);
    }
    lint(
        &policy,
        &rule_spans,
        &used_perm_refs,
        &group_refs,
        &granted,
        sources,
        &mut report,
    );
    report.sort();
    policy.index_rules();
    Ok((policy, report))
}

fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 150
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.@+".contains(c))
    {
        return Err(format!(
            "invalid {what} name {name:?}: use letters, digits and _ - . @ +"
        ));
    }
    Ok(())
}

fn check_permission(p: &str) -> Result<(), String> {
    let ok = match p.split_once('.') {
        Some((res, act)) => {
            let part = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            };
            part(res) && part(act)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid permission {p:?}: write it as resource.action, like \"invoices.view\" or \"reports.export\""
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_rule(
    src: &Source<'_>,
    raw: RawRule,
    origin: Origin,
    ci: bool,
    report: &mut Report,
    used_perms: &mut Vec<(String, PathBuf, std::ops::Range<usize>)>,
    group_refs: &mut Vec<(String, PathBuf, std::ops::Range<usize>)>,
) -> Option<Rule> {
    let mut ok = true;
    let mut hosts = Vec::new();
    for h in raw.host.map(OneOrMany::into_vec).unwrap_or_default() {
        match HostPattern::parse(h.get_ref()) {
            Ok(p) => hosts.push(p),
            Err(m) => {
                report.push(src.error(Some(h.span()), m));
                ok = false;
            }
        }
    }
    let mut paths = Vec::new();
    let raw_paths = raw.path.into_vec();
    if raw_paths.is_empty() {
        report.push(src.error(
            Some(origin_span(src, &origin)),
            "rule has an empty `path` list",
        ));
        ok = false;
    }
    for p in raw_paths {
        match PathPattern::parse(p.get_ref(), ci) {
            Ok(pp) => paths.push(pp),
            Err(m) => {
                report.push(src.error(Some(p.span()), m));
                ok = false;
            }
        }
    }
    let methods = match &raw.methods {
        None => MethodSet::ALL,
        Some(m) => match MethodSet::parse(m.get_ref()) {
            Ok(ms) => ms,
            Err(e) => {
                report.push(src.error(Some(m.span()), e));
                ok = false;
                MethodSet::ALL
            }
        },
    };
    let deciders = [
        raw.allow.is_some(),
        raw.groups.is_some(),
        raw.permissions.is_some(),
        raw.resource.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    let span = origin_span(src, &origin);
    if deciders != 1 {
        let msg = if deciders == 0 {
            "rule decides nothing: give exactly one of allow, groups, permissions or resource"
                .to_string()
        } else if raw.resource.is_some() && raw.permissions.is_some() {
            "rule has both `resource` and `permissions`: a resource rule already picks the permission by method; keep one".to_string()
        } else {
            "rule has more than one of allow, groups, permissions, resource: keep exactly one (split it into two rules if you need both)".to_string()
        };
        report.push(src.error(Some(span), msg));
        return None;
    }
    let require = if let Some(a) = raw.allow {
        a.into()
    } else if let Some(gs) = raw.groups {
        if gs.is_empty() {
            report.push(src.error(
                Some(span.clone()),
                "`groups` is empty: nobody could match it; use allow = \"nobody\" to say that",
            ));
            ok = false;
        }
        for g in &gs {
            group_refs.push((g.get_ref().clone(), src.path.to_path_buf(), g.span()));
        }
        Requirement::Groups(gs.into_iter().map(Spanned::into_inner).collect())
    } else if let Some(ps) = raw.permissions {
        if ps.is_empty() {
            report.push(src.error(
                Some(span.clone()),
                "`permissions` is empty: use allow = \"authenticated\" to say that",
            ));
            ok = false;
        }
        for p in &ps {
            if let Err(m) = check_permission(p.get_ref()) {
                report.push(src.error(Some(p.span()), m));
                ok = false;
            }
            used_perms.push((p.get_ref().clone(), src.path.to_path_buf(), p.span()));
        }
        Requirement::Permissions(ps.into_iter().map(Spanned::into_inner).collect())
    } else if let Some(r) = raw.resource {
        let name = r.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            report.push(src.error(
                Some(r.span()),
                format!("invalid resource {name:?}: write a name like \"invoices\""),
            ));
            ok = false;
        }
        for act in ["view", "add", "change", "delete"] {
            used_perms.push((format!("{name}.{act}"), src.path.to_path_buf(), r.span()));
        }
        Requirement::resource(name)
    } else {
        return None;
    };
    let name = raw.name.map(|n| n.into_inner());
    ok.then_some(Rule {
        label: Rule::make_label(name.as_deref(), &origin),
        name,
        origin,
        hosts,
        paths,
        methods,
        require,
    })
}

fn origin_span(src: &Source<'_>, o: &Origin) -> std::ops::Range<usize> {
    // Map a line/column back to an offset for diagnostics on the whole rule.
    let mut off = 0;
    for (i, line) in src.text.split_inclusive('\n').enumerate() {
        if i + 1 == o.line {
            return off..off;
        }
        off += line.len();
    }
    0..0
}

fn compile_test(
    src: &Source<'_>,
    raw: RawTest,
    origin: Origin,
    report: &mut Report,
) -> Option<PolicyTest> {
    let method = match http::Method::from_bytes(raw.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            report.push(src.error(
                Some(origin_span(src, &origin)),
                format!("invalid method {:?}", raw.method),
            ));
            return None;
        }
    };
    let path = match crate::canonical::canonicalize(raw.path.get_ref().as_bytes(), None) {
        Ok(t) => t.path,
        Err(e) => {
            report.push(src.error(
                Some(raw.path.span()),
                format!("invalid test path {:?}: {e}", raw.path.get_ref()),
            ));
            return None;
        }
    };
    if raw.anonymous && raw.user.is_some() {
        report.push(src.error(
            Some(origin_span(src, &origin)),
            "a test is either `anonymous = true` or has a `user`, not both",
        ));
        return None;
    }
    let user = raw.user.unwrap_or_default();
    Some(PolicyTest {
        name: raw.name,
        origin,
        anonymous: raw.anonymous,
        groups: user.groups,
        permissions: user.permissions,
        superuser: user.superuser,
        method,
        path,
        host: raw
            .host
            .unwrap_or_else(|| "localhost".into())
            .to_ascii_lowercase(),
        expect: raw.expect,
    })
}

fn lint(
    policy: &Policy,
    rule_spans: &[(usize, PathBuf, std::ops::Range<usize>)],
    used_perms: &[(String, PathBuf, std::ops::Range<usize>)],
    group_refs: &[(String, PathBuf, std::ops::Range<usize>)],
    granted: &[(String, PathBuf, std::ops::Range<usize>)],
    sources: &[(&Path, &str)],
    report: &mut Report,
) {
    let src_of = |p: &Path| {
        sources
            .iter()
            .find(|(sp, _)| *sp == p)
            .map(|(sp, t)| Source::new(sp, t))
    };

    // Shadowed rules: an earlier rule matches everything a later one would.
    for (i, later) in policy.rules.iter().enumerate() {
        for earlier in &policy.rules[..i] {
            let hosts_cover = earlier.hosts.is_empty()
                || (!later.hosts.is_empty()
                    && later.hosts.iter().all(|h| earlier.hosts.contains(h)));
            let paths_cover = later
                .paths
                .iter()
                .all(|lp| earlier.paths.iter().any(|ep| ep.covers(lp)));
            if hosts_cover && paths_cover && earlier.methods.covers(&later.methods) {
                if let Some((_, file, span)) = rule_spans.iter().find(|(idx, _, _)| *idx == i) {
                    if let Some(src) = src_of(file) {
                        report.push(src.warning(
                            Some(span.clone()),
                            format!(
                                "rule `{}` can never match: rule `{}` at {} comes first and matches everything it would",
                                later.label(),
                                earlier.label(),
                                earlier.origin
                            ),
                        ));
                    }
                }
                break;
            }
        }
    }

    // Duplicate rule names.
    let mut names: HashMap<&str, &Origin> = HashMap::new();
    for (i, r) in policy.rules.iter().enumerate() {
        if let Some(n) = &r.name {
            if let Some(prev) = names.insert(n, &r.origin) {
                if let Some((_, file, span)) = rule_spans.iter().find(|(idx, _, _)| *idx == i) {
                    if let Some(src) = src_of(file) {
                        report.push(src.warning(
                            Some(span.clone()),
                            format!("rule name `{n}` is also used at {prev}"),
                        ));
                    }
                }
            }
        }
    }

    // Groups that rules name but no file defines.
    for (g, file, span) in group_refs {
        if !policy.groups.contains_key(g) {
            if let Some(src) = src_of(file) {
                report.push(src.warning(
                    Some(span.clone()),
                    format!("group `{g}` is not defined in any policy file (members still match, but it grants no permissions); add [groups.{g}] or fix the name"),
                ));
            }
        }
    }

    // Permissions that groups grant but no rule ever asks for.
    let required: HashSet<&str> = used_perms.iter().map(|(p, _, _)| p.as_str()).collect();
    for (p, file, span) in granted {
        if !required.contains(p.as_str()) {
            if let Some(src) = src_of(file) {
                report.push(src.warning(
                    Some(span.clone()),
                    format!("permission `{p}` is granted but no rule requires it"),
                ));
            }
        }
    }
}

/// The result of running a policy's `[[test]]` cases.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestResult {
    pub name: String,
    pub origin: String,
    pub passed: bool,
    pub expected: Expect,
    /// The decision, in the words `expect` uses.
    pub got: Expect,
    pub rule: Option<String>,
    #[serde(skip)]
    at: Origin,
}

/// Every failed `[[test]]` case as an error at the case. A policy whose own
/// tests fail is refused by `check`, at start and on reload alike: the
/// tests say what the policy must do, so a policy that does otherwise is
/// as wrong as one that does not parse.
pub fn test_failures(results: &[TestResult]) -> Report {
    let mut report = Report::default();
    for t in results.iter().filter(|t| !t.passed) {
        report.push(crate::diag::Diagnostic {
            file: t.at.file.clone(),
            line: t.at.line,
            column: t.at.column,
            severity: crate::diag::Severity::Error,
            message: format!(
                "policy test `{}` failed: expected {}, got {} (rule {})",
                t.name,
                t.expected.as_str(),
                t.got.as_str(),
                t.rule.as_deref().unwrap_or("none: no rule matched")
            ),
        });
    }
    report
}

pub fn run_tests(policy: &Policy) -> Vec<TestResult> {
    policy
        .tests
        .iter()
        .map(|t| {
            let subject = Subject {
                superuser: t.superuser,
                groups: &t.groups,
                permissions: &t.permissions,
            };
            let req = Request {
                method: &t.method,
                host: &t.host,
                path: &t.path,
            };
            let d = policy.decide(&req, if t.anonymous { None } else { Some(&subject) });
            TestResult {
                name: t
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{} {}", t.method, t.path)),
                origin: t.origin.to_string(),
                passed: t.expect.matches(d.outcome),
                expected: t.expect,
                got: Expect::of(d.outcome),
                rule: d.rule.map(|r| r.label().to_string()),
                at: t.origin.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
[groups.staff]
permissions = ["reports.view"]

[groups.accounting]
permissions = ["invoices.view", "invoices.add", "invoices.change"]

[[rule]]
path = "/static/**"
allow = "anyone"

[[rule]]
path = "/invoices/**"
resource = "invoices"

[[rule]]
path = "/admin/**"
groups = ["staff"]

[[rule]]
path = "/reports/export"
methods = ["POST"]
permissions = ["reports.export"]

[[rule]]
path = "/**"
allow = "authenticated"
"#;

    #[test]
    fn the_rule_index_decides_exactly_as_walking_every_rule() {
        let text = r#"
[groups.staff]
permissions = ["reports.view"]

[[rule]]
path = ["/a/**", "/*/x"]
methods = ["POST"]
allow = "nobody"

[[rule]]
host = "admin.example.com"
path = "/**"
groups = ["staff"]

[[rule]]
path = "/a/b"
allow = "anyone"

[[rule]]
path = ["/b/**", "/a/**"]
permissions = ["reports.view"]

[[rule]]
path = "/"
allow = "anyone"

[[rule]]
path = "/*/y/**"
allow = "nobody"

[[rule]]
path = "/c"
methods = ["GET"]
allow = "authenticated"

[[rule]]
path = "/c/**"
allow = "superuser"
"#;
        for case_insensitive in [false, true] {
            let indexed = compile(&[(Path::new("p.toml"), text)], case_insensitive)
                .map(|(p, _)| p)
                .unwrap_or_else(|r| panic!("{r}"));
            let linear = indexed.clone().unindexed();
            let groups = vec!["staff".to_string()];
            let staff = Subject {
                superuser: false,
                groups: &groups,
                permissions: &[],
            };
            let nobody = Subject {
                superuser: false,
                groups: &[],
                permissions: &[],
            };
            let paths = [
                "/", "/a", "/a/", "/a/b", "/a/b/c", "/a/x", "/q/x", "/q/y", "/q/y/z", "/b", "/b/1",
                "/c", "/c/", "/c/d", "/d", "/d/e/f", "/a;p=1/b", "/A/b", "/x/y",
            ];
            let long = format!("/{}/b", "A".repeat(70));
            for path in paths.into_iter().chain([long.as_str()]) {
                for method in [http::Method::GET, http::Method::POST, http::Method::HEAD] {
                    for host in ["app.example.com", "admin.example.com"] {
                        for who in [None, Some(&staff), Some(&nobody)] {
                            let req = Request {
                                method: &method,
                                host,
                                path,
                            };
                            let (a, b) = (indexed.decide(&req, who), linear.decide(&req, who));
                            let at = |d: &crate::policy::Decision<'_>, p: &Policy| {
                                d.rule
                                    .map(|r| p.rules.iter().position(|x| std::ptr::eq(x, r)))
                            };
                            assert_eq!(
                                (a.outcome, a.public, at(&a, &indexed)),
                                (b.outcome, b.public, at(&b, &linear)),
                                "{method} {host}{path}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_host_is_needed_only_by_policies_with_host_rules() {
        let plain = policy("[[rule]]\npath = \"/**\"\nallow = \"anyone\"\n");
        assert!(!plain.uses_hosts());
        // Not indexed (edited by hand): assume it may.
        assert!(plain.clone().unindexed().uses_hosts());
        let hosted = policy(
            "[[rule]]\nhost = \"a.example\"\npath = \"/**\"\nallow = \"nobody\"\n\n[[rule]]\npath = \"/**\"\nallow = \"anyone\"\n",
        );
        assert!(hosted.uses_hosts());
    }

    fn policy(text: &str) -> Policy {
        compile(&[(Path::new("policy.toml"), text)], false)
            .map(|(p, _)| p)
            .unwrap_or_else(|r| panic!("{r}"))
    }

    fn decide(
        p: &Policy,
        method: &str,
        path: &str,
        who: Option<(&[&str], &[&str], bool)>,
    ) -> Outcome {
        let m = http::Method::from_bytes(method.as_bytes()).unwrap();
        let groups: Vec<String>;
        let perms: Vec<String>;
        let subj;
        let s = match who {
            Some((g, ps, su)) => {
                groups = g.iter().map(|s| s.to_string()).collect();
                perms = ps.iter().map(|s| s.to_string()).collect();
                subj = Subject {
                    superuser: su,
                    groups: &groups,
                    permissions: &perms,
                };
                Some(&subj)
            }
            None => None,
        };
        p.decide(
            &Request {
                method: &m,
                host: "localhost",
                path,
            },
            s,
        )
        .outcome
    }

    #[test]
    fn spec_example_policy() {
        let p = policy(SPEC);
        use Outcome::*;
        let acct: (&[&str], &[&str], bool) = (&["accounting"], &[], false);
        let staff: (&[&str], &[&str], bool) = (&["staff"], &[], false);
        let direct: (&[&str], &[&str], bool) = (&[], &["reports.export"], false);
        let root: (&[&str], &[&str], bool) = (&[], &[], true);
        assert_eq!(decide(&p, "GET", "/static/app.css", None), Allow);
        assert_eq!(decide(&p, "GET", "/invoices/1", None), LoginRequired);
        assert_eq!(decide(&p, "GET", "/invoices/1", Some(acct)), Allow);
        assert_eq!(decide(&p, "HEAD", "/invoices", Some(acct)), Allow);
        assert_eq!(decide(&p, "POST", "/invoices/", Some(acct)), Allow);
        assert_eq!(decide(&p, "PATCH", "/invoices/1", Some(acct)), Allow);
        assert_eq!(decide(&p, "DELETE", "/invoices/1", Some(acct)), Forbidden);
        assert_eq!(decide(&p, "GET", "/invoices/1", Some(staff)), Forbidden);
        assert_eq!(decide(&p, "GET", "/admin", Some(staff)), Allow);
        assert_eq!(decide(&p, "GET", "/admin/users", Some(acct)), Forbidden);
        assert_eq!(decide(&p, "GET", "/administrator", Some(acct)), Allow);
        assert_eq!(decide(&p, "POST", "/reports/export", Some(direct)), Allow);
        assert_eq!(
            decide(&p, "POST", "/reports/export", Some(staff)),
            Forbidden
        );
        assert_eq!(decide(&p, "GET", "/reports/export", Some(staff)), Allow);
        assert_eq!(decide(&p, "DELETE", "/invoices/1", Some(root)), Allow);
        assert_eq!(decide(&p, "GET", "/", None), LoginRequired);
    }

    #[test]
    fn default_deny_and_unmatched() {
        let p = policy("[[rule]]\npath = \"/a\"\nallow = \"anyone\"\n");
        assert_eq!(
            decide(&p, "GET", "/b", Some((&[], &[], false))),
            Outcome::Forbidden
        );
        let p =
            policy("unmatched = \"authenticated\"\n[[rule]]\npath = \"/a\"\nallow = \"anyone\"\n");
        assert_eq!(decide(&p, "GET", "/b", None), Outcome::LoginRequired);
    }

    #[test]
    fn errors_carry_positions_and_all_are_reported() {
        let text = "[[rule]]\npath = \"x\"\nallow = \"anyone\"\n\n[[rule]]\npath = \"/a\"\nallow = \"everyone\"\n\n[[rule]]\npath = \"/b\"\nresource = \"r\"\npermissions = [\"r.view\"]\n";
        let r = compile(&[(Path::new("p.toml"), text)], false)
            .err()
            .unwrap();
        let errs: Vec<_> = r.errors().collect();
        assert_eq!(errs.len(), 3, "{r}");
        assert_eq!(errs[0].line, 2);
        assert_eq!(errs[1].line, 7);
        assert!(errs[2].message.contains("resource"), "{r}");
    }

    #[test]
    fn lints() {
        let text = "[groups.g]\npermissions = [\"x.view\"]\n[[rule]]\npath = \"/**\"\nallow = \"authenticated\"\n[[rule]]\nname = \"late\"\npath = \"/admin/**\"\ngroups = [\"nope\"]\n";
        let (_, r) = compile(&[(Path::new("p.toml"), text)], false).unwrap();
        let w: Vec<String> = r.warnings().map(|d| d.message.clone()).collect();
        assert!(w.iter().any(|m| m.contains("never match")), "{w:?}");
        assert!(w.iter().any(|m| m.contains("`nope`")), "{w:?}");
        assert!(w.iter().any(|m| m.contains("x.view")), "{w:?}");
    }

    /// A bad value for a required key is one error, not also "missing".
    #[test]
    fn a_bad_required_value_is_reported_once() {
        let r = compile(
            &[(
                Path::new("p.toml"),
                "[[rule]]\npath = 5\nallow = \"anyone\"\n",
            )],
            false,
        )
        .err()
        .unwrap();
        let all: Vec<String> = r.errors().map(|d| d.to_string()).collect();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(
            all[0].contains("p.toml:2:8") && all[0].contains("a string in quotes"),
            "{all:?}"
        );
    }

    #[test]
    fn policy_tests_run() {
        let text = format!("{SPEC}\n[[test]]\nanonymous = true\npath = \"/admin\"\nexpect = \"login\"\n[[test]]\nuser = {{ groups = [\"staff\"] }}\nmethod = \"DELETE\"\npath = \"/invoices/3\"\nexpect = \"allow\"\n");
        let p = policy(&text);
        let res = run_tests(&p);
        assert!(res[0].passed);
        assert!(!res[1].passed);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The first matching rule decides, whatever the order of rules.
        #[test]
        fn first_match_wins(rules in prop::collection::vec(("[ab]{1,2}", any::<bool>(), 0usize..3), 1..8), path in prop::collection::vec("[ab]{1,2}", 0..3)) {
            let allows = ["anyone", "authenticated", "nobody"];
            let mut text = String::new();
            for (i, (seg, tail, allow)) in rules.iter().enumerate() {
                let p = if *tail { format!("/{seg}/**") } else { format!("/{seg}") };
                text.push_str(&format!("[[rule]]\nname = \"r{i}\"\npath = \"{p}\"\nallow = \"{}\"\n", allows[*allow]));
            }
            let (policy, _) = compile(&[(Path::new("p.toml"), &text)], false).unwrap();
            let req_path = format!("/{}", path.join("/"));
            let m = http::Method::GET;
            let d = policy.decide(&Request { method: &m, host: "h", path: &req_path }, None);
            let expected = rules.iter().position(|(seg, tail, _)| {
                path.first() == Some(seg) && (if *tail { true } else { path.len() == 1 })
            });
            let got = d.rule.map(|r| r.name.clone().unwrap_or_default());
            prop_assert_eq!(got, expected.map(|i| format!("r{i}")));
        }
    }
}
