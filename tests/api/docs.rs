//! The API pages (raw markdown and HTML) and the OpenAPI document: every
//! route and message the code has is documented, and the document lists
//! exactly the routes the live app serves.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::ResponseError;
use agent_tokens::domain::jwt::JwtError;
use agent_tokens::domain::token::TokenError;
use agent_tokens::domain::user::UserIdError;
use agent_tokens::http::error::{ApiError, Operation, VerifyRefusal};
use agent_tokens::http::routes::docs::DocPage;
use agent_tokens::http::routes::tokens::{CREATED_MESSAGE, EXISTS_MESSAGE, ROTATE_MESSAGE};
use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

/// Every route the app serves, with its methods. The OpenAPI document must
/// list exactly these, and each is probed on the live app.
const ROUTES: &[(&str, &[&str])] = &[
    ("/api/agent-tokens/me", &["get", "post", "delete"]),
    ("/api/agent-tokens/me/get-or-create", &["post"]),
    ("/api/agent-tokens/me/events", &["get"]),
    ("/api/agent-tokens/verify", &["get", "head"]),
    ("/api/agent-tokens/revoke", &["post"]),
    ("/oauth2/introspect", &["post"]),
    ("/oauth2/revoke", &["post"]),
    ("/.well-known/oauth-authorization-server", &["get"]),
    ("/api/agent-tokens/users/{user_id}", &["delete"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/docs", &["get"]),
    ("/docs/{page}", &["get"]),
    ("/api/doc/raw/{page}", &["get"]),
    ("/openapi.json", &["get"]),
];

const ALL_METHODS: [&str; 6] = ["get", "head", "post", "put", "patch", "delete"];

const MANAGEMENT: DocPage = DocPage::TokenManagementUserJwt;
const VERIFICATION: DocPage = DocPage::AgentTokenVerification;

fn method(name: &str) -> Method {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap()
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn get_text(app: &TestApp, path: &str) -> (u16, String, String) {
    let resp = app.request(Method::GET, path, None).await;
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    (status, ct, resp.text().await.unwrap())
}

async fn openapi(app: &TestApp) -> Value {
    let (status, ct, body) = get_text(app, "/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(ct, "application/json");
    serde_json::from_str(&body).expect("openapi.json parses")
}

/// What the app itself sends for an error: (status, body, WWW-Authenticate).
async fn rendered(error: ApiError) -> (u16, Value, Option<String>) {
    let resp = error.error_response();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap(), www)
}

fn assert_mentions(page: &str, needle: &str, what: &str) {
    assert!(page.contains(needle), "{what}: the page lacks {needle:?}");
}

/// The errors of the management routes; the messages come from the code.
fn management_errors() -> Vec<ApiError> {
    vec![
        ApiError::MissingCredentials,
        ApiError::MalformedAuthorization,
        ApiError::InvalidJwt(JwtError::Expired),
        ApiError::AgentTokenNotAllowed,
        ApiError::Internal("wiring"),
        ApiError::PayloadTooLarge,
        ApiError::RateLimited {
            retry_after_secs: 1,
        },
        ApiError::TooManyChanges {
            retry_after_secs: 1,
        },
        ApiError::HeadersTooLarge,
        ApiError::NotFound,
        ApiError::MethodNotAllowed {
            allow: "GET".into(),
        },
    ]
}

fn jwt_errors() -> Vec<JwtError> {
    vec![
        JwtError::Malformed,
        JwtError::AlgorithmNotAllowed,
        JwtError::UnknownKid,
        JwtError::MissingKid,
        JwtError::NoKey,
        JwtError::BadSignature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::MissingClaim("<name>".into()),
        JwtError::BadNumericDate("<name>"),
        JwtError::MissingUserClaim,
        JwtError::BadUserClaim(UserIdError::Empty),
        JwtError::BadUserClaim(UserIdError::TooLong),
        JwtError::BadUserClaim(UserIdError::ControlCharacter),
        JwtError::BadUserClaim(UserIdError::SurroundingWhitespace),
        JwtError::BadUserClaim(UserIdError::NonPrinting('\u{202E}')),
    ]
}

const MALFORMED: [TokenError; 4] = [
    TokenError::WrongPrefix,
    TokenError::WrongLength,
    TokenError::NotHex,
    TokenError::BadChecksum,
];

fn refusals() -> Vec<VerifyRefusal> {
    let mut all = vec![
        VerifyRefusal::Missing,
        VerifyRefusal::MalformedHeader,
        VerifyRefusal::UserJwt,
        VerifyRefusal::Unknown,
        VerifyRefusal::RotatedOut,
        VerifyRefusal::Expired,
    ];
    all.extend(MALFORMED.map(VerifyRefusal::Malformed));
    all
}

#[tokio::test]
async fn raw_pages_are_markdown_with_a_for_agents_line() {
    let app = spawn_app().await;
    for page in DocPage::ALL {
        let path = format!("/api/doc/raw/{}", page.slug());
        let (status, ct, body) = get_text(&app, &path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(ct, "text/markdown; charset=utf-8", "{path}");
        assert_eq!(body, page.markdown(), "{path} serves the embedded file");
        assert!(body.starts_with(&format!("# {}\n", page.title())), "{path}");
        assert_mentions(
            &body,
            &format!("`curl -s \"<base>{path}\"`"),
            "the For agents line",
        );
        let on_disk = std::fs::read_to_string(format!(
            "{}/docs/{}.md",
            env!("CARGO_MANIFEST_DIR"),
            page.slug()
        ))
        .unwrap();
        assert_eq!(body, on_disk, "{path} is docs/{}.md", page.slug());
    }
}

#[tokio::test]
async fn the_management_page_covers_every_route_and_message() {
    let app = spawn_app().await;
    let (_, _, page) = get_text(&app, &format!("/api/doc/raw/{}", MANAGEMENT.slug())).await;
    for route in [
        "GET /api/agent-tokens/me",
        "POST /api/agent-tokens/me",
        "POST /api/agent-tokens/me/get-or-create",
        "DELETE /api/agent-tokens/me",
        "GET /api/agent-tokens/me/events",
    ] {
        assert_mentions(&page, &format!("## {route}\n"), "a section per route");
    }
    for message in [ROTATE_MESSAGE, CREATED_MESSAGE, EXISTS_MESSAGE] {
        assert_mentions(&page, message, "success messages");
    }
    for op in [
        Operation::FetchStatus,
        Operation::StoreToken,
        Operation::CheckOrStore,
        Operation::Revoke,
    ] {
        assert_mentions(
            &page,
            &format!("`{}`", op.failure_message()),
            "500 messages",
        );
        let (status, body, _) = rendered(ApiError::failed(op, std::io::Error::other("x"))).await;
        assert_eq!(status, 500);
        assert_mentions(
            &page,
            &format!("`{}`", body["error"].as_str().unwrap()),
            "500 code",
        );
    }
    for error in management_errors() {
        let (status, body, www) = rendered(error).await;
        let code = body["error"].as_str().unwrap();
        let message = body["message"].as_str().unwrap();
        assert_mentions(
            &page,
            &format!("| {status} | `{code}` | `{message}` |"),
            "errors table",
        );
        if let Some(www) = www {
            if !www.contains("error=\"invalid_token\", error_description=\"the token") {
                assert_mentions(&page, &format!("`{www}`"), "WWW-Authenticate");
            }
        }
    }
    for e in jwt_errors() {
        assert_mentions(&page, &format!("| `{e}` |"), "JWT refusal reasons");
    }
    for field in [
        "has_token",
        "token_prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "token",
        "is_new",
        "message",
    ] {
        assert_mentions(&page, &format!("| `{field}` |"), "response fields");
    }
    assert_mentions(&page, "| 204 | No body. |", "DELETE answers 204");
    assert_mentions(
        &page,
        r#"{ "error": "invalid_token", "message": "#,
        "error format",
    );
}

#[tokio::test]
async fn the_verification_page_covers_every_answer_and_recipe() {
    let app = spawn_app().await;
    let (_, _, page) = get_text(&app, &format!("/api/doc/raw/{}", VERIFICATION.slug())).await;
    for route in [
        "| `GET` | `/api/agent-tokens/verify` |",
        "| `HEAD` | `/api/agent-tokens/verify` |",
    ] {
        assert_mentions(&page, route, "both methods");
    }
    for refusal in refusals() {
        let (status, body, www) = rendered(ApiError::InvalidAgentToken(refusal)).await;
        assert_eq!(status, 401);
        assert_eq!(body["active"], false);
        assert_mentions(
            &page,
            &format!("`{}`", body["message"].as_str().unwrap()),
            "refusal messages",
        );
        let www = www.expect("a challenge");
        let basic = ", Basic realm=\"agent-tokens\", charset=\"UTF-8\"";
        let www = match www.strip_suffix(basic) {
            Some(bearer) => {
                assert_mentions(&page, &format!("`{basic}`"), "the Basic challenge");
                bearer.to_owned()
            }
            None => www,
        };
        let (challenge, description) = www.split_once("error_description=\"").unwrap();
        assert_mentions(&page, challenge, "the challenge");
        let description = description.trim_end_matches('"');
        match refusal {
            VerifyRefusal::Malformed(detail) => {
                let head = description.strip_suffix(&detail.to_string()).unwrap();
                assert_mentions(&page, &format!("`{head}<detail>`"), "malformed description");
                assert_mentions(&page, &format!("`{detail}`"), "malformed details");
            }
            _ => assert_mentions(&page, &format!("`{description}`"), "refusal descriptions"),
        }
    }
    let (_, body, _) = rendered(ApiError::failed(
        Operation::Verify,
        std::io::Error::other("x"),
    ))
    .await;
    assert_mentions(
        &page,
        &body
            .to_string()
            .replace("\":\"", "\": \"")
            .replace(",\"", ", \""),
        "the 500",
    );
    let (_, body, _) = rendered(ApiError::MethodNotAllowed {
        allow: "GET".into(),
    })
    .await;
    assert_mentions(&page, body["message"].as_str().unwrap(), "the 405");
    for field in [
        "active",
        "user_id",
        "token_prefix",
        "created_at",
        "expires_at",
        "error",
        "message",
    ] {
        assert_mentions(&page, &format!("| `{field}` |"), "body fields");
    }
    for header in ["X-Agent-User-Id", "WWW-Authenticate", "Cache-Control"] {
        assert_mentions(&page, &format!("| `{header}` |"), "headers");
    }
    for key in ["tokens.rotation_grace_secs", "tokens.max_age_days"] {
        assert_mentions(&page, key, "lifetime settings");
    }
    // The recipes on the page are the tested files in gateway/, line for line.
    let lines: BTreeSet<&str> = page.lines().map(str::trim).collect();
    for file in ["nginx.conf", "traefik.yml", "Caddyfile"] {
        let recipe =
            std::fs::read_to_string(format!("{}/gateway/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        assert_mentions(&page, &format!("`gateway/{file}`"), "recipe file names");
        for line in recipe.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                assert!(
                    lines.contains(line),
                    "gateway/{file}: the page lacks {line:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn unknown_doc_pages_get_the_json_404() {
    let app = spawn_app().await;
    for path in [
        "/api/doc/raw/nope",
        "/docs/nope",
        "/docs/token-management-user-jwt.md",
    ] {
        let resp = app.request(Method::GET, path, None).await;
        let body = assert_error(resp, 404, "not_found").await;
        assert_eq!(body["message"], "No such route.", "{path}");
    }
    let resp = app.request(Method::POST, "/docs", None).await;
    assert_error(resp, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn the_docs_index_links_both_pages_and_the_openapi_document() {
    let app = spawn_app().await;
    let (status, ct, html) = get_text(&app, "/docs").await;
    assert_eq!(status, 200);
    assert_eq!(ct, "text/html; charset=utf-8");
    for page in DocPage::ALL {
        assert_mentions(
            &html,
            &format!("<a href=\"/docs/{}\">{}</a>", page.slug(), page.title()),
            "index links",
        );
        assert_mentions(&html, &format!("/api/doc/raw/{}", page.slug()), "raw links");
    }
    assert_mentions(&html, "href=\"/openapi.json\"", "the OpenAPI link");
}

#[tokio::test]
async fn html_pages_render_headings_tables_and_code_blocks_without_external_assets() {
    let app = spawn_app().await;
    for page in DocPage::ALL {
        let path = format!("/docs/{}", page.slug());
        let (status, ct, html) = get_text(&app, &path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(ct, "text/html; charset=utf-8", "{path}");
        assert!(html.starts_with("<!doctype html>"), "{path}");
        let title = page.title();
        assert_mentions(
            &html,
            &format!("<h1 id=\"{}\">{title}</h1>", page.slug()),
            &path,
        );
        assert_mentions(&html, "<h2 id=\"", &path);
        assert_mentions(&html, "<pre><code class=\"language-", &path);
        assert_mentions(&html, "<table>", &path);
        assert_mentions(&html, "<style>", &path);
        assert_mentions(&html, "For agents:", &path);
        assert!(!html.contains("```"), "{path}: markdown left unrendered");
        for external in ["<script", "<link", " src=", "url(", "@import"] {
            assert!(
                !html.contains(external),
                "{path}: {external} (the page must be self-contained)"
            );
        }
    }
    // Heading ids make sections linkable, e.g. the errors table.
    let (_, _, html) = get_text(&app, &format!("/docs/{}", MANAGEMENT.slug())).await;
    assert_mentions(&html, "<h2 id=\"errors\">Errors</h2>", "the Errors anchor");
    assert_mentions(&html, "href=\"#errors\"", "the link to it");
    assert_mentions(
        &html,
        "<h2 id=\"get-api-agent-tokens-me\">",
        "route anchors",
    );
}

/// The OpenAPI paths and their methods.
fn documented_routes(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| ALL_METHODS.contains(&k.as_str()) || *k == "options" || *k == "trace")
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// The concrete paths to probe for a template (`{page}`: every page).
fn concrete(template: &str) -> Vec<String> {
    if template.contains("{page}") {
        DocPage::ALL
            .iter()
            .map(|p| template.replace("{page}", p.slug()))
            .collect()
    } else {
        vec![template.replace("{user_id}", "alice")]
    }
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_lists_exactly_the_served_routes() {
    // The OAuth routes are served only with a clients file, the
    // deprovisioning route only with an admin secret.
    let (_clients, path) = crate::oauth2::clients_file();
    let (_admin, admin) = crate::deprovision::admin_file();
    let app = spawn_app_with(crate::deprovision::with_admin(
        crate::oauth2::with_introspection(TestConfig::hs256(), &path),
        &admin,
    ))
    .await;
    let doc = openapi(&app).await;
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "{version}");

    let expected: BTreeMap<String, BTreeSet<String>> = ROUTES
        .iter()
        .map(|(p, ms)| (p.to_string(), ms.iter().map(|m| m.to_string()).collect()))
        .collect();
    assert_eq!(documented_routes(&doc), expected);

    // Each listed method is served; every other method is not (404 or 405).
    for (template, methods) in ROUTES {
        for path in concrete(template) {
            for m in ALL_METHODS {
                let resp = app.request(method(m), &path, None).await;
                let status = resp.status().as_u16();
                if status == 405 {
                    // The 405's Allow header and the document agree.
                    let allow = resp.headers().get("allow").map(|v| v.to_str().unwrap());
                    let allow: BTreeSet<String> = allow
                        .unwrap_or_default()
                        .split(',')
                        .map(|a| a.trim().to_ascii_lowercase())
                        .collect();
                    let documented = methods.iter().map(|m| m.to_string()).collect();
                    assert_eq!(allow, documented, "Allow of {m} {path}");
                }
                if methods.contains(&m) {
                    assert!(
                        status != 404 && status != 405,
                        "{m} {path} is documented but answers {status}"
                    );
                } else {
                    assert!(
                        status == 404 || status == 405,
                        "{m} {path} is served ({status}) but not documented"
                    );
                }
            }
        }
    }

    // The `{page}` parameter lists exactly the served pages.
    let pages = &doc["components"]["schemas"]["DocPage"]["enum"];
    let slugs: Vec<&str> = DocPage::ALL.iter().map(|p| p.slug()).collect();
    assert_eq!(pages, &serde_json::json!(slugs));
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{r} does not resolve"));
            resolve(doc, target)
        }
        None => value,
    }
}

fn all_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => all_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| all_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_operation_documents_its_responses_security_and_headers() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let mut refs = Vec::new();
    all_refs(&doc, &mut refs);
    for r in refs {
        assert!(
            doc.pointer(r.trim_start_matches('#')).is_some(),
            "{r} does not resolve"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    for name in ["user_jwt", "agent_token"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{m} {path} has no responses");
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            for (status, response) in responses {
                assert!(response["description"].is_string(), "{m} {path} {status}");
                if m == "head" || status == "204" {
                    assert!(
                        response.get("content").is_none(),
                        "{m} {path} {status} has no body"
                    );
                }
                if status == "401" {
                    assert!(
                        response["headers"]["WWW-Authenticate"].is_object(),
                        "{m} {path}: 401 documents WWW-Authenticate"
                    );
                }
                if status == "500" && m != "head" {
                    let schema = &response["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ErrorBody",
                        "{m} {path}"
                    );
                }
            }
            let security = op
                .get("security")
                .map(|s| s.to_string())
                .unwrap_or_default();
            if path.starts_with("/api/agent-tokens/me") {
                assert_eq!(security, r#"[{"user_jwt":[]}]"#, "{m} {path}");
                assert!(responses.contains_key("401") && responses.contains_key("500"));
            } else if path == "/api/agent-tokens/verify" {
                assert_eq!(
                    security, r#"[{"agent_token":[]},{"agent_token_basic":[]}]"#,
                    "{m} {path}"
                );
                assert!(responses["200"]["headers"]["X-Agent-User-Id"].is_object());
                assert!(responses.contains_key("401"));
            } else if path.starts_with("/oauth2/") {
                assert_eq!(security, r#"[{"introspection_client":[]}]"#, "{m} {path}");
                assert!(responses.contains_key("401") && responses.contains_key("500"));
            } else if path.starts_with("/api/agent-tokens/users/") {
                assert_eq!(security, r#"[{"admin_secret":[]}]"#, "{m} {path}");
                assert!(responses.contains_key("401") && responses.contains_key("500"));
            } else {
                assert_eq!(security, "", "{m} {path} takes no credential");
            }
        }
    }
    let delete = &doc["paths"]["/api/agent-tokens/me"]["delete"]["responses"];
    assert!(delete["204"].is_object() && delete.get("200").is_none());
    let refused = &doc["paths"]["/api/agent-tokens/verify"]["get"]["responses"]["401"];
    let refused = resolve(&doc, &refused["content"]["application/json"]["schema"]);
    assert_eq!(
        refused["required"],
        serde_json::json!(["active", "error", "message"])
    );
}

#[tokio::test]
async fn the_status_schema_has_has_token_and_a_nullable_token_prefix() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let ok = &doc["paths"]["/api/agent-tokens/me"]["get"]["responses"]["200"];
    let schema = resolve(&doc, &ok["content"]["application/json"]["schema"]);
    assert_eq!(schema["properties"]["has_token"]["type"], "boolean");
    assert_eq!(
        schema["properties"]["token_prefix"]["type"],
        serde_json::json!(["string", "null"])
    );
    for field in ["created_at", "last_used_at", "expires_at"] {
        assert_eq!(
            schema["properties"][field]["type"],
            serde_json::json!(["string", "null"]),
            "{field}"
        );
    }
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(required.contains("has_token") && required.contains("token_prefix"));
}

/// Checks a live answer against the document: the status is documented, the
/// content type matches, and a JSON body has the schema's required fields
/// and no others.
async fn assert_conforms(doc: &Value, m: &str, template: &str, resp: reqwest::Response) -> Value {
    let status = resp.status().as_u16().to_string();
    let documented = &doc["paths"][template][m]["responses"][&status];
    assert!(
        documented.is_object(),
        "{m} {template} answered undocumented {status}"
    );
    let ct = content_type(&resp);
    let body = resp.text().await.unwrap();
    let Some(content) = documented.get("content").and_then(Value::as_object) else {
        assert!(
            body.is_empty(),
            "{m} {template} {status}: a body that is not documented"
        );
        return Value::Null;
    };
    let media = ct.split(';').next().unwrap();
    let schema = &content
        .get(media)
        .unwrap_or_else(|| panic!("{m} {template} {status}: {ct} is not documented"))["schema"];
    if media != "application/json" {
        return Value::Null;
    }
    let schema = resolve(doc, schema);
    let json: Value = serde_json::from_str(&body).unwrap();
    if let Some(props) = schema["properties"].as_object() {
        let keys: BTreeSet<&String> = json.as_object().unwrap().keys().collect();
        let documented: BTreeSet<&String> = props.keys().collect();
        // Only documented fields; optional ones (RFC 7662's `exp`) may be absent.
        assert!(
            keys.is_subset(&documented),
            "{m} {template} {status}: {json} has fields beyond {documented:?}"
        );
        for r in schema["required"].as_array().unwrap() {
            assert!(
                json.get(r.as_str().unwrap()).is_some(),
                "{m} {template}: {r}"
            );
        }
    }
    json
}

#[tokio::test]
async fn live_answers_match_the_documented_schemas() {
    let (_clients, path) = crate::oauth2::clients_file();
    let app = spawn_app_with(crate::oauth2::with_introspection(
        TestConfig::hs256(),
        &path,
    ))
    .await;
    let doc = openapi(&app).await;
    let jwt = user_jwt("olga");
    let me = "/api/agent-tokens/me";
    let goc = "/api/agent-tokens/me/get-or-create";
    let verify = "/api/agent-tokens/verify";

    assert_conforms(&doc, "get", me, app.get_me(&jwt).await).await;
    assert_conforms(&doc, "get", me, app.request(Method::GET, me, None).await).await;
    let created = assert_conforms(&doc, "post", goc, app.get_or_create(&jwt).await).await;
    let token = created["token"].as_str().unwrap().to_owned();
    assert_conforms(&doc, "post", goc, app.get_or_create(&jwt).await).await;
    assert_conforms(&doc, "get", me, app.get_me(&jwt).await).await;
    assert_conforms(&doc, "get", verify, app.verify(&token).await).await;
    assert_conforms(
        &doc,
        "head",
        verify,
        app.request(Method::HEAD, verify, Some(&token)).await,
    )
    .await;
    assert_conforms(&doc, "get", verify, app.verify("sk_agt_nope").await).await;
    assert_conforms(
        &doc,
        "head",
        verify,
        app.request(Method::HEAD, verify, None).await,
    )
    .await;
    let rotated = assert_conforms(&doc, "post", me, app.rotate(&jwt).await).await;
    assert_conforms(
        &doc,
        "post",
        me,
        app.rotate(rotated["token"].as_str().unwrap()).await,
    )
    .await;
    let introspect = "/oauth2/introspect";
    let live = app.new_token(&jwt).await;
    for (token, client) in [
        (live.as_str(), crate::oauth2::CLIENT_SECRET),
        ("sk_agt_nope", crate::oauth2::CLIENT_SECRET),
        (live.as_str(), "wrong"),
    ] {
        let resp = app
            .client
            .post(app.url(introspect))
            .basic_auth(crate::oauth2::CLIENT_ID, Some(client))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_conforms(&doc, "post", introspect, resp).await;
    }
    let resp = app
        .client
        .post(app.url(introspect))
        .basic_auth(crate::oauth2::CLIENT_ID, Some(crate::oauth2::CLIENT_SECRET))
        .form(&[("hint", "x")])
        .send()
        .await
        .unwrap();
    assert_conforms(&doc, "post", introspect, resp).await;
    let resp = app
        .client
        .post(app.url("/oauth2/revoke"))
        .basic_auth(crate::oauth2::CLIENT_ID, Some(crate::oauth2::CLIENT_SECRET))
        .form(&[("token", live.as_str())])
        .send()
        .await
        .unwrap();
    assert_conforms(&doc, "post", "/oauth2/revoke", resp).await;
    assert_conforms(&doc, "delete", me, app.revoke(&jwt).await).await;
    let events = "/api/agent-tokens/me/events";
    let answer = app.request(Method::GET, events, Some(&jwt)).await;
    let body = assert_conforms(&doc, "get", events, answer).await;
    assert!(body["events"].as_array().unwrap().len() >= 3, "{body}");
    let answer = app.request(Method::GET, events, Some(&token)).await;
    assert_conforms(&doc, "get", events, answer).await;
    for (template, _) in ROUTES
        .iter()
        .filter(|(p, ms)| !p.starts_with("/api/agent-tokens") && ms.contains(&"get"))
    {
        for path in concrete(template) {
            let resp = app.request(Method::GET, &path, None).await;
            assert_conforms(&doc, "get", template, resp).await;
        }
    }
    let resp = app.request(Method::GET, "/docs/nope", None).await;
    assert_conforms(&doc, "get", "/docs/{page}", resp).await;
}

#[tokio::test]
async fn limit_answers_match_the_documented_schemas() {
    let app = spawn_app_with(
        TestConfig::hs256().with(
            "[rate_limit]\nmanagement_per_minute = 1\nmanagement_burst = 1\nclient_ip_header = \"X-Real-IP\"\naddress_per_minute = 1\naddress_burst = 1",
        ),
    )
    .await;
    let doc = openapi(&app).await;
    let me = "/api/agent-tokens/me";
    let jwt = user_jwt("pia");
    let big_body = app
        .client
        .post(app.url(me))
        .bearer_auth(&jwt)
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big_body.status().as_u16(), 413);
    assert_conforms(&doc, "post", me, big_body).await;
    let big_headers = app
        .client
        .get(app.url(me))
        .bearer_auth(&jwt)
        .header("x-padding", "p".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(big_headers.status().as_u16(), 431);
    assert_conforms(&doc, "get", me, big_headers).await;
    // Over the user's change limit (rotations), then over the address limit.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = app.rotate(&jwt).await;
        statuses.push(resp.status().as_u16());
        if resp.status().as_u16() == 429 {
            let retry = resp.headers().get("retry-after").unwrap().to_str().unwrap();
            assert!(
                retry.parse::<u64>().is_ok(),
                "Retry-After {retry:?} is an integer"
            );
            assert_conforms(&doc, "post", me, resp).await;
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = app
            .client
            .get(app.url(me))
            .bearer_auth(&jwt)
            .header("x-real-ip", "192.0.2.1")
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status().as_u16() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
            assert_conforms(&doc, "get", me, resp).await;
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn links_between_management_operations_name_existing_operations_in_camel_case() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let mut ids = BTreeSet::new();
    let mut targets = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(id) = op["operationId"].as_str() {
                ids.insert(id.to_owned());
            }
            for response in op["responses"]
                .as_object()
                .into_iter()
                .flat_map(|r| r.values())
            {
                for link in response["links"]
                    .as_object()
                    .into_iter()
                    .flat_map(|l| l.values())
                {
                    assert!(link.get("operation_id").is_none(), "snake case in {link}");
                    targets.push(link["operationId"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(targets.len() >= 9, "{targets:?}");
    for target in targets {
        assert!(ids.contains(&target), "link to unknown operation {target}");
    }
}
