//! The gateway's own pages: rendered from minijinja templates (autoescaped)
//! that ship inside the binary and can be overridden from a folder.

use std::path::PathBuf;

use minijinja::Environment;
use serde::Serialize;

use crate::config::UiConfig;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("logout.html", include_str!("templates/logout.html")),
    ("message.html", include_str!("templates/message.html")),
    ("password.html", include_str!("templates/password.html")),
    ("register.html", include_str!("templates/register.html")),
    ("sessions.html", include_str!("templates/sessions.html")),
];

/// Static assets served under `PREFIX/static/`.
const ASSETS: &[(&str, &str, &str)] = &[(
    "portcullis.css",
    "text/css; charset=utf-8",
    include_str!("../../static/portcullis.css"),
)];

pub struct Ui {
    env: Environment<'static>,
    pub title: String,
    pub logo_url: Option<String>,
    pub prefix: String,
    theme_css: String,
    static_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("template {name}: {source}")]
    Template {
        name: String,
        source: minijinja::Error,
    },
}

impl Ui {
    pub fn new(cfg: &UiConfig, prefix: &str) -> Result<Self, UiError> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        let overrides = cfg.templates_dir.clone();
        env.set_loader(move |name| {
            if let Some(dir) = &overrides {
                // Only plain file names: a template name never walks the tree.
                if !name.contains('/') && !name.contains('\\') && !name.starts_with('.') {
                    if let Ok(s) = std::fs::read_to_string(dir.join(name)) {
                        return Ok(Some(s));
                    }
                }
            }
            Ok(TEMPLATES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.to_string()))
        });
        // Fail at start-up, not on the first login, if an override is broken.
        for (name, _) in TEMPLATES {
            env.get_template(name).map_err(|source| UiError::Template {
                name: name.to_string(),
                source,
            })?;
        }
        Ok(Ui {
            env,
            title: cfg.title.clone(),
            logo_url: cfg.logo_url.clone(),
            prefix: prefix.to_string(),
            theme_css: format!(":root {{ --accent: {}; }}\n", cfg.accent_color),
            static_dir: cfg.static_dir.clone(),
        })
    }

    /// Renders a page. `extra` is merged over the common context.
    pub fn render<S: Serialize>(&self, name: &str, extra: S) -> String {
        let ctx = minijinja::context! {
            lang => "en",
            title => &self.title,
            logo_url => &self.logo_url,
            prefix => &self.prefix,
            ..minijinja::Value::from_serialize(&extra)
        };
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(template = name, error = %e, "template failed to render");
                "<!doctype html><title>Error</title><p>This page could not be shown.</p>"
                    .to_string()
            }
        }
    }

    /// A simple page with a heading and a message.
    pub fn message(&self, heading: &str, message: &str, username: Option<&str>) -> String {
        self.render(
            "message.html",
            minijinja::context! { heading, message, username },
        )
    }

    /// An asset by file name: (content type, body).
    pub fn asset(&self, name: &str) -> Option<(&'static str, Vec<u8>)> {
        if name == "theme.css" {
            return Some((
                "text/css; charset=utf-8",
                self.theme_css.clone().into_bytes(),
            ));
        }
        if let Some(dir) = &self.static_dir {
            let safe = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !name.starts_with('.');
            if safe {
                if let Ok(bytes) = std::fs::read(dir.join(name)) {
                    return Some((content_type(name), bytes));
                }
            }
        }
        ASSETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, ct, body)| (*ct, body.as_bytes().to_vec()))
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_render_and_escape() {
        let ui = Ui::new(&UiConfig::default(), "/.portcullis").unwrap();
        let html = ui.render("login.html", minijinja::context! { username => "<script>x</script>", error => "bad", csrf_token => "t", next => "/a?b=c" });
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("autocomplete=\"current-password\""));
        assert!(html.contains("for=\"username\""));
        assert!(ui.asset("portcullis.css").is_some());
        assert!(ui.asset("../etc/passwd").is_none());
    }
}
