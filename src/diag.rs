//! Diagnostics that point at a place in a file: `FILE:LINE:COL: message`.
//!
//! Config and policy loading collect every problem they find instead of
//! stopping at the first, so an operator fixes a file in one pass.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // Relative to the working directory when under it, as the paths an
        // operator typed: `config/policy.toml:41:1`, not the absolute path
        // the config resolved it to.
        let shown = std::env::current_dir()
            .ok()
            .and_then(|d| self.file.strip_prefix(d).ok())
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&self.file);
        write!(
            f,
            "{}:{}:{}: {}: {}",
            shown.display(),
            self.line,
            self.column,
            sev,
            self.message
        )
    }
}

/// A file's text plus the means to turn byte offsets into line and column.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self { path, text }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub fn at(
        &self,
        span: Option<Range<usize>>,
        severity: Severity,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = span.map(|s| self.line_col(s.start)).unwrap_or((1, 1));
        Diagnostic {
            file: self.path.to_path_buf(),
            line,
            column,
            severity,
            message: message.into(),
        }
    }

    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        self.at(span, Severity::Error, message)
    }

    pub fn warning(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        self.at(span, Severity::Warning, message)
    }

    /// A TOML deserialisation error, with the position it carries.
    pub fn toml_error(&self, e: &toml::de::Error) -> Diagnostic {
        self.error(e.span(), plain_words(e.message().trim()))
    }
}

/// serde's messages in an operator's words: Rust type names become what
/// to write.
fn plain_words(msg: &str) -> String {
    let mut out = msg.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected u8", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if out.ends_with(rust) {
            out.truncate(out.len() - rust.len());
            out.push_str(plain);
        }
    }
    out
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A set of diagnostics from one or more files.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub items: Vec<Diagnostic>,
}

impl Report {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }
    pub fn extend(&mut self, other: Report) {
        self.items.extend(other.items);
    }
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
    pub fn sort(&mut self) {
        self.items
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}

/// Parses a TOML document into a spanned tree, reporting every syntax error.
pub fn parse_toml<'a>(
    src: &Source<'a>,
    report: &mut Report,
) -> Option<toml::Spanned<toml::de::DeTable<'a>>> {
    let (table, errors) = toml::de::DeTable::parse_recoverable(src.text);
    let had_errors = !errors.is_empty();
    for e in &errors {
        report.push(src.toml_error(e));
    }
    if had_errors {
        None
    } else {
        Some(table)
    }
}

/// Deserialises one spanned value (a section, a rule) on its own, so one bad
/// section does not hide the errors of the next. Within a table, every
/// unknown key and every bad value is reported: after each error the
/// offending key is set aside and the rest is tried again.
pub fn section<'a, T: serde::de::DeserializeOwned>(
    src: &Source<'_>,
    value: &toml::Spanned<toml::de::DeValue<'a>>,
    report: &mut Report,
) -> Option<T> {
    let before = report.errors().count();
    let v = section_partial(src, value, report)?;
    (report.errors().count() == before).then_some(v)
}

/// Like [`section`], but returns what could be read even after errors, so
/// the caller can go on to check the remaining values (the errors are in
/// `report` and the whole file is refused anyway).
pub fn section_partial<'a, T: serde::de::DeserializeOwned>(
    src: &Source<'_>,
    value: &toml::Spanned<toml::de::DeValue<'a>>,
    report: &mut Report,
) -> Option<T> {
    let mut current = value.clone();
    let known = field_names::<T>();
    if let (Some(known), toml::de::DeValue::Table(table)) = (known, current.get_mut()) {
        let unknown: Vec<_> = table
            .keys()
            .filter(|k| !known.contains(&k.get_ref().as_ref()))
            .cloned()
            .collect();
        for k in unknown {
            report.push(src.error(
                Some(k.span()),
                format!(
                        "unknown key `{}`; expected one of {}",
                        k.get_ref(),
                        known
                            .iter()
                            .map(|f| format!("`{f}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
            ));
            table.remove(&k);
        }
    }
    // Each pass removes one bad key, so this ends.
    let mut removed: Vec<String> = Vec::new();
    loop {
        let de = toml::de::ValueDeserializer::from(current.clone());
        match T::deserialize(de) {
            Ok(v) => return Some(v),
            Err(e) => {
                // A required key removed for a bad value is not missing too.
                if removed
                    .iter()
                    .any(|k| e.message().trim() == format!("missing field `{k}`"))
                {
                    return None;
                }
                let mut d = src.toml_error(&e);
                if e.span().is_none() {
                    let (line, column) = src.line_col(value.span().start);
                    d.line = line;
                    d.column = column;
                }
                report.push(d);
                let span = e.span()?;
                let toml::de::DeValue::Table(table) = current.get_mut() else {
                    return None;
                };
                let culprit = table
                    .iter()
                    .find(|(k, v)| {
                        let (ks, vs) = (k.span(), v.span());
                        (vs.start <= span.start && span.start < vs.end.max(vs.start + 1))
                            || (ks.start <= span.start && span.start < ks.end.max(ks.start + 1))
                    })
                    .map(|(k, _)| k.clone());
                match culprit {
                    Some(k) => {
                        removed.push(k.get_ref().to_string());
                        table.remove(&k);
                    }
                    None => return None,
                }
            }
        }
    }
}

/// The field names a struct deserialises, found by asking serde.
pub fn field_names<T: serde::de::DeserializeOwned>() -> Option<&'static [&'static str]> {
    struct Capture<'c>(&'c mut Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for Capture<'_> {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut out = None;
    let _ = T::deserialize(Capture(&mut out));
    out
}

/// A string or a list of strings, as config and policy keys accept. Written
/// by hand rather than `#[serde(untagged)]`, whose error ("did not match
/// any variant of untagged enum") says nothing about what to write.
pub enum StrOrList {
    One(String),
    Many(Vec<String>),
}

impl<'de> serde::Deserialize<'de> for StrOrList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string in quotes, or a list of them in [ ]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrOrList, E> {
                Ok(StrOrList::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StrOrList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StrOrList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let p = Path::new("x.toml");
        let s = Source::new(p, "a = 1\nbé = 2\n");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(6), (2, 1));
        assert_eq!(s.line_col(9), (2, 3));
    }
}
