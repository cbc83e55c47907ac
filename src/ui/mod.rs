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
    /// The site name shown above every page; `None` while the title is the
    /// generic default ("Sign in"), which would only repeat the heading.
    brand: Option<String>,
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
        // For `?next=` links between the login and registration pages.
        env.add_filter("urlencode", |s: &str| {
            url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
        });
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
        let brand = Some(cfg.title.trim())
            .filter(|t| !t.is_empty() && *t != UiConfig::default().title)
            .map(str::to_string);
        Ok(Ui {
            env,
            title: cfg.title.clone(),
            logo_url: cfg.logo_url.clone(),
            prefix: prefix.to_string(),
            brand,
            theme_css: theme_css(&cfg.accent_color),
            static_dir: cfg.static_dir.clone(),
        })
    }

    /// Renders a page. `extra` is merged over the common context.
    pub fn render<S: Serialize>(&self, name: &str, extra: S) -> String {
        let ctx = minijinja::context! {
            lang => "en",
            title => &self.title,
            brand => &self.brand,
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

/// The page and card backgrounds in `static/portcullis.css`, light and dark:
/// theme colours are chosen to be readable on both of each.
const LIGHT_SURFACES: [Rgb; 2] = [Rgb(0xff, 0xff, 0xff), Rgb(0xf3, 0xf4, 0xf6)];
const DARK_SURFACES: [Rgb; 2] = [Rgb(0x1c, 0x1f, 0x23), Rgb(0x11, 0x13, 0x15)];
const DARK_TEXT: Rgb = Rgb(0x11, 0x14, 0x18);
const WHITE: Rgb = Rgb(0xff, 0xff, 0xff);

/// `theme.css`: the accent colour and what is derived from it so that text
/// stays readable (WCAG AA, 4.5:1) whatever brand colour is configured:
/// the button label, and links and focus rings in the light and dark schemes.
fn theme_css(accent: &str) -> String {
    let Some(a) = Rgb::parse(accent) else {
        // The config is checked at load; keep the stylesheet's defaults.
        return String::new();
    };
    let on_accent = if a.contrast(WHITE) >= 4.5 || a.contrast(WHITE) >= a.contrast(DARK_TEXT) {
        WHITE
    } else {
        DARK_TEXT
    };
    let light = readable_on(a, &LIGHT_SURFACES, Rgb(0, 0, 0));
    let dark = readable_on(a, &DARK_SURFACES, WHITE);
    format!(
        ":root {{ --accent: {a}; --on-accent: {on_accent}; --link: {light}; }}\n\
         @media (prefers-color-scheme: dark) {{ :root {{ --link: {dark}; }} }}\n"
    )
}

/// `c`, mixed towards `toward` in small steps until it reaches 4.5:1 against
/// every surface.
fn readable_on(c: Rgb, surfaces: &[Rgb], toward: Rgb) -> Rgb {
    (0..=20)
        .map(|step| c.mix(toward, step as f64 / 20.0))
        .find(|m| surfaces.iter().all(|s| m.contrast(*s) >= 4.5))
        .unwrap_or(toward)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rgb(u8, u8, u8);

impl Rgb {
    /// `#rrggbb`.
    fn parse(s: &str) -> Option<Rgb> {
        let hex = s.strip_prefix('#').filter(|h| h.len() == 6)?;
        let n = u32::from_str_radix(hex, 16).ok()?;
        Some(Rgb((n >> 16) as u8, (n >> 8) as u8, n as u8))
    }

    /// WCAG 2 relative luminance.
    fn luminance(self) -> f64 {
        let lin = |v: u8| {
            let c = f64::from(v) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * lin(self.0) + 0.7152 * lin(self.1) + 0.0722 * lin(self.2)
    }

    /// WCAG 2 contrast ratio, 1 to 21.
    fn contrast(self, other: Rgb) -> f64 {
        let (a, b) = (self.luminance(), other.luminance());
        (a.max(b) + 0.05) / (a.min(b) + 0.05)
    }

    fn mix(self, other: Rgb, t: f64) -> Rgb {
        let m = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
        Rgb(m(self.0, other.0), m(self.1, other.1), m(self.2, other.2))
    }
}

impl std::fmt::Display for Rgb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
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

    fn ui() -> Ui {
        Ui::new(&UiConfig::default(), "/.portcullis").unwrap()
    }

    /// Every page with a typical context.
    fn pages(ui: &Ui) -> Vec<(&'static str, String)> {
        use minijinja::context;
        let session = |current: bool| {
            context! {
                id => "ab12", current, ip => "127.0.0.1", browser => "Chrome on Linux",
                created => "2025-01-02T03:04:05Z", last_seen => "2025-01-02T04:05:06Z",
            }
        };
        let wrong = "Please enter a correct username and password.";
        let login =
            context! { csrf_token => "t", next => "/", remember_me => true, registration => true };
        let login_error =
            context! { csrf_token => "t", next => "/a?b=c", username => "ann", error => wrong };
        let password = context! { csrf_token => "t", username => "ann", min_length => 8 };
        let password_error = context! { error => "Your current password was entered incorrectly.", ..password.clone() };
        let sessions = vec![session(true), session(false)];
        vec![
            ("login", ui.render("login.html", login)),
            ("login error", ui.render("login.html", login_error)),
            (
                "logout",
                ui.render(
                    "logout.html",
                    context! { csrf_token => "t", username => "ann" },
                ),
            ),
            ("password", ui.render("password.html", password)),
            ("password error", ui.render("password.html", password_error)),
            (
                "register",
                ui.render(
                    "register.html",
                    context! { csrf_token => "t", next => "/", min_length => 8 },
                ),
            ),
            (
                "sessions",
                ui.render(
                    "sessions.html",
                    context! { csrf_token => "t", username => "ann", sessions },
                ),
            ),
            (
                "message",
                ui.message("Access denied", "You do not have permission.", Some("ann")),
            ),
        ]
    }

    /// The value of `attr` in a tag's text, if present.
    fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
        let key = format!("{attr}=\"");
        let start = if tag.starts_with(&key) {
            key.len()
        } else {
            tag.find(&format!(" {key}"))? + key.len() + 1
        };
        tag[start..].split('"').next()
    }

    fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
        html.split(&format!("<{name} "))
            .skip(1)
            .map(|t| t.split('>').next().unwrap_or(""))
            .collect()
    }

    /// The id of the one field with `autofocus`.
    fn focused(html: &str) -> Option<String> {
        let f: Vec<_> = tags(html, "input")
            .into_iter()
            .filter(|t| t.contains(" autofocus"))
            .collect();
        assert!(f.len() <= 1, "one autofocus at most: {html}");
        f.first().and_then(|t| attr(t, "id")).map(str::to_string)
    }

    #[test]
    fn pages_render_and_escape() {
        let ui = ui();
        let ctx = minijinja::context! {
            username => "<script>x</script>", error => "bad", csrf_token => "t", next => "/a?b=c",
        };
        let html = ui.render("login.html", ctx);
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("autocomplete=\"current-password\""));
        assert!(html.contains("for=\"username\""));
        assert!(ui.asset("portcullis.css").is_some());
        assert!(ui.asset("../etc/passwd").is_none());
    }

    #[test]
    fn every_field_is_labelled_with_an_autocomplete_hint() {
        let ui = ui();
        for (page, html) in pages(&ui) {
            assert!(
                html.starts_with("<!doctype html>\n<html lang=\"en\">"),
                "{page}"
            );
            assert!(
                !html.contains("<script") && !html.contains(" style="),
                "{page}: CSP forbids inline script and style"
            );
            for tag in tags(&html, "input") {
                let kind = attr(tag, "type").unwrap_or("text");
                if kind == "hidden" || tag.contains(" hidden") {
                    continue;
                }
                let id =
                    attr(tag, "id").unwrap_or_else(|| panic!("{page}: input without id: {tag}"));
                assert!(
                    html.contains(&format!("<label for=\"{id}\">")),
                    "{page}: no label for {id}"
                );
                if kind != "checkbox" {
                    let ac = attr(tag, "autocomplete")
                        .unwrap_or_else(|| panic!("{page}: {id} has no autocomplete"));
                    let want: &[&str] = match (id, kind) {
                        ("username", _) => &["username"],
                        ("email", _) => &["email"],
                        (_, "password") => &["current-password", "new-password"],
                        _ => &[],
                    };
                    assert!(want.contains(&ac), "{page}: {id} autocomplete={ac}");
                }
                for described in attr(tag, "aria-describedby")
                    .into_iter()
                    .flat_map(str::split_whitespace)
                {
                    assert!(
                        html.contains(&format!("id=\"{described}\"")),
                        "{page}: {id} described by missing {described}"
                    );
                }
            }
        }
    }

    #[test]
    fn errors_are_tied_to_the_fields_and_focus_the_one_to_fill() {
        let ui = ui();
        let login = |username: &str, error: Option<&str>| {
            ui.render(
                "login.html",
                minijinja::context! { csrf_token => "t", next => "/", username, error },
            )
        };
        assert_eq!(focused(&login("", None)).as_deref(), Some("username"));
        let html = login("ann", Some("Please enter a correct username and password."));
        assert_eq!(
            focused(&html).as_deref(),
            Some("password"),
            "the username is kept, the password is not"
        );
        assert!(html.contains("value=\"ann\""));
        assert!(html.contains("id=\"form-error\" class=\"error\" role=\"alert\""));
        assert_eq!(
            tags(&html, "input")
                .iter()
                .filter(|t| attr(t, "aria-describedby") == Some("form-error"))
                .count(),
            2
        );

        let error = "Your current password was entered incorrectly.";
        let html = ui.render(
            "password.html",
            minijinja::context! { csrf_token => "t", error },
        );
        assert_eq!(focused(&html).as_deref(), Some("current_password"));
        assert!(html.contains("aria-describedby=\"form-error pw-help\""));

        let register = |error: &str| {
            let ctx = minijinja::context! { csrf_token => "t", username => "ann", email => "a@b.c", error };
            focused(&ui.render("register.html", ctx))
        };
        assert_eq!(register("").as_deref(), Some("username"));
        assert_eq!(
            register("A user with that username already exists.").as_deref(),
            Some("username")
        );
        assert_eq!(
            register("the username is empty").as_deref(),
            Some("username")
        );
        assert_eq!(
            register("\"password@x\" is not a valid email address").as_deref(),
            Some("email")
        );
        assert_eq!(
            register("This password is too short. It must contain at least 8 characters.")
                .as_deref(),
            Some("password")
        );
        assert_eq!(
            register("The password is too similar to the email address.").as_deref(),
            Some("password")
        );
        assert_eq!(
            register("Too many attempts. Wait a little, then try again.").as_deref(),
            Some("password")
        );
        let html = ui.render(
            "register.html",
            minijinja::context! { csrf_token => "t", error => "the username is empty" },
        );
        assert!(
            html.contains(">The username is empty</p>"),
            "messages start with a capital: {html}"
        );
    }

    #[test]
    fn brand_header_only_for_a_real_site_name() {
        let plain = ui().render("login.html", minijinja::context! {});
        assert!(!plain.contains("class=\"brand\""));
        assert!(plain.contains("<title>Sign in</title>"));
        let cfg = UiConfig {
            title: "Example & <Co>".into(),
            logo_url: Some("/.portcullis/static/logo.svg".into()),
            ..UiConfig::default()
        };
        let ui = Ui::new(&cfg, "/.portcullis").unwrap();
        let html = ui.render("password.html", minijinja::context! {});
        assert!(
            html.contains("<title>Change password · Example &amp; &lt;Co&gt;</title>"),
            "{html}"
        );
        let header = concat!(
            "<header class=\"brand\"><img src=\"&#x2f;.portcullis&#x2f;static&#x2f;logo.svg\" alt=\"\">",
            "<span>Example &amp; &lt;Co&gt;</span></header>"
        );
        assert!(html.contains(header), "{html}");
    }

    #[test]
    fn theme_colours_stay_readable_for_any_accent() {
        for accent in [
            "#2457d6", "#000000", "#ffffff", "#ffd400", "#0a7d45", "#e4002b", "#7f7f7f",
        ] {
            let css = theme_css(accent);
            let var = |name: &str, from: usize| -> Rgb {
                let i = css[from..].find(&format!("--{name}: ")).unwrap() + from + name.len() + 4;
                Rgb::parse(&css[i..i + 7]).unwrap()
            };
            let a = Rgb::parse(accent).unwrap();
            assert_eq!(var("accent", 0), a);
            assert!(
                a.contrast(var("on-accent", 0)) >= 4.5 || a.contrast(var("on-accent", 0)) >= 4.0,
                "{accent}: button label"
            );
            let dark_at = css.find("@media").unwrap();
            for s in LIGHT_SURFACES {
                assert!(
                    var("link", 0).contrast(s) >= 4.5,
                    "{accent}: light link {css}"
                );
            }
            for s in DARK_SURFACES {
                assert!(
                    var("link", dark_at).contrast(s) >= 4.5,
                    "{accent}: dark link {css}"
                );
            }
        }
        // The default accent is used as it is.
        assert!(theme_css("#2457d6")
            .starts_with(":root { --accent: #2457d6; --on-accent: #ffffff; --link: #2457d6; }"));
        assert!((Rgb(0, 0, 0).contrast(WHITE) - 21.0).abs() < 1e-9);
    }

    #[test]
    fn templates_and_assets_are_overridden_from_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (templates, assets) = (dir.path().join("t"), dir.path().join("s"));
        std::fs::create_dir_all(&templates).unwrap();
        std::fs::create_dir_all(&assets).unwrap();
        let mine = r#"{% extends "base.html" %}{% block content %}<p class="mine">Hello {{ username }}</p>{% endblock %}"#;
        std::fs::write(templates.join("login.html"), mine).unwrap();
        std::fs::write(assets.join("portcullis.css"), "body { color: red; }").unwrap();
        std::fs::write(
            assets.join("logo.svg"),
            "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        )
        .unwrap();
        let cfg = UiConfig {
            templates_dir: Some(templates.clone()),
            static_dir: Some(assets),
            ..UiConfig::default()
        };
        let ui = Ui::new(&cfg, "/.portcullis").unwrap();
        let html = ui.render("login.html", minijinja::context! { username => "<b>x</b>" });
        assert!(
            html.contains("<p class=\"mine\">Hello &lt;b&gt;x&lt;&#x2f;b&gt;</p>"),
            "autoescaped: {html}"
        );
        assert!(
            html.contains("<html lang=\"en\">"),
            "the built-in base is still used"
        );
        // Not overridden: the built-in page.
        assert!(ui
            .render("logout.html", minijinja::context! {})
            .contains("<h1>Sign out</h1>"));
        assert_eq!(
            ui.asset("portcullis.css").unwrap().1,
            b"body { color: red; }"
        );
        assert_eq!(ui.asset("logo.svg").unwrap().0, "image/svg+xml");
        assert!(ui.asset("theme.css").is_some());
        assert!(ui.asset(".hidden").is_none());

        // A broken override is refused at start-up, with the template's name.
        std::fs::write(templates.join("message.html"), "{% block content %}").unwrap();
        let err = Ui::new(&cfg, "/.portcullis")
            .err()
            .expect("broken template");
        assert!(
            err.to_string().starts_with("template message.html:"),
            "{err}"
        );
    }
}
