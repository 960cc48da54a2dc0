//! The API pages: raw markdown for agents (`/api/doc/raw/{page}`), the same
//! pages as HTML for people (`/docs`), and the OpenAPI document.
//!
//! Everything is embedded at build time and rendered once, on first use:
//! air-gapped installs fetch nothing, and no request pays for rendering.
//! The HTML uses inline CSS only, never an external asset.

use std::sync::LazyLock;

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};
use utoipa::ToSchema;

use super::Resource;
use crate::http::error::ApiError;
use actix_web::http::Method;

const MARKDOWN: &str = "text/markdown; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// A documentation page; its kebab-case name is its URL segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "kebab-case")]
pub enum DocPage {
    TokenManagementUserJwt,
    AgentTokenVerification,
}

impl DocPage {
    pub const ALL: [DocPage; 2] = [
        DocPage::TokenManagementUserJwt,
        DocPage::AgentTokenVerification,
    ];

    /// The URL segment (and the file name in `docs/`, without `.md`).
    pub fn slug(self) -> &'static str {
        match self {
            DocPage::TokenManagementUserJwt => "token-management-user-jwt",
            DocPage::AgentTokenVerification => "agent-token-verification",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            DocPage::TokenManagementUserJwt => "Token management (user JWT)",
            DocPage::AgentTokenVerification => "Agent token verification",
        }
    }

    fn summary(self) -> &'static str {
        match self {
            DocPage::TokenManagementUserJwt => {
                "Check, create, rotate and revoke the user's agent token with the user's JWT."
            }
            DocPage::AgentTokenVerification => {
                "Ask whether an agent token is valid: for nginx, Traefik, Caddy and APIs."
            }
        }
    }

    pub fn markdown(self) -> &'static str {
        match self {
            DocPage::TokenManagementUserJwt => {
                include_str!("../../../docs/token-management-user-jwt.md")
            }
            DocPage::AgentTokenVerification => {
                include_str!("../../../docs/agent-token-verification.md")
            }
        }
    }

    fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.slug() == slug)
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(Resource::new("/docs").on(Method::GET, index).done())
        .service(Resource::new("/docs/{page}").on(Method::GET, html).done())
        .service(
            Resource::new("/api/doc/raw/{page}")
                .on(Method::GET, raw)
                .done(),
        );
}

/// The HTML pages, rendered on first use.
struct Rendered {
    index: Bytes,
    pages: Vec<Bytes>,
}

static RENDERED: LazyLock<Rendered> = LazyLock::new(|| Rendered {
    index: Bytes::from(render_index()),
    pages: DocPage::ALL
        .iter()
        .map(|&p| Bytes::from(render_page(p)))
        .collect(),
});

/// Handles `GET /docs`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "docs",
    operation_id = "docs_index",
    summary = "The documentation index (HTML)",
    responses(
        (status = 200, description = "An HTML page linking every documentation page.", body = String, content_type = "text/html"),
    )
)]
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(HTML)
        .body(RENDERED.index.clone())
}

/// Handles `GET /docs/{page}`.
#[utoipa::path(
    get,
    path = "/docs/{page}",
    tag = "docs",
    operation_id = "docs_page",
    summary = "A documentation page (HTML)",
    params(("page" = DocPage, Path, description = "The page name.")),
    responses(
        (status = 200, description = "The page rendered to HTML.", body = String, content_type = "text/html"),
        (status = 404, description = "No such page: `No such route.`", body = crate::http::error::ErrorBody),
    )
)]
pub async fn html(page: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let page = DocPage::from_slug(&page).ok_or(ApiError::NotFound)?;
    let body = RENDERED
        .pages
        .get(page.index())
        .cloned()
        .ok_or(ApiError::Internal("a documentation page was not rendered"))?;
    Ok(HttpResponse::Ok().content_type(HTML).body(body))
}

/// Handles `GET /api/doc/raw/{page}`.
#[utoipa::path(
    get,
    path = "/api/doc/raw/{page}",
    tag = "docs",
    operation_id = "docs_raw_page",
    summary = "A documentation page as raw markdown, for agents",
    params(("page" = DocPage, Path, description = "The page name.")),
    responses(
        (status = 200, description = "The page as markdown.", body = String, content_type = "text/markdown"),
        (status = 404, description = "No such page: `No such route.`", body = crate::http::error::ErrorBody),
    )
)]
pub async fn raw(page: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let page = DocPage::from_slug(&page).ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type(MARKDOWN)
        .body(page.markdown()))
}

fn render_index() -> String {
    let mut body = String::from(
        "<h1>agent-tokens API</h1>\n<p>One agent API token per user: managed with the user's JWT, \
         verified by gateways and APIs.</p>\n<ul class=\"pages\">\n",
    );
    for page in DocPage::ALL {
        let slug = page.slug();
        body.push_str(&format!(
            "<li><a href=\"/docs/{slug}\">{}</a><p>{}</p>\
             <p class=\"raw\">Markdown for agents: <code>curl -s \"&lt;base&gt;/api/doc/raw/{slug}\"</code></p></li>\n",
            escape(page.title()),
            escape(page.summary()),
        ));
    }
    body.push_str(
        "</ul>\n<p>Machine-readable: <a href=\"/openapi.json\">OpenAPI 3.1 document</a> \
         (<code>/openapi.json</code>).</p>\n",
    );
    layout("agent-tokens API", &body)
}

fn render_page(page: DocPage) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    let events = with_heading_ids(Parser::new_ext(page.markdown(), options).collect());
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events.into_iter());
    layout(&format!("{} · agent-tokens API", page.title()), &html)
}

/// Gives every heading an `id` made from its text, so sections can be
/// linked (`#errors`); headings that set one explicitly keep it.
fn with_heading_ids(mut events: Vec<Event<'_>>) -> Vec<Event<'_>> {
    let mut used: Vec<String> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        if let Event::Start(Tag::Heading { id: None, .. }) = &events[i] {
            let mut text = String::new();
            for event in &events[i + 1..] {
                match event {
                    Event::End(TagEnd::Heading(_)) => break,
                    Event::Text(t) | Event::Code(t) => text.push_str(t),
                    _ => {}
                }
            }
            let mut slug = slugify(&text);
            let base = slug.clone();
            let mut n = 1;
            while used.contains(&slug) {
                slug = format!("{base}-{n}");
                n += 1;
            }
            used.push(slug.clone());
            if let Event::Start(Tag::Heading { id, .. }) = &mut events[i] {
                *id = Some(CowStr::from(slug));
            }
        }
        i += 1;
    }
    events
}

fn slugify(text: &str) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "section".to_owned()
    } else {
        slug.to_owned()
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The page shell: one readable column, light and dark, no external assets.
fn layout(title: &str, body: &str) -> String {
    let mut nav = String::from("<a class=\"brand\" href=\"/docs\">agent-tokens</a>");
    for page in DocPage::ALL {
        nav.push_str(&format!(
            "<a href=\"/docs/{}\">{}</a>",
            page.slug(),
            escape(page.title())
        ));
    }
    nav.push_str("<a href=\"/openapi.json\">OpenAPI</a>");
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header><nav>{nav}</nav></header>\n<main>\n{body}</main>\n</body>\n</html>\n",
        title = escape(title),
    )
}

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg: #1f2328; --muted: #59636e; --bg: #ffffff;
  --subtle: #f6f8fa; --border: #d1d9e0; --link: #0969da; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --muted: #9198a1;
  --bg: #0d1117; --subtle: #161b22; --border: #3d444d; --link: #4493f8; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { border-bottom: 1px solid var(--border); background: var(--subtle); }
nav { max-width: 60rem; margin: 0 auto; padding: .75rem 1.25rem; display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; }
nav a { color: var(--muted); text-decoration: none; font-size: .95rem; }
nav a:hover { color: var(--link); }
nav a.brand { color: var(--fg); font-weight: 600; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.25rem 4rem; }
h1, h2, h3, h4 { line-height: 1.25; margin: 1.75em 0 .6em; }
h1 { font-size: 2rem; margin-top: .75em; }
h2 { font-size: 1.5rem; padding-bottom: .3em; border-bottom: 1px solid var(--border); }
h3 { font-size: 1.2rem; }
a { color: var(--link); }
p, ul, ol, table, pre, blockquote { margin: 0 0 1rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: .875em; }
code { background: var(--subtle); border: 1px solid var(--border); border-radius: 4px; padding: .1em .3em; overflow-wrap: break-word;
  -webkit-box-decoration-break: clone; box-decoration-break: clone; }
pre { background: var(--subtle); border: 1px solid var(--border); border-radius: 6px; padding: .9rem 1rem; overflow-x: auto; line-height: 1.45; }
pre code { background: none; border: 0; padding: 0; font-size: 1em; overflow-wrap: normal; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid var(--border); padding: .4rem .65rem; text-align: left; vertical-align: top; }
th { background: var(--subtle); font-weight: 600; }
blockquote { border-left: 4px solid var(--link); background: var(--subtle); margin-left: 0; padding: .6rem 1rem; border-radius: 0 6px 6px 0; }
blockquote p:last-child { margin-bottom: 0; }
ul.pages { list-style: none; padding: 0; }
ul.pages li { border: 1px solid var(--border); border-radius: 8px; padding: 1rem 1.25rem; margin-bottom: 1rem; }
ul.pages li > a { font-size: 1.2rem; font-weight: 600; }
ul.pages li p { margin: .35rem 0 0; }
ul.pages p.raw { color: var(--muted); font-size: .9rem; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_words_joined_by_dashes() {
        assert_eq!(
            slugify("GET /api/agent-tokens/me"),
            "get-api-agent-tokens-me"
        );
        assert_eq!(slugify("Errors"), "errors");
        assert_eq!(slugify("—"), "section");
    }

    #[test]
    fn repeated_headings_get_distinct_ids() {
        let events = with_heading_ids(Parser::new("# A\n\n# A\n").collect());
        let mut html = String::new();
        pulldown_cmark::html::push_html(&mut html, events.into_iter());
        assert!(html.contains("<h1 id=\"a\">"), "{html}");
        assert!(html.contains("<h1 id=\"a-1\">"), "{html}");
    }

    #[test]
    fn every_page_is_found_by_its_slug_and_indexes_its_rendering() {
        for (i, page) in DocPage::ALL.into_iter().enumerate() {
            assert_eq!(DocPage::from_slug(page.slug()), Some(page));
            assert_eq!(page.index(), i);
        }
        assert_eq!(DocPage::from_slug("nope"), None);
    }
}
