//! `portcullis demo`: the whole thing on embedded defaults, in one command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rand::Rng;

use crate::accounts::{Accounts, User};
use crate::config::Config;
use crate::policy::reload::PolicyHandle;
use crate::store::Store;

pub const DEMO_POLICY: &str = r#"# The demo policy. Edit this file while the demo runs: it reloads live.

[groups.staff]
description = "People who may read reports"
permissions = ["reports.view"]

[[rule]]
name = "public pages"
path = "/public/**"
allow = "anyone"

[[rule]]
name = "reports"
path = "/reports/**"
permissions = ["reports.view"]

[[rule]]
name = "admin area"
path = "/admin/**"
allow = "superuser"

[[rule]]
name = "everything else"
path = "/**"
allow = "authenticated"

[[test]]
name = "anonymous visitors must sign in"
anonymous = true
path = "/"
expect = "login"

[[test]]
name = "staff read reports"
user = { groups = ["staff"] }
path = "/reports/q3"
expect = "allow"

[[test]]
name = "staff stay out of admin"
user = { groups = ["staff"] }
path = "/admin"
expect = "deny"
"#;

fn generate_password() -> String {
    const CHARS: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..20)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

fn ensure_user(
    accounts: &Accounts,
    name: &str,
    groups: &[&str],
    superuser: bool,
    password: &str,
) -> anyhow::Result<()> {
    let hash = crate::passwords::hash_blocking(password).map_err(anyhow::Error::msg)?;
    let groups: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
    if accounts.get(name)?.is_some() {
        accounts.modify(name, |u| {
            u.password = hash;
            u.is_active = true;
            u.is_superuser = superuser;
            u.groups = groups;
            Ok(())
        })?;
    } else {
        let mut u = User::new(name);
        u.password = hash;
        u.is_superuser = superuser;
        u.groups = groups;
        u.email = Some(format!("{name}@example.com"));
        u.first_name = if superuser {
            "Ada".into()
        } else {
            "Alice".into()
        };
        u.last_name = if superuser {
            "Admin".into()
        } else {
            "Staff".into()
        };
        accounts.create(&u)?;
    }
    Ok(())
}

pub fn run(listen: SocketAddr, data: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let data: PathBuf = std::path::absolute(data).unwrap_or_else(|_| data.to_path_buf());
    let whoami = crate::upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("cannot start the whoami app")?;

    let policy_file = data.join("policy.toml");
    if !policy_file.exists() {
        std::fs::write(&policy_file, DEMO_POLICY)
            .with_context(|| format!("cannot write {}", policy_file.display()))?;
    }
    let config_text = format!(
        "[server]\nlisten = \"{listen}\"\npublic_url = \"http://{listen}\"\n\n[upstream]\nurl = \"http://{whoami}\"\n\n[storage]\npath = \"store\"\n\n[policy]\nfiles = [\"policy.toml\"]\n"
    );
    let (cfg, report) = Config::parse(&data.join("portcullis.toml"), &config_text, &data);
    let cfg = cfg.ok_or_else(|| anyhow::anyhow!("demo config is invalid:\n{report}"))?;

    let admin_pw = generate_password();
    let alice_pw = generate_password();
    {
        let store = Store::open(&cfg.storage.path, cfg.storage.cache_bytes)?;
        let accounts = Accounts::new(Arc::new(store.clone()));
        ensure_user(&accounts, "admin", &[], true, &admin_pw)?;
        ensure_user(&accounts, "alice", &["staff"], false, &alice_pw)?;
        store.flush()?;
    }
    let (policy, _) = PolicyHandle::load(cfg.policy.files.clone(), false)
        .map_err(|r| anyhow::anyhow!("demo policy is invalid:\n{r}"))?;

    println!();
    println!("  portcullis demo");
    println!("  ---------------");
    println!("  Open            http://{listen}/");
    println!("  Sign in as      admin / {admin_pw}   (superuser)");
    println!("              or  alice / {alice_pw}   (group staff: /reports yes, /admin no)");
    println!("  Public page     http://{listen}/public/");
    println!("  Policy (live)   {}", policy_file.display());
    println!("  Store           {}", cfg.storage.path.display());
    println!("  App behind it   a built-in whoami page on http://{whoami} (shows the identity headers it receives)");
    println!("  Stop with Ctrl-C.");
    println!();
    crate::server::serve_with(cfg, Arc::new(policy))
}
