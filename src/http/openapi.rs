//! The OpenAPI 3.1 document, generated from the `#[utoipa::path]` attributes
//! on the handlers and the `ToSchema` derives on the bodies they send.
//!
//! Nothing here is hand-written JSON: a route that is not listed in
//! [`ApiDoc`] is missing from `/openapi.json`, and `tests/api/docs.rs` probes
//! the live app to catch that.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{Modify, OpenApi};

use std::sync::LazyLock;

use actix_web::http::Method;
use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};

use crate::http::error::ApiError;
use crate::http::routes;

/// The security scheme name of the user JWT (management routes).
pub const USER_JWT: &str = "user_jwt";
/// The security scheme name of the admin secret (deprovisioning).
pub const ADMIN_SECRET: &str = "admin_secret";
/// The security scheme name of the agent token (the verify route).
pub const AGENT_TOKEN: &str = "agent_token";
/// The agent token as a Basic password (the verify route).
pub const AGENT_TOKEN_BASIC: &str = "agent_token_basic";
/// A resource server listed in `introspection.clients_file` (the OAuth routes).
pub const INTROSPECTION_CLIENT: &str = "introspection_client";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agent-tokens",
        description = "One agent API token per user: managed with the user's JWT, verified by gateways and APIs. \
                       Every error body is `{\"error\": \"<code>\", \"message\": \"<text>\"}`; \
                       the verify route's 401 adds `\"active\": false`."
    ),
    paths(
        routes::tokens::status,
        routes::tokens::rotate,
        routes::tokens::get_or_create,
        routes::tokens::revoke,
        routes::events::events,
        routes::leaks::revoke,
        routes::admin::deprovision,
        routes::verify::verify,
        routes::oauth2::introspect,
        routes::oauth2::revoke,
        routes::oauth2::metadata,
        routes::health::healthz,
        routes::health::readyz,
        routes::health::metrics,
        routes::docs::index,
        routes::docs::html,
        routes::docs::raw,
        openapi_json,
    ),
    // Path parameters' schemas are not collected automatically.
    components(schemas(routes::docs::DocPage)),
    modifiers(&SecuritySchemes, &HeadHasNoBody, &Links),
    tags(
        (name = "token management", description = "The user's own agent token, managed with a user JWT. Token changes are rate limited per user (429 with `Retry-After`); requests per client address only when the operator turns that on. The verify route is never rate limited."),
        (name = "verification", description = "For gateways and APIs: is this agent token valid?"),
        (name = "leaks", description = "Whoever holds a leaked agent token can revoke it, with no other credential."),
        (name = "oauth", description = "For resource servers that speak OAuth (MCP servers, Apache mod_oauth2): RFC 7662 introspection, RFC 7009 revocation, RFC 8414 metadata. Served only when `introspection.clients_file` lists the clients."),
        (name = "health", description = "For process supervisors and monitoring."),
        (name = "docs", description = "These API pages, as markdown, HTML and OpenAPI."),
        (name = "administration", description = "For the application's back end, with the operator's admin secret (`admin.token_file`); absent unless that is set."),
    )
)]
pub struct ApiDoc;

/// The two bearer credentials: which one a route takes is its `security`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            USER_JWT,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user JWT issued by your application. Agent tokens are refused here.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_SECRET,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator's admin secret, read from `admin.token_file`. User JWTs and agent tokens are refused.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            AGENT_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_agt_<64 hex>")
                    .description(Some(
                        "An agent token: `sk_agt_` followed by 64 lowercase hex characters. \
                         With `verify.api_key_header` set, that header may carry it bare instead.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            AGENT_TOKEN_BASIC,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "The agent token as the Basic password, with any user name (or as the \
                         user name, with an empty password): for clients that only speak Basic.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            INTROSPECTION_CLIENT,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A client id and secret from `introspection.clients_file` \
                         (`client_secret_basic`); or `client_id` and `client_secret` in the form \
                         (`client_secret_post`).",
                    ))
                    .build(),
            ),
        );
    }
}

/// `method(get, head)` gives HEAD a copy of the GET operation. A HEAD answer
/// never has a body (RFC 9110 §9.3.2), and operation ids must be unique, so
/// the copy keeps its statuses and headers but loses the content.
struct HeadHasNoBody;

impl Modify for HeadHasNoBody {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        for item in openapi.paths.paths.values_mut() {
            let Some(head) = item.head.as_mut() else {
                continue;
            };
            if let Some(id) = head.operation_id.as_mut() {
                id.push_str("_head");
            }
            for response in head.responses.responses.values_mut() {
                if let utoipa::openapi::RefOr::T(response) = response {
                    response.content.clear();
                }
            }
        }
    }
}

/// OpenAPI links between the management operations: what a client does
/// next with the same user (read the status after a change, revoke after a
/// rotation). They also let schemathesis run its stateful phase. The
/// operations take no parameters, so the links carry none.
struct Links;

/// (link name, target operation id)
type LinkTargets = &'static [(&'static str, &'static str)];

/// (source operation id, response status, links)
const LINKS: &[(&str, &str, LinkTargets)] = &[
    (
        "rotate_token",
        "200",
        &[
            ("GetStatus", "get_token_status"),
            ("Revoke", "revoke_token"),
            ("GetOrCreate", "get_or_create_token"),
        ],
    ),
    (
        "get_or_create_token",
        "200",
        &[
            ("GetStatus", "get_token_status"),
            ("Rotate", "rotate_token"),
            ("Revoke", "revoke_token"),
        ],
    ),
    (
        "revoke_token",
        "204",
        &[
            ("GetStatus", "get_token_status"),
            ("GetOrCreate", "get_or_create_token"),
        ],
    ),
    ("get_token_status", "200", &[("Rotate", "rotate_token")]),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        use utoipa::openapi::link::LinkBuilder;
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                let Some(id) = op.operation_id.as_deref() else {
                    continue;
                };
                let Some((_, status, targets)) = LINKS.iter().find(|(from, ..)| *from == id) else {
                    continue;
                };
                if let Some(utoipa::openapi::RefOr::T(response)) =
                    op.responses.responses.get_mut(*status)
                {
                    for (name, target) in *targets {
                        response.links.insert(
                            (*name).to_owned(),
                            LinkBuilder::new().operation_id(*target).build().into(),
                        );
                    }
                }
            }
        }
    }
}

/// The document as pretty JSON.
pub fn json() -> Result<String, serde_json::Error> {
    let mut doc = serde_json::to_value(ApiDoc::openapi())?;
    camel_case_link_fields(&mut doc);
    serde_json::to_string_pretty(&doc)
}

/// utoipa 5.5 serialises `Link` fields in snake case (`operation_id`); the
/// specification (and every client) expects `operationId`, `operationRef`,
/// `requestBody`.
fn camel_case_link_fields(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else {
            continue;
        };
        for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
}

/// Registers `GET /openapi.json`; other methods get a JSON 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        routes::Resource::new("/openapi.json")
            .on(Method::GET, openapi_json)
            .done(),
    );
}

/// The OpenAPI document, serialised on first use.
static OPENAPI: LazyLock<Result<Bytes, String>> =
    LazyLock::new(|| json().map(Bytes::from).map_err(|e| e.to_string()));

/// Handles `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    operation_id = "openapi_document",
    summary = "This OpenAPI 3.1 document",
    responses(
        (status = 200, description = "The OpenAPI document of every route.", body = Object, content_type = "application/json"),
        (status = 500, description = "The document could not be serialised: `Internal server error.`", body = crate::http::error::ErrorBody),
    )
)]
pub async fn openapi_json() -> Result<HttpResponse, ApiError> {
    match &*OPENAPI {
        Ok(json) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(json.clone())),
        Err(e) => {
            log::error!("cannot serialise the OpenAPI document: {e}");
            Err(ApiError::Internal(
                "the OpenAPI document cannot be serialised",
            ))
        }
    }
}
