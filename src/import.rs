//! Reading user records exported by other systems: Django's `dumpdata` and
//! Apache htpasswd files. Parsing only; writing to the store is the
//! caller's job.
//!
//! Both parsers are all-or-nothing: they look at every record, report every
//! problem with its line, and return users only when there were none, so an
//! operator fixes the file in one pass and an import never stops half-done.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::accounts::{check_email, check_username, user_key};

#[derive(Debug, Clone, PartialEq)]
pub struct ImportedUser {
    /// 1-based line in the file where this record starts.
    pub line: usize,
    pub username: String,
    pub email: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub is_active: bool,
    pub is_superuser: bool,
    pub groups: Vec<String>,
    /// "app_label.codename", as Django's `has_perm` spells them.
    pub permissions: Vec<String>,
    /// The original hash, kept as-is for [`crate::legacy::verify_any`].
    pub password: String,
    /// Unix seconds, when the export had a date we could read.
    pub date_joined: Option<u64>,
    pub last_login: Option<u64>,
}

impl ImportedUser {
    fn new(line: usize, username: String, password: String) -> Self {
        ImportedUser {
            line,
            username,
            email: None,
            first_name: String::new(),
            last_name: String::new(),
            is_active: true,
            is_superuser: false,
            groups: Vec::new(),
            permissions: Vec::new(),
            password,
            date_joined: None,
            last_login: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {message}")]
pub struct ImportError {
    pub line: usize,
    pub message: String,
}

impl ImportError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        ImportError {
            line,
            message: message.into(),
        }
    }
}

/// Usernames seen so far in one file, by store key, with their first line.
/// The store treats `Alice` and `alice` as one account, so a file holding
/// both would silently merge two people.
#[derive(Default)]
struct SeenNames(HashMap<String, usize>);

impl SeenNames {
    fn check(&mut self, username: &str, line: usize) -> Result<(), String> {
        match self.0.get(&user_key(username)) {
            Some(first) => Err(format!(
                "user {username:?} appears again (first on line {first}; usernames ignore case)"
            )),
            None => {
                self.0.insert(user_key(username), line);
                Ok(())
            }
        }
    }
}

/// Byte offset to 1-based line number.
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
}

/// Parses `manage.py dumpdata auth.user --natural-foreign` output: a JSON
/// array of `{"model": …, "fields": {…}}` objects.
///
/// Records of `auth.user`, or of any model whose fields include "username"
/// and "password" (custom user models), become users; other records are
/// skipped. Groups may be natural keys (`[["staff"]]`) or plain names;
/// permissions are natural keys `[codename, app_label, model]` and come out
/// as "app_label.codename". Every problem in every record is reported with
/// the line where its record starts; any problem means no users at all.
pub fn parse_django(text: &str) -> Result<Vec<ImportedUser>, Vec<ImportError>> {
    let lines = LineIndex::new(text);
    let mut users = Vec::new();
    let mut errors = Vec::new();
    let mut seen = SeenNames::default();

    let records = read_json_array(text, &lines, |offset, record| {
        let line = lines.line_of(offset);
        match django_user(line, &record, &mut seen) {
            Ok(Some(user)) => users.push(user),
            Ok(None) => {}
            Err(problems) => errors.extend(problems.into_iter().map(|m| ImportError::new(line, m))),
        }
    });
    if let Err(e) = records {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

/// Walks a top-level JSON array, handing each element and its byte offset
/// to `each`. serde_json alone cannot say where an array element starts,
/// so the brackets and commas between elements are read here and each
/// element is parsed by a stream deserializer that reports where it ended.
fn read_json_array(
    text: &str,
    lines: &LineIndex,
    mut each: impl FnMut(usize, Value),
) -> Result<(), ImportError> {
    let bytes = text.as_bytes();
    let skip_ws = |mut pos: usize| {
        while pos < bytes.len() && matches!(bytes[pos], b' ' | b'\t' | b'\n' | b'\r') {
            pos += 1;
        }
        pos
    };
    let at = |pos: usize, message: &str| ImportError::new(lines.line_of(pos), message);

    // Editors on Windows like to start files with a byte-order mark.
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let mut pos = skip_ws(start);
    if bytes.get(pos) != Some(&b'[') {
        return Err(at(
            pos,
            "expected a JSON array, as written by manage.py dumpdata",
        ));
    }
    pos = skip_ws(pos + 1);
    if bytes.get(pos) == Some(&b']') {
        return expect_end(text, skip_ws(pos + 1), lines);
    }
    loop {
        let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                let end = pos + stream.byte_offset();
                each(pos, value);
                pos = end;
            }
            Some(Err(e)) => return Err(json_error(&e, lines.line_of(pos))),
            None => return Err(at(pos, "the file ends inside the array")),
        }
        pos = skip_ws(pos);
        match bytes.get(pos) {
            Some(b',') => pos = skip_ws(pos + 1),
            Some(b']') => return expect_end(text, skip_ws(pos + 1), lines),
            Some(_) => return Err(at(pos, "expected , or ] after an array element")),
            None => return Err(at(pos, "the file ends inside the array")),
        }
    }
}

fn expect_end(text: &str, pos: usize, lines: &LineIndex) -> Result<(), ImportError> {
    if pos < text.len() {
        Err(ImportError::new(
            lines.line_of(pos),
            "unexpected text after the JSON array",
        ))
    } else {
        Ok(())
    }
}

/// serde_json counts lines from where this element's parse began, and
/// appends that position to its message; both are rebased onto the file.
fn json_error(e: &serde_json::Error, first_line: usize) -> ImportError {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text);
    ImportError::new(
        first_line + e.line().saturating_sub(1),
        format!("invalid JSON: {message}"),
    )
}

/// One dumpdata record: `Ok(None)` for records of other models, or every
/// problem found in it.
fn django_user(
    line: usize,
    record: &Value,
    seen: &mut SeenNames,
) -> Result<Option<ImportedUser>, Vec<String>> {
    let Some(record) = record.as_object() else {
        return Err(vec![
            "expected an object with \"model\" and \"fields\"".into()
        ]);
    };
    let model = record.get("model").and_then(Value::as_str).unwrap_or("");
    let Some(fields) = record.get("fields").and_then(Value::as_object) else {
        if model == "auth.user" {
            return Err(vec!["the record has no \"fields\" object".into()]);
        }
        return Ok(None);
    };
    // Custom user models have other names but keep these two fields.
    let is_user = model == "auth.user"
        || (fields.contains_key("username") && fields.contains_key("password"));
    if !is_user {
        return Ok(None);
    }

    let mut problems = Vec::new();
    let username = match fields.get("username") {
        Some(Value::String(name)) => match check_username(name) {
            Ok(()) => {
                if let Err(e) = seen.check(name, line) {
                    problems.push(e);
                }
                name.clone()
            }
            Err(e) => {
                problems.push(format!("username {name:?}: {e}"));
                name.clone()
            }
        },
        Some(_) => {
            problems.push("\"username\" is not a string".into());
            String::new()
        }
        None => {
            problems.push("the record has no \"username\"".into());
            String::new()
        }
    };
    // Every later message names the user, so it can be found in the file.
    let who = if username.is_empty() {
        String::from("this record")
    } else {
        format!("user {username:?}")
    };
    let mut note = |problem: String| problems.push(format!("{who}: {problem}"));

    let password = match fields.get("password") {
        Some(Value::String(hash)) => hash.clone(),
        Some(_) => {
            note("\"password\" is not a string".into());
            String::new()
        }
        None => {
            note("the record has no \"password\"".into());
            String::new()
        }
    };
    let mut user = ImportedUser::new(line, username, password);

    match fields.get("email") {
        None | Some(Value::Null) => {}
        Some(Value::String(email)) if email.is_empty() => {}
        Some(Value::String(email)) => match check_email(email) {
            Ok(()) => user.email = Some(email.clone()),
            Err(e) => note(e),
        },
        Some(_) => note("\"email\" is not a string".into()),
    }
    for (key, slot) in [
        ("first_name", &mut user.first_name),
        ("last_name", &mut user.last_name),
    ] {
        match fields.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => *slot = s.clone(),
            Some(_) => note(format!("{key:?} is not a string")),
        }
    }
    for (key, slot) in [
        ("is_active", &mut user.is_active),
        ("is_superuser", &mut user.is_superuser),
    ] {
        match fields.get(key) {
            None => {}
            Some(Value::Bool(b)) => *slot = *b,
            Some(_) => note(format!("{key:?} is not true or false")),
        }
    }
    match django_groups(fields) {
        Ok(groups) => user.groups = groups,
        Err(e) => note(e),
    }
    match django_permissions(fields) {
        Ok(permissions) => user.permissions = permissions,
        Err(e) => note(e),
    }
    user.date_joined = fields
        .get("date_joined")
        .and_then(Value::as_str)
        .and_then(parse_datetime);
    user.last_login = fields
        .get("last_login")
        .and_then(Value::as_str)
        .and_then(parse_datetime);

    if problems.is_empty() {
        Ok(Some(user))
    } else {
        Err(problems)
    }
}

const NEEDS_NATURAL_KEYS: &str =
    "is given by database id; export again with manage.py dumpdata --natural-foreign";

fn list_field<'a>(fields: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{key:?} is not a list")),
    }
}

/// Groups' natural key is `[name]`; a bare name is accepted too.
fn django_groups(fields: &Map<String, Value>) -> Result<Vec<String>, String> {
    list_field(fields, "groups")?
        .iter()
        .map(|group| {
            let name = match group {
                Value::String(name) => name,
                Value::Array(key) => match key.as_slice() {
                    [Value::String(name)] => name,
                    _ => return Err(format!("group {group} is neither a name nor [name]")),
                },
                Value::Number(id) => return Err(format!("group {id} {NEEDS_NATURAL_KEYS}")),
                _ => return Err(format!("group {group} is neither a name nor [name]")),
            };
            if name.is_empty() {
                Err("a group name is empty".into())
            } else {
                Ok(name.clone())
            }
        })
        .collect()
}

/// A permission's natural key is `[codename, app_label, model]`; the
/// dotted "app_label.codename" form is accepted too.
fn django_permissions(fields: &Map<String, Value>) -> Result<Vec<String>, String> {
    list_field(fields, "user_permissions")?
        .iter()
        .map(|perm| match perm {
            Value::Array(key) => match key.as_slice() {
                [Value::String(codename), Value::String(app_label), Value::String(_model)]
                    if !codename.is_empty() && !app_label.is_empty() =>
                {
                    Ok(format!("{app_label}.{codename}"))
                }
                _ => Err(format!(
                    "permission {perm} is not [codename, app_label, model]"
                )),
            },
            Value::String(dotted)
                if dotted
                    .split_once('.')
                    .is_some_and(|(app, code)| !app.is_empty() && !code.is_empty()) =>
            {
                Ok(dotted.clone())
            }
            Value::Number(id) => Err(format!("permission {id} {NEEDS_NATURAL_KEYS}")),
            _ => Err(format!(
                "permission {perm} is not [codename, app_label, model]"
            )),
        })
        .collect()
}

/// Unix seconds from the ISO 8601 form Django's JSON encoder writes:
/// `2023-04-01T10:00:00Z`, with optional fraction (dropped) and an offset
/// instead of `Z`. A time without offset comes from a site with
/// `USE_TZ = False` and is read as UTC, the closest guess available.
/// `None` for anything else, and for times before 1970.
pub fn parse_datetime(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')),
        )
    };
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }

    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest.as_bytes() {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let digits = rest[1..].replace(':', "");
            if digits.len() != 4 || rest.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hh = num_str(&digits[..2])?;
            let mm = num_str(&digits[2..])?;
            if hh > 23 || mm > 59 {
                return None;
            }
            let seconds = hh * 3600 + mm * 60;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };

    let days = days_since_epoch(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(seconds).ok()
}

fn num_str(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian). Years here
/// are four digits, so counting whole years first is cheap enough.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let leaps_before = |y: i64| {
        let y = y - 1;
        y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)
    };
    let year_days = (year - 1970) * 365 + leaps_before(year) - leaps_before(1970);
    let month_days: i64 = (1..month).map(|m| days_in_month(year, m)).sum();
    year_days + month_days + day - 1
}

/// Parses Apache htpasswd lines `name:hash`, skipping blank lines and `#`
/// comments. Only bcrypt hashes (`$2y$`, `$2a$`, `$2b$`) are accepted; a line
/// with another scheme is an error naming that scheme. As with
/// [`parse_django`], every bad line is reported and any means no users.
pub fn parse_htpasswd(text: &str) -> Result<Vec<ImportedUser>, Vec<ImportError>> {
    let mut users = Vec::new();
    let mut errors = Vec::new();
    let mut seen = SeenNames::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        // Apache trims each line and skips empty ones and comments likewise.
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = entry.split_once(':') else {
            errors.push(ImportError::new(line, "expected name:hash"));
            continue;
        };
        if let Err(e) = check_username(name) {
            errors.push(ImportError::new(line, format!("username {name:?}: {e}")));
            continue;
        }
        if let Err(e) = seen.check(name, line) {
            errors.push(ImportError::new(line, e));
            continue;
        }
        // Apache reads the hash up to the next colon and ignores the rest.
        let hash = rest.split(':').next().unwrap_or("");
        // Never echo the hash: in a plain-text file it is the password.
        if let Err(e) = check_htpasswd_hash(hash) {
            errors.push(ImportError::new(line, format!("user {name:?}: {e}")));
            continue;
        }
        users.push(ImportedUser::new(line, name.to_string(), hash.to_string()));
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

/// Accepts a well-formed bcrypt hash that [`crate::legacy::verify_any`]
/// will verify; otherwise says which scheme the line uses instead.
fn check_htpasswd_hash(hash: &str) -> Result<(), String> {
    let unsupported = |scheme: &str| {
        Err(format!(
            "{scheme} cannot be imported; only bcrypt ($2y$) is supported, \
             so reset this password with htpasswd -B"
        ))
    };
    for prefix in ["$2y$", "$2a$", "$2b$"] {
        if hash.starts_with(prefix) {
            return check_bcrypt_shape(hash);
        }
    }
    if hash.is_empty() {
        return Err("the password hash is empty".into());
    }
    if hash.starts_with("$apr1$") {
        return unsupported("Apache MD5 ($apr1$)");
    }
    if hash.starts_with("{SHA}") {
        return unsupported("SHA-1 ({SHA})");
    }
    if hash.starts_with("$2x$") {
        return unsupported("bcrypt with the $2x$ bug");
    }
    for (prefix, scheme) in [
        ("$1$", "MD5-crypt ($1$)"),
        ("$5$", "SHA-256-crypt ($5$)"),
        ("$6$", "SHA-512-crypt ($6$)"),
    ] {
        if hash.starts_with(prefix) {
            return unsupported(scheme);
        }
    }
    if hash.len() == 13 && hash.bytes().all(is_crypt_char) {
        return unsupported("DES crypt");
    }
    unsupported("an unknown scheme (or plain text)")
}

fn is_crypt_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'/'
}

fn check_bcrypt_shape(hash: &str) -> Result<(), String> {
    let max = crate::legacy::MAX_BCRYPT_COST;
    let bytes = hash.as_bytes();
    if bytes.len() != 60
        || !hash.is_ascii()
        || bytes[6] != b'$'
        || !bytes[7..].iter().all(|&b| is_crypt_char(b))
    {
        return Err("the bcrypt hash is malformed".into());
    }
    match num_str(&hash[4..6]) {
        Some(cost) if (4..=i64::from(max)).contains(&cost) => Ok(()),
        Some(cost) if cost > i64::from(max) => Err(format!(
            "bcrypt cost {cost} is above the supported maximum of {max}"
        )),
        _ => Err("the bcrypt hash is malformed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `manage.py dumpdata auth.user auth.group --natural-foreign --indent 2`
    /// from Django 5.2, with a custom user model's record and three broken
    /// records added by hand.
    const DUMP: &str = r#"[
{
  "model": "auth.group",
  "pk": 1,
  "fields": {
    "name": "staff",
    "permissions": []
  }
},
{
  "model": "auth.user",
  "pk": 1,
  "fields": {
    "password": "pbkdf2_sha256$1000$saltysalt$KhTrfEsTZcq3eJUrHZOxLqUN5PN5EhQeWcsfpxYVRDI=",
    "last_login": "2024-02-29T23:59:58.123Z",
    "is_superuser": true,
    "username": "alice",
    "first_name": "Alice",
    "last_name": "Liddell",
    "email": "alice@example.com",
    "is_staff": true,
    "is_active": true,
    "date_joined": "2023-04-01T10:00:00Z",
    "groups": [
      [
        "staff"
      ]
    ],
    "user_permissions": [
      [
        "change_user",
        "auth",
        "user"
      ]
    ]
  }
},
{
  "model": "auth.user",
  "pk": 2,
  "fields": {
    "password": "!unusablexyz",
    "last_login": null,
    "is_superuser": false,
    "username": "bob",
    "first_name": "",
    "last_name": "",
    "email": "",
    "is_staff": false,
    "is_active": false,
    "date_joined": "2022-01-02T03:04:05Z",
    "groups": [["staff"], ["editors"]],
    "user_permissions": []
  }
},
{
  "model": "accounts.customuser",
  "pk": 3,
  "fields": {
    "password": "bcrypt$$2b$04$aR0Nf5QHTy.sagY3WFbwSOedYbdv3Ju0BFXM4fySbRJs945vdstKa",
    "username": "carol.k@example.org",
    "groups": ["editors"],
    "user_permissions": ["wiki.edit_page"]
  }
}
]
"#;

    #[test]
    fn reads_a_real_dump() {
        let users = parse_django(DUMP).expect("valid dump");
        assert_eq!(users.len(), 3);
        assert_eq!(
            users[0],
            ImportedUser {
                line: 10,
                username: "alice".into(),
                email: Some("alice@example.com".into()),
                first_name: "Alice".into(),
                last_name: "Liddell".into(),
                is_active: true,
                is_superuser: true,
                groups: vec!["staff".into()],
                permissions: vec!["auth.change_user".into()],
                password:
                    "pbkdf2_sha256$1000$saltysalt$KhTrfEsTZcq3eJUrHZOxLqUN5PN5EhQeWcsfpxYVRDI="
                        .into(),
                date_joined: Some(1_680_343_200),
                last_login: Some(1_709_251_198),
            }
        );
        let bob = &users[1];
        assert_eq!(bob.line, 38);
        assert_eq!(bob.email, None);
        assert!(!bob.is_active);
        assert_eq!(bob.groups, ["staff", "editors"]);
        assert_eq!(bob.password, "!unusablexyz");
        assert_eq!(bob.date_joined, Some(1_641_092_645));
        assert_eq!(bob.last_login, None);
        let carol = &users[2];
        assert_eq!(carol.line, 56);
        assert_eq!(carol.username, "carol.k@example.org");
        assert_eq!(carol.groups, ["editors"]);
        assert_eq!(carol.permissions, ["wiki.edit_page"]);
        assert!(carol.is_active);
        assert!(crate::legacy::verify_any("s3cret", &users[0].password));
        assert!(crate::legacy::verify_any("s3cret", &carol.password));
    }

    #[test]
    fn reports_every_bad_record_and_imports_nothing() {
        let bad = DUMP.trim_end().trim_end_matches(']').to_string()
            + r#",
{"model": "auth.user", "pk": 4, "fields": {"username": "dan iel", "password": "x"}},
{"model": "auth.user", "pk": 5, "fields": {"username": "ALICE", "password": "x"}},
{"model": "auth.user", "pk": 6, "fields": {"username": "erin", "password": "x",
  "email": "not-an-address", "groups": [3], "user_permissions": [["view_user", "auth"]]}},
{"model": "auth.user", "pk": 7, "fields": {"password": "x"}},
{"model": "auth.user", "pk": 8},
"not an object",
{"model": "auth.user", "pk": 9, "fields": {"username": "frank", "password": "x",
  "is_active": "yes"}}
]
"#;
        let errors = parse_django(&bad).expect_err("bad records");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [67, 68, 69, 69, 69, 71, 72, 73, 74], "{errors:#?}");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("\"dan iel\""), "{}", text[0]);
        assert!(text[1].contains("first on line 10"), "{}", text[1]);
        assert!(text[2].contains("not-an-address"), "{}", text[2]);
        assert!(text[3].contains("--natural-foreign"), "{}", text[3]);
        assert!(
            text[4].contains("[codename, app_label, model]"),
            "{}",
            text[4]
        );
        assert!(text[5].contains("no \"username\""), "{}", text[5]);
        assert!(text[6].contains("no \"fields\""), "{}", text[6]);
        assert!(text[7].contains("expected an object"), "{}", text[7]);
        assert!(
            text[8].starts_with("line 74: user \"frank\": \"is_active\""),
            "{}",
            text[8]
        );
    }

    #[test]
    fn compact_dump_and_empty_dump() {
        let compact = r#"[{"model": "auth.user", "pk": 1, "fields": {"username": "a", "password": "x"}}, {"model": "auth.user", "pk": 2, "fields": {"username": "b", "password": "y"}}]"#;
        let users = parse_django(compact).expect("valid");
        assert_eq!(users.len(), 2);
        assert!(users.iter().all(|u| u.line == 1));
        assert_eq!(parse_django("[]"), Ok(vec![]));
        assert_eq!(parse_django("\u{feff}\n[\n]\n"), Ok(vec![]));
    }

    #[test]
    fn broken_json_names_its_line() {
        let broken = "[\n{\"model\": \"auth.user\", \"fields\": {\"username\": \"a\", \"password\": \"x\"}},\n{\"model\": \"auth.user\",\n \"fields\": {\"username\": \"b\" \"password\": \"y\"}}\n]";
        let errors = parse_django(broken).expect_err("invalid JSON");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 4);
        assert!(
            errors[0].message.starts_with("invalid JSON: "),
            "{errors:?}"
        );
        assert!(!errors[0].message.contains("column"), "{errors:?}");

        for (text, line) in [
            ("", 1),
            ("{}", 1),
            ("[\n{\"a\": 1}\n", 3),
            ("[\n{\"a\": 1},\n]", 3),
            ("[\n{\"a\": 1}\n{\"b\": 2}]", 3),
            ("[]\n[]", 2),
            ("[\n{\"a\": 1", 2),
        ] {
            let errors = parse_django(text).expect_err(text);
            assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
            assert_eq!(errors[0].line, line, "{text:?}: {errors:?}");
        }
    }

    #[test]
    fn errors_before_a_syntax_error_are_kept() {
        let text = "[\n{\"model\": \"auth.user\", \"fields\": {\"username\": \"\", \"password\": \"x\"}},\n{oops}\n]";
        let errors = parse_django(text).expect_err("bad");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3]);
    }

    #[test]
    fn datetimes() {
        for (text, want) in [
            ("2023-04-01T10:00:00Z", Some(1_680_343_200)),
            ("2023-04-01T10:00:00.123Z", Some(1_680_343_200)),
            ("2023-04-01T10:00:00.999999Z", Some(1_680_343_200)),
            ("2023-04-01T10:00:00", Some(1_680_343_200)),
            ("2023-04-01 10:00:00+00:00", Some(1_680_343_200)),
            ("2000-03-01T00:00:00+02:00", Some(951_861_600)),
            ("2000-02-29T22:00:00-0000", Some(951_861_600)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2100-12-31T23:59:59Z", Some(4_133_980_799)),
            ("1969-12-31T23:59:59Z", None),
            ("1970-01-01T00:30:00+01:00", None),
            ("2023-02-29T10:00:00Z", None),
            ("2023-13-01T10:00:00Z", None),
            ("2023-04-01T24:00:00Z", None),
            ("2023-04-01T10:00:00.Z", None),
            ("2023-04-01T10:00:00+1:00", None),
            ("2023-04-01T10:00:00ZZ", None),
            ("2023-04-01", None),
            ("2023-04-01T1O:00:00Z", None),
            ("２０２３-04-01T10:00:00Z", None),
            ("2023-04-01T10:00:00+1é1", None),
            ("2023-04-01T10:00:00.5é", None),
            ("", None),
        ] {
            assert_eq!(parse_datetime(text), want, "{text}");
        }
    }

    const HTPASSWD: &str = "\
# generated by htpasswd 2.4
alice:$2y$05$EN.QhO1TUgi2FIh6eA4FcebQnH0.joXPDGzGYWji84ECo5odYN5Lu

bob:$2y$04$t7gtwsGP1r8LxGbyiTgvg.s4NqLBz6cMVvtZ4U5Z1e/KPDEVq9DfC\r
  # indented comment
dave:$2a$04$T7jjJrIfVSdxHemyb5LAGObSYbVGEO.WlOayua3XjTjUbh8jn2I/a:extra field
";

    #[test]
    fn reads_htpasswd() {
        let users = parse_htpasswd(HTPASSWD).expect("valid");
        let names: Vec<(&str, usize)> = users.iter().map(|u| (&*u.username, u.line)).collect();
        assert_eq!(names, [("alice", 2), ("bob", 4), ("dave", 6)]);
        assert!(users[1].password.ends_with("KPDEVq9DfC"));
        assert!(users[2].password.ends_with("8jn2I/a"));
        assert!(users
            .iter()
            .all(|u| u.is_active && !u.is_superuser && u.email.is_none()));
        assert!(crate::legacy::verify_any("s3cret", &users[0].password));
        assert!(crate::legacy::verify_any("pässwörd✓", &users[1].password));
        assert!(crate::legacy::verify_any("s3cret", &users[2].password));
        assert_eq!(parse_htpasswd(""), Ok(vec![]));
    }

    #[test]
    fn htpasswd_reports_every_unsupported_line() {
        let text = format!(
            "{HTPASSWD}\
carol:$apr1$mwqBS7Cz$Cp/choWNGRt9G4z3YSZEC1
dave2:{{SHA}}/vNB+F2HQ559kaLUZbmHHvZrXpg=
erin:JMEfDyx0Jgrm6
frank:hunter2
BOB:$2y$05$EN.QhO1TUgi2FIh6eA4FcebQnH0.joXPDGzGYWji84ECo5odYN5Lu
no colon here
bad name:$2y$05$EN.QhO1TUgi2FIh6eA4FcebQnH0.joXPDGzGYWji84ECo5odYN5Lu
gina:$2y$17$EN.QhO1TUgi2FIh6eA4FcebQnH0.joXPDGzGYWji84ECo5odYN5Lu
hank:$2y$05$EN.QhO1TUgi2FIh6eA4Fce
ivan:$6$salt$hash
jane:
"
        );
        let errors = parse_htpasswd(&text).expect_err("bad lines");
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, &*e.message)).collect();
        let expect_fragments = [
            (7, "Apache MD5 ($apr1$)"),
            (8, "SHA-1 ({SHA})"),
            (9, "DES crypt"),
            (10, "unknown scheme"),
            (11, "first on line 4"),
            (12, "expected name:hash"),
            (13, "\"bad name\""),
            (14, "cost 17"),
            (15, "malformed"),
            (16, "SHA-512-crypt"),
            (17, "empty"),
        ];
        assert_eq!(got.len(), expect_fragments.len(), "{got:#?}");
        for ((line, message), (want_line, fragment)) in got.iter().zip(expect_fragments) {
            assert_eq!(*line, want_line, "{message}");
            assert!(message.contains(fragment), "line {line}: {message}");
        }
        // A plain-text password must not be echoed back into logs.
        assert!(errors.iter().all(|e| !e.message.contains("hunter2")));
        assert_eq!(
            errors[0].to_string(),
            "line 7: user \"carol\": Apache MD5 ($apr1$) cannot be imported; only bcrypt \
             ($2y$) is supported, so reset this password with htpasswd -B"
        );
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,200}") {
            let _ = parse_django(&text);
            let _ = parse_htpasswd(&text);
            let _ = parse_datetime(&text);
        }

        #[test]
        fn datetime_shaped_input_never_panics(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9é]{0,3})?([Z+-][0-9:é]{0,6})?",
        ) {
            let _ = parse_datetime(&text);
        }

        #[test]
        fn odd_field_values_never_panic(
            values in proptest::collection::vec(
                proptest::sample::select(vec![
                    "null", "true", "1", "-1.5", "\"\"", "\"a\"", "\"é\"", "[]", "{}",
                    "[[]]", "[[\"x\"]]", "[1]", "[[\"a\", \"b\", \"c\"]]", "[\"a.b\"]",
                    "\"2023-04-01T10:00:00Z\"", "\"a@b.c\"",
                ]),
                11,
            ),
        ) {
            let keys = [
                "username", "password", "email", "first_name", "last_name", "is_active",
                "is_superuser", "groups", "user_permissions", "date_joined", "last_login",
            ];
            let fields: Vec<String> =
                keys.iter().zip(&values).map(|(k, v)| format!("\"{k}\": {v}")).collect();
            let text = format!(
                "[{{\"model\": \"auth.user\", \"fields\": {{{}}}}}]",
                fields.join(", ")
            );
            let _ = parse_django(&text);
        }

        #[test]
        fn htpasswd_shaped_input_never_panics(name in "[a-zé]{1,5}", hash in "\\$2[abyx]\\$[0-9é]{2}\\$[./A-Za-z0-9é]{50,56}") {
            let _ = parse_htpasswd(&format!("{name}:{hash}\n"));
        }
    }
}
