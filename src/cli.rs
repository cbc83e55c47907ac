//! The command line: `serve`, `demo`, `check`, `explain`, `user ...`,
//! `session ...`, `healthcheck`. Errors are reported here, at the edge.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::admin::{self, Command};
use crate::config::{self, Config, ConfigError};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An authentication gateway: login and per-path permissions in front of any web app."
)]
pub struct Cli {
    /// Config file (default: config/portcullis.toml, or $PORTCULLIS_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve,
    /// Run a complete local demo: a whoami app, the gateway in front of it, a demo policy and users.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Folder for the demo's store and policy.
        #[arg(long, default_value = "portcullis-demo")]
        data: PathBuf,
    },
    /// Validate the config and every policy file, and run the policy's tests.
    Check {
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Show how the policy decides a request: `explain --user ann DELETE /invoices/7`, or `--anonymous`.
    #[command(group(clap::ArgGroup::new("who").required(true).args(["user", "anonymous"])))]
    Explain {
        /// Decide for this user, as stored.
        #[arg(long)]
        user: Option<String>,
        /// Decide for a visitor who is not signed in.
        #[arg(long)]
        anonymous: bool,
        /// The request's host, for host rules (default: localhost).
        #[arg(long)]
        host: Option<String>,
        /// GET, POST, DELETE, …
        method: String,
        /// The path, as a browser would send it.
        path: String,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// See and end sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Exit 0 if the local gateway answers its health check (for containers).
    Healthcheck {
        /// Defaults to the first listen address of the config.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Args)]
struct PasswordIn {
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user.
    Add {
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        first_name: Option<String>,
        #[arg(long)]
        last_name: Option<String>,
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        superuser: bool,
        #[command(flatten)]
        pw: PasswordIn,
    },
    /// Set a user's password (ends all their sessions).
    Passwd {
        name: String,
        #[command(flatten)]
        pw: PasswordIn,
    },
    /// List every user.
    List,
    /// Show one user: groups, permissions, custom fields, last login.
    Show { name: String },
    /// Disable a user and end their sessions.
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
    /// Delete a user and end their sessions.
    Delete { name: String },
    /// Add or remove a group: `user group NAME add|remove GROUP`.
    Group {
        name: String,
        action: GroupAction,
        group: String,
    },
    /// Give a user a permission of their own, like `invoices.delete`.
    Grant { name: String, permission: String },
    /// Take back a permission given with `grant`.
    Revoke { name: String, permission: String },
    /// Set a field: `user set NAME FIELD=VALUE`.
    Set { name: String, assignment: String },
    /// Clear login throttling for a user.
    Unlock { name: String },
    /// Import users from a Django `dumpdata auth.user --natural-foreign` file or an htpasswd file; their password hashes are kept and upgraded to argon2id at their first login.
    Import {
        #[arg(long, value_enum)]
        format: ImportFormat,
        file: PathBuf,
        /// Overwrite users that already exist (default: report and keep them).
        #[arg(long)]
        update: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFormat {
    Django,
    Htpasswd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GroupAction {
    Add,
    Remove,
}

#[derive(Subcommand)]
enum SessionCmd {
    /// List live sessions: tag, user, times, address, browser.
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
    },
    /// End one session by id (or tag), or all of a user's.
    Revoke {
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        user: Option<String>,
        id: Option<String>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Rust ignores SIGPIPE, so `portcullis user list | head` would panic
    // on its next print. One-shot commands take the usual Unix exit
    // instead; the servers keep ignoring it (a client hanging up must not
    // kill them).
    #[cfg(unix)]
    if !matches!(cli.command, Cmd::Serve | Cmd::Demo { .. }) {
        // SAFETY: restores the default action before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Scripts asking for JSON get their errors in it too (stderr).
            if json {
                eprintln!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}

fn load_config(flag: Option<&Path>) -> anyhow::Result<Config> {
    load_config_and_warnings(flag).map(|(c, _)| c)
}

fn load_config_and_warnings(flag: Option<&Path>) -> anyhow::Result<(Config, crate::diag::Report)> {
    let path = config::resolve_path(flag);
    match Config::load(&path) {
        Ok(loaded) => Ok(loaded),
        Err(ConfigError::Invalid(report)) => Err(anyhow!(
            "the config is invalid:\n{}",
            report.to_string().trim_end()
        )),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// Logs go to standard error through a background writer, so a request
/// never waits on a terminal or a pipe. The guard flushes at exit.
fn init_logging(format: config::LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The writer thread flushes after each batch it drains, so a buffer
    // turns a burst of lines into one write without delaying a quiet log.
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::io::stderr(),
    ));
    let access_writer = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
    // After the subscriber is in place, so that `RUST_LOG` can switch the
    // access log off entirely (no writer thread then).
    if tracing::enabled!(target: crate::access::TARGET, tracing::Level::INFO) {
        crate::access::init(access_writer, format);
    }
    guard
}

fn read_password(pw: &PasswordIn) -> anyhow::Result<String> {
    let mut s = String::new();
    if pw.password_stdin {
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the password from standard input")?;
        let s = s.strip_suffix('\n').unwrap_or(&s);
        let s = s.strip_suffix('\r').unwrap_or(s);
        return Ok(s.to_string());
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Password (again): ")?;
        if a != b {
            return Err(anyhow!("the passwords do not match"));
        }
        return Ok(a);
    }
    Err(anyhow!(
        "give the password with --password-stdin (it is never taken from the command line)"
    ))
}

/// Warns (on stderr; the command still runs) about groups that no policy
/// file defines: a typo such as `stafff` would otherwise leave the user
/// quietly without the permissions meant. Says nothing if the policy does
/// not load (`check` reports that).
fn warn_unknown_groups(cfg: &Config, cmd: &Command) {
    let groups: Vec<&String> = match cmd {
        Command::UserAdd { groups, .. } => groups.iter().collect(),
        Command::UserGroup {
            add: true, group, ..
        } => vec![group],
        Command::UserImport { users, .. } => users.iter().flat_map(|u| &u.groups).collect(),
        _ => return,
    };
    if groups.is_empty() {
        return;
    }
    let Ok((policy, _)) = crate::policy::load::load(&cfg.policy.files, cfg.policy.case_insensitive)
    else {
        return;
    };
    let named_by_a_rule = |g: &str| {
        policy.rules.iter().any(|r| {
            matches!(&r.require, crate::policy::Requirement::Groups(gs) if gs.iter().any(|x| x == g))
        })
    };
    let mut unknown: Vec<&String> = groups
        .into_iter()
        .filter(|g| !policy.groups.contains_key(g.as_str()) && !named_by_a_rule(g))
        .collect();
    unknown.sort();
    unknown.dedup();
    for g in unknown {
        eprintln!(
            "warning: group `{g}` is not defined in the policy ({}): it grants nothing until a [groups.{g}] section or a rule names it",
            cfg.policy
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Runs an admin command on the running gateway, or on the store directly.
fn admin_exec(cfg: &Config, cmd: Command) -> anyhow::Result<Value> {
    if let Some(v) = admin::send(&cfg.storage.path, &cmd)? {
        return Ok(v);
    }
    let store = match crate::store::Store::open(&cfg.storage.path, 16 << 20) {
        Ok(s) => s,
        Err(crate::store::StoreError::Locked { path }) => {
            // A gateway holds the store but its admin socket is not there
            // (yet): it may be starting or stopping, so wait a moment.
            for _ in 0..30 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if let Some(v) = admin::send(&cfg.storage.path, &cmd)? {
                    return Ok(v);
                }
            }
            return Err(crate::store::StoreError::Locked { path }.into());
        }
        Err(e) => {
            return Err(anyhow!(e).context(format!(
            "cannot open the store at {} ([storage] path; it must be a folder this user can write)",
            cfg.storage.path.display()
        )))
        }
    };
    let accounts = crate::accounts::Accounts::new(Arc::new(store.clone()));
    let sessions = crate::session::Sessions::new(
        Arc::new(store.clone()),
        cfg.session.idle_timeout,
        cfg.session.absolute_timeout,
        1024,
    );
    let audit = crate::audit::Audit::new(cfg.log.audit_file.as_deref())?;
    let ops = admin::Ops {
        accounts: &accounts,
        sessions: &sessions,
        rules: &cfg.passwords,
        custom_fields: &cfg.user_fields,
        throttle: None,
        audit: Some(&audit),
        policy: None,
    };
    let v = admin::execute(&ops, cmd)?;
    store
        .flush()
        .with_context(|| format!("cannot save to the store at {}", cfg.storage.path.display()))?;
    Ok(v)
}

fn print(json: bool, v: &Value, text: impl FnOnce(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        let t = text(v);
        if !t.is_empty() {
            println!("{}", t.trim_end());
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let flag = cli.config.as_deref();
    let json = cli.json;
    match cli.command {
        Cmd::Serve => {
            let (cfg, warnings) = load_config_and_warnings(flag)?;
            let _log = init_logging(cfg.log.format);
            for w in warnings.warnings() {
                tracing::warn!(diagnostic = %w, "config warning");
            }
            let served = crate::server::serve(cfg);
            crate::access::flush();
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { listen, data } => {
            let _log = init_logging(config::LogFormat::Text);
            let ran = crate::demo::run(listen, &data);
            crate::access::flush();
            ran?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { strict } => Ok(check(flag, json, strict)),
        Cmd::Explain {
            user,
            anonymous: _,
            host,
            method,
            path,
        } => explain(flag, json, user, host, &method, &path),
        Cmd::Healthcheck { url } => {
            let url = match url {
                Some(u) => u,
                None => {
                    let cfg = load_config(flag)?;
                    let a = cfg
                        .server
                        .listen
                        .first()
                        .copied()
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
                    let host = if a.ip().is_unspecified() {
                        "127.0.0.1".to_string()
                    } else {
                        a.ip().to_string()
                    };
                    format!("http://{host}:{}{}/health", a.port(), cfg.server.prefix)
                }
            };
            let (ok, why) = match crate::cli::probe(&url) {
                Ok(200) => (true, String::new()),
                Ok(code) => (false, format!("{url} answered {code}")),
                Err(e) => (false, format!("{url}: {e}")),
            };
            if json {
                let v = serde_json::json!({ "ok": ok, "url": url, "error": (!ok).then_some(why) });
                println!("{v}");
            } else if ok {
                println!("ok");
            } else {
                eprintln!("unhealthy: {why}");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::User(u) => {
            let cfg = load_config(flag)?;
            user_cmd(&cfg, json, u)
        }
        Cmd::Session(sc) => {
            let cfg = load_config(flag)?;
            match sc {
                SessionCmd::List { user } => {
                    let v = admin_exec(&cfg, Command::SessionList { user })?;
                    print(json, &v, |v| {
                        let mut out = format!(
                            "{:<14} {:<20} {:<22} {:<22} {:<16} {}\n",
                            "TAG", "USER", "CREATED", "LAST SEEN", "IP", "BROWSER"
                        );
                        for x in v.as_array().into_iter().flatten() {
                            out.push_str(&format!(
                                "{:<14} {:<20} {:<22} {:<22} {:<16} {}\n",
                                s(x, "tag"),
                                s(x, "user"),
                                s(x, "created"),
                                s(x, "last_seen"),
                                s(x, "ip"),
                                s(x, "user_agent")
                            ));
                        }
                        out
                    });
                }
                SessionCmd::Revoke { user, id } => {
                    let cmd = match (user, id) {
                        (Some(u), _) => Command::SessionRevokeUser { user: u },
                        (None, Some(id)) => Command::SessionRevoke { id },
                        (None, None) => return Err(anyhow!("give --user NAME or a session id")),
                    };
                    let v = admin_exec(&cfg, cmd)?;
                    print(json, &v, |v| {
                        format!("revoked {} session(s)", s(v, "revoked"))
                    });
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn user_cmd(cfg: &Config, json: bool, u: UserCmd) -> anyhow::Result<ExitCode> {
    let show = |v: &Value| {
        let mut fields = String::new();
        if let Some(map) = v["fields"].as_object() {
            for (k, val) in map {
                let val = val
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| val.to_string());
                fields.push_str(&format!("{:<15}{val}\n", format!("{k}:")));
            }
        }
        format!(
            "username:      {}\nemail:         {}\nname:          {} {}\nactive:        {}\nsuperuser:     {}\ngroups:        {}\npermissions:   {}\ndate joined:   {}\nlast login:    {}\npassword:      algorithm {}\n{fields}",
            s(v, "username"),
            s(v, "email"),
            s(v, "first_name"),
            s(v, "last_name"),
            s(v, "active"),
            s(v, "superuser"),
            s(v, "groups"),
            s(v, "permissions"),
            s(v, "date_joined"),
            s(v, "last_login"),
            s(v, "password_algorithm"),
        )
    };
    type Render = Box<dyn Fn(&Value) -> String>;
    let (cmd, text): (Command, Render) = match u {
        UserCmd::Add {
            name,
            email,
            first_name,
            last_name,
            groups,
            superuser,
            pw,
        } => {
            let password = read_password(&pw)?;
            (
                Command::UserAdd {
                    name,
                    email,
                    first_name,
                    last_name,
                    groups,
                    superuser,
                    password,
                    check_rules: false,
                },
                Box::new(|v: &Value| format!("created user {}", s(v, "username"))),
            )
        }
        UserCmd::Passwd { name, pw } => {
            let password = read_password(&pw)?;
            (
                Command::UserPasswd { name, password },
                Box::new(|v: &Value| {
                    format!(
                        "password changed for {}; {} session(s) ended",
                        s(v, "username"),
                        s(v, "sessions_ended")
                    )
                }),
            )
        }
        UserCmd::List => (
            Command::UserList,
            Box::new(|v: &Value| {
                let mut out = format!(
                    "{:<24} {:<28} {:<7} {:<9} {}\n",
                    "USERNAME", "EMAIL", "ACTIVE", "SUPERUSER", "GROUPS"
                );
                for x in v.as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{:<24} {:<28} {:<7} {:<9} {}\n",
                        s(x, "username"),
                        s(x, "email"),
                        s(x, "active"),
                        s(x, "superuser"),
                        s(x, "groups")
                    ));
                }
                out
            }),
        ),
        UserCmd::Show { name } => (Command::UserShow { name }, Box::new(show)),
        UserCmd::Disable { name } => (
            Command::UserDisable { name },
            Box::new(|v: &Value| {
                format!(
                    "disabled {}; {} session(s) ended",
                    s(v, "username"),
                    s(v, "sessions_ended")
                )
            }),
        ),
        UserCmd::Enable { name } => (
            Command::UserEnable { name },
            Box::new(|v: &Value| format!("enabled {}", s(v, "username"))),
        ),
        UserCmd::Delete { name } => (
            Command::UserDelete { name },
            Box::new(|v: &Value| {
                format!(
                    "deleted {}; {} session(s) ended",
                    s(v, "username"),
                    s(v, "sessions_ended")
                )
            }),
        ),
        UserCmd::Group {
            name,
            action,
            group,
        } => (
            Command::UserGroup {
                name,
                add: matches!(action, GroupAction::Add),
                group,
            },
            Box::new(|v: &Value| format!("{} is in groups: {}", s(v, "username"), s(v, "groups"))),
        ),
        UserCmd::Grant { name, permission } => (
            Command::UserGrant {
                name,
                permission,
                grant: true,
            },
            Box::new(|v: &Value| format!("{} holds: {}", s(v, "username"), s(v, "permissions"))),
        ),
        UserCmd::Revoke { name, permission } => (
            Command::UserGrant {
                name,
                permission,
                grant: false,
            },
            Box::new(|v: &Value| format!("{} holds: {}", s(v, "username"), s(v, "permissions"))),
        ),
        UserCmd::Set { name, assignment } => {
            let (field, value) = assignment.split_once('=').ok_or_else(|| {
                anyhow!("write the change as FIELD=VALUE, like email=ann@example.com")
            })?;
            (
                Command::UserSet {
                    name,
                    field: field.to_string(),
                    value: value.to_string(),
                },
                Box::new(show),
            )
        }
        UserCmd::Import {
            format,
            file,
            update,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let parsed = match format {
                ImportFormat::Django => crate::import::parse_django(&text),
                ImportFormat::Htpasswd => crate::import::parse_htpasswd(&text),
            };
            let imported = parsed.map_err(|errors| {
                let lines: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}:{e}", file.display()))
                    .collect();
                anyhow!(
                    "nothing was imported; fix these records first:\n{}",
                    lines.join("\n")
                )
            })?;
            let users = imported
                .into_iter()
                .map(|i| {
                    let mut u = crate::accounts::User::new(&i.username);
                    u.email = i.email;
                    u.first_name = i.first_name;
                    u.last_name = i.last_name;
                    u.is_active = i.is_active;
                    u.is_superuser = i.is_superuser;
                    u.groups = i.groups;
                    u.permissions = i.permissions;
                    u.password = i.password;
                    if let Some(d) = i.date_joined {
                        u.date_joined = d;
                    }
                    u.last_login = i.last_login;
                    u
                })
                .collect();
            (
                Command::UserImport { users, update },
                Box::new(|v: &Value| {
                    let n = |k: &str| v[k].as_array().map(|a| a.len()).unwrap_or(0);
                    let mut out = format!(
                        "imported {} new user(s), updated {}, kept {} existing",
                        n("created"),
                        n("updated"),
                        n("existing")
                    );
                    if n("existing") > 0 {
                        out.push_str(&format!(
                            " ({}; use --update to overwrite)",
                            s(v, "existing")
                        ));
                    }
                    out
                }),
            )
        }
        UserCmd::Unlock { name } => (
            Command::UserUnlock { name },
            Box::new(|v: &Value| format!("unlocked {}", s(v, "username"))),
        ),
    };
    warn_unknown_groups(cfg, &cmd);
    let v = admin_exec(cfg, cmd)?;
    print(json, &v, text);
    Ok(ExitCode::SUCCESS)
}

fn check(flag: Option<&Path>, json: bool, strict: bool) -> ExitCode {
    let path = config::resolve_path(flag);
    let mut report = crate::diag::Report::default();
    let mut tests = Vec::new();
    match Config::load(&path) {
        Err(ConfigError::Invalid(r)) => report.extend(r),
        Err(e) => report.push(crate::diag::Diagnostic {
            file: path.clone(),
            line: 1,
            column: 1,
            severity: crate::diag::Severity::Error,
            message: e.to_string(),
        }),
        Ok((cfg, warnings)) => {
            report.extend(warnings);
            match crate::policy::load::load(&cfg.policy.files, cfg.policy.case_insensitive) {
                Ok((policy, w)) => {
                    report.extend(w);
                    tests = crate::policy::load::run_tests(&policy);
                    report.extend(crate::policy::load::test_failures(&tests));
                }
                Err(r) => report.extend(r),
            }
        }
    }
    let failed = tests.iter().filter(|t| !t.passed).count();
    let errors = report.errors().count();
    let warnings = report.warnings().count();
    let ok = errors == 0 && !(strict && warnings > 0);
    if json {
        let v = serde_json::json!({ "ok": ok, "errors": errors, "warnings": warnings, "diagnostics": report.items, "tests": tests });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for d in &report.items {
            println!("{d}");
        }
        let passed = tests.len() - failed;
        println!(
            "{}: {errors} error(s), {warnings} warning(s), {passed}/{} policy test(s) passed",
            if ok { "ok" } else { "failed" },
            tests.len()
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn explain(
    flag: Option<&Path>,
    json: bool,
    user: Option<String>,
    host: Option<String>,
    method: &str,
    path: &str,
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(flag)?;
    let (policy, _) = crate::policy::load::load(&cfg.policy.files, cfg.policy.case_insensitive)
        .map_err(|r| {
            anyhow!(
                "the policy does not validate:\n{}",
                r.to_string().trim_end()
            )
        })?;
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| anyhow!("invalid method {method:?}"))?;
    let target = crate::canonical::canonicalize(path.as_bytes(), None)
        .map_err(|e| anyhow!("the gateway would answer 400 to this path: {e}"))?;
    let host = host
        .unwrap_or_else(|| {
            cfg.server
                .public_url
                .host_str()
                .unwrap_or("localhost")
                .to_string()
        })
        .to_ascii_lowercase();
    let record = match &user {
        Some(name) => Some(admin_exec(&cfg, Command::UserShow { name: name.clone() })?),
        None => None,
    };
    let strings = |v: &Value, k: &str| -> Vec<String> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    type Facts = (Vec<String>, Vec<String>, bool, bool);
    let (groups, perms, superuser, active): Facts = match &record {
        Some(v) => (
            strings(v, "groups"),
            strings(v, "permissions"),
            v["superuser"].as_bool().unwrap_or(false),
            v["active"].as_bool().unwrap_or(false),
        ),
        None => (vec![], vec![], false, true),
    };
    let subject = crate::policy::Subject {
        superuser,
        groups: &groups,
        permissions: &perms,
    };
    let signed_in = record.is_some() && active;
    let d = policy.decide(
        &crate::policy::Request {
            method: &method,
            host: &host,
            path: &target.path,
        },
        signed_in.then_some(&subject),
    );
    let effective = policy.effective_permissions(&subject);
    let needed = match d.rule {
        Some(r) => match crate::policy::resource_permission(&r.require, &method) {
            Some(p) => format!("the permission {p} ({method} on resource)"),
            None => r.require.to_string(),
        },
        None => format!(
            "{} (no rule matched; the policy's default applies)",
            policy
                .unmatched
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "nobody".into())
        ),
    };
    let why = match (d.outcome, &record) {
        (crate::policy::Outcome::Allow, _) if d.public => "the route is open to anyone".to_string(),
        (crate::policy::Outcome::Allow, _) if superuser => "the user is a superuser".to_string(),
        (crate::policy::Outcome::Allow, _) => "the user meets the requirement".to_string(),
        (crate::policy::Outcome::LoginRequired, Some(_)) => {
            "the user is disabled, so counts as not signed in".to_string()
        }
        (crate::policy::Outcome::LoginRequired, None) => {
            "the request is anonymous and the route needs a signed-in user".to_string()
        }
        (crate::policy::Outcome::Forbidden, _) => {
            "the user does not meet the requirement".to_string()
        }
    };
    let v = serde_json::json!({
        // In the words `[[test]]` cases use, as the text below.
        "decision": crate::policy::load::Expect::of(d.outcome).as_str(),
        "method": method.as_str(),
        "host": host,
        "path": target.path,
        "rule": d.rule.map(|r| serde_json::json!({ "name": r.name, "label": r.label(), "origin": r.origin.to_string(), "paths": r.paths.iter().map(|p| p.to_string()).collect::<Vec<_>>() })),
        "requires": needed,
        "why": why,
        "user": user.as_ref().map(|u| serde_json::json!({ "username": u, "active": active, "superuser": superuser, "groups": groups, "permissions": effective })),
    });
    print(json, &v, |_| {
        let mut out = format!(
            "decision: {}\nrequest:  {method} {}{} (host {host})\n",
            crate::policy::load::Expect::of(d.outcome).as_str(),
            target.path,
            target
                .query
                .as_ref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
        match d.rule {
            Some(r) => out.push_str(&format!("rule:     {} at {}\n", r.label(), r.origin)),
            None => out.push_str("rule:     none matched\n"),
        }
        out.push_str(&format!("requires: {needed}\n"));
        match &user {
            Some(u) => out.push_str(&format!(
                "user:     {u} (active: {active}, superuser: {superuser}, groups: [{}], permissions: [{}])\n",
                groups.join(", "),
                effective.join(", ")
            )),
            None => out.push_str("user:     anonymous\n"),
        }
        out.push_str(&format!("why:      {why}\n"));
        out
    });
    Ok(ExitCode::SUCCESS)
}

/// A minimal HTTP/1.1 GET for health checks, so the image needs no curl.
pub fn probe(url: &str) -> anyhow::Result<u16> {
    use std::io::Write;
    let u = url::Url::parse(url)?;
    if u.scheme() != "http" {
        return Err(anyhow!("only http:// URLs can be probed"));
    }
    let host = u.host_str().ok_or_else(|| anyhow!("no host in {url}"))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {host}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    write!(s, "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nAccept: application/json\r\n\r\n", u.path())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP answer"))?;
    Ok(code)
}
