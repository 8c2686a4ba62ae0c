//! MCP (Model Context Protocol) at `/mcp`, over the Streamable HTTP transport of the official SDK (`rmcp`).
//!
//! Every HTTP request to `/mcp` passes [`door`] first, in this order:
//! 1. **Host and Origin** (DNS rebinding): the Host must be one warren serves (loopback, an IP, the base
//!    domain and its subdomains, or a registered custom domain), and a browser `Origin`, when sent,
//!    must be that same host or one of `mcp.allowed_origins`; else 403 `origin_not_allowed`.
//! 2. **Credentials**, exactly as REST ([`TenantCtx::authenticate`]): Bearer API key or JWT, on the
//!    tenant's host or with the credentials alone. Then the plan's `mcp` feature (403 `feature_not_in_plan`).
//! 3. **Session binding**: a session belongs to the tenant that opened it; another tenant's
//!    credentials on it are 403 `tenant_mismatch`. Sessions are bounded (`mcp.max_sessions`, per tenant
//!    `mcp.max_sessions_per_tenant`: 503 `overloaded`) and end `mcp.session_max_secs` after they began
//!    (404 `session_not_found`, so the client re-initialises) or after `mcp.session_idle_secs` idle.
//!
//! The proven [`TenantCtx`] then rides in the request's extensions into the SDK, which hands the
//! HTTP parts to each tool. Tools call the same functions as the REST handlers
//! ([`super::context`]) and are charged like REST calls: the same `[costs]` cells from the same
//! limiter, an `api_call` usage event each, and the same search/assemble/write events.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, ErrorData as McpError, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::docs::{DocumentInput, ListQuery};
use crate::error::{Code, Error};
use crate::search::{AssembleRequest, Filter, SearchMode, SearchRequest};
use crate::services::documents::{self, DocRef};
use crate::services::recs::{self as recs_api, RecQuery};
use crate::services::{search as search_api, Op, TenantCtx};
use crate::state::AppState;

pub(super) const SESSION_HEADER: &str = "mcp-session-id";
const RESOURCE_PREFIX: &str = "warren://documents/";

mod door;

pub use door::routes;

// ---- the MCP server ----

#[derive(Clone)]
pub struct WarrenMcp {
    tool_router: ToolRouter<WarrenMcp>,
}

#[derive(Deserialize, JsonSchema)]
pub struct SearchArgs {
    /// What to look for, in natural language or keywords.
    pub query: String,
    /// How many results (1-100, default 10).
    pub limit: Option<usize>,
    /// "hybrid" (default), "keyword" or "semantic".
    pub mode: Option<String>,
    /// Only documents whose path starts with this.
    pub path_prefix: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct AssembleArgs {
    /// The question or task the context is for.
    pub query: String,
    /// Token budget of the assembled context (o200k_base tokens).
    pub max_tokens: usize,
    /// Only documents whose path starts with this.
    pub path_prefix: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct AddArgs {
    /// Where the document lives, e.g. "guides/install.md"; the same path replaces the document.
    pub path: String,
    /// The text (Markdown works best).
    pub content: String,
    /// Flat JSON object of string, number or boolean values.
    pub metadata: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize, JsonSchema)]
pub struct GetArgs {
    /// The document id (from search or list results).
    pub id: Option<String>,
    /// Or its path.
    pub path: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct ListArgs {
    /// Only documents whose path starts with this.
    pub path_prefix: Option<String>,
    /// The next_cursor of the previous page.
    pub cursor: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct DeleteArgs {
    /// The document id.
    pub id: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct RecommendArgs {
    /// Recommend for this customer.
    pub customer_id: Option<String>,
    /// Or products like this one.
    pub product_id: Option<String>,
    /// How many (1-100, default 10).
    pub limit: Option<usize>,
}

/// The tenant proven by [`door`] for this HTTP request.
fn tenant(parts: &http::request::Parts) -> Result<TenantCtx, McpError> {
    parts.extensions.get::<TenantCtx>().cloned().ok_or_else(|| McpError::internal_error("no tenant on this request", None))
}

/// A domain error as a tool error the model can read: exactly the REST error body (details
/// included, 5xx opaque and logged once by `IntoResponse`), as JSON text.
async fn tool_error(e: Error) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(super::error::public_body(&e).to_string())])
}

async fn done<T: serde::Serialize>(r: Result<T, Error>) -> Result<CallToolResult, McpError> {
    Ok(match r {
        Ok(v) => CallToolResult::structured(serde_json::to_value(v).map_err(|e| McpError::internal_error(e.to_string(), None))?),
        Err(e) => tool_error(e).await,
    })
}

fn filter(path_prefix: Option<String>) -> Option<Filter> {
    path_prefix.filter(|p| !p.is_empty()).map(|p| Filter { path_prefix: Some(p), metadata: None })
}

#[tool_router]
impl WarrenMcp {
    pub fn new(state: AppState) -> Self {
        let _ = state; // each call's tenant and state ride in the request's extensions
        WarrenMcp { tool_router: Self::tool_router() }
    }

    #[tool(description = "Search this workspace's documents (hybrid keyword + semantic) and return the best matching passages with their paths.")]
    async fn search(
        &self,
        Parameters(a): Parameters<SearchArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, McpError> {
        let ctx = tenant(&parts)?;
        done(
            async {
                ctx.begin(Op::Search)?;
                let mode = match a.mode.as_deref() {
                    None | Some("") | Some("hybrid") => SearchMode::Hybrid,
                    Some("keyword") => SearchMode::Keyword,
                    Some("semantic") => SearchMode::Semantic,
                    Some(m) => return Err(Error::validation(format!("mode: {m:?} is not hybrid, keyword or semantic"))),
                };
                let mut req = SearchRequest::new(a.query, mode);
                req.limit = a.limit.unwrap_or(crate::search::DEFAULT_LIMIT);
                req.filter = filter(a.path_prefix);
                search_api::search(&ctx, req).await
            }
            .await,
        )
        .await
    }

    #[tool(description = "Assemble the most relevant passages into one context block that fits max_tokens, ready to put in a prompt.")]
    async fn assemble_context(
        &self,
        Parameters(a): Parameters<AssembleArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, McpError> {
        let ctx = tenant(&parts)?;
        done(
            async {
                ctx.begin(Op::Assemble)?;
                let req = AssembleRequest {
                    query: a.query,
                    max_tokens: a.max_tokens,
                    max_documents: None,
                    filter: filter(a.path_prefix),
                    include_metadata: None,
                };
                search_api::assemble(&ctx, req).await
            }
            .await,
        )
        .await
    }

    #[tool(description = "Add a document at a path (or replace the one already there) so it becomes searchable.")]
    async fn add_document(
        &self,
        Parameters(a): Parameters<AddArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, McpError> {
        let ctx = tenant(&parts)?;
        done(
            async {
                ctx.begin(Op::DocumentWrite)?;
                let input = DocumentInput { content: a.content, path: a.path, title: None, metadata: a.metadata.map(Value::Object) };
                Ok(match documents::write(&ctx, input).await? {
                    documents::Written::Done(r) => serde_json::to_value(r).map_err(Error::internal)?,
                    documents::Written::Queued(job) => serde_json::json!({
                        "queued": true,
                        "job": job,
                        "note": "the document is large and is being embedded in the background; it becomes searchable when the job succeeds",
                    }),
                })
            }
            .await,
        )
        .await
    }

    #[tool(description = "Read one whole document by its id or its path.")]
    async fn get_document(
        &self,
        Parameters(a): Parameters<GetArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, McpError> {
        let ctx = tenant(&parts)?;
        done(
            async {
                ctx.begin(Op::DocumentGet)?;
                let r = match (a.id, a.path) {
                    (Some(id), _) if !id.is_empty() => DocRef::Id(id),
                    (_, Some(p)) if !p.is_empty() => DocRef::Path(p),
                    _ => return Err(Error::validation("give id or path")),
                };
                documents::get(&ctx, r).await
            }
            .await,
        )
        .await
    }

    #[tool(description = "List documents (path, title, size; no content) ordered by path, one page at a time.")]
    async fn list_documents(
        &self,
        Parameters(a): Parameters<ListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, McpError> {
        let ctx = tenant(&parts)?;
        done(
            async {
                ctx.begin(Op::DocumentList)?;
                documents::list(&ctx, ListQuery { path_prefix: a.path_prefix, cursor: a.cursor, limit: None }).await
            }
            .await,
        )
        .await
    }

    #[tool(description = "Delete one document by its id.")]
    async fn delete_document(
        &self,
        Parameters(a): Parameters<DeleteArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, McpError> {
        let ctx = tenant(&parts)?;
        done(
            async {
                ctx.begin(Op::DocumentDelete)?;
                documents::delete(&ctx, a.id.clone()).await?;
                Ok(json!({"deleted": a.id}))
            }
            .await,
        )
        .await
    }

    #[tool(description = "Recommend products for a customer (customer_id) or products similar to one (product_id).")]
    async fn recommend(
        &self,
        Parameters(a): Parameters<RecommendArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, McpError> {
        let ctx = tenant(&parts)?;
        done(
            async {
                ctx.require_feature("recommendations")?;
                let customer = a.customer_id.filter(|c| !c.is_empty());
                let product = a.product_id.filter(|p| !p.is_empty());
                if customer.is_none() && product.is_none() {
                    return Err(Error::validation("give customer_id or product_id"));
                }
                ctx.begin(Op::Recommend)?;
                // A customer wins when both are given.
                let r = match product.filter(|_| customer.is_none()) {
                    Some(p) => recs_api::related_to(&ctx, p, RecQuery::new(None, a.limit)).await?,
                    None => recs_api::recommend_for(&ctx, RecQuery::new(customer, a.limit)).await?,
                };
                // Through the text form, so the f32 scores read as REST writes them (0.3, not 0.30000001192092896).
                serde_json::to_string(&r).and_then(|s| serde_json::from_str::<Value>(&s)).map_err(Error::internal)
            }
            .await,
        )
        .await
    }
}

impl ServerHandler for WarrenMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().build())
            .with_server_info(Implementation::new("warren", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "warren holds this workspace's documents. Use search to find passages, assemble_context to get a prompt-ready \
                 context within a token budget, add_document to store text. Documents are also resources warren://documents/{path}.",
            )
    }

    async fn call_tool(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, McpError> {
        // A tool the plan lacks (not listed) still answers with warren's error, e.g. `feature_not_in_plan`.
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(tcc).await
    }

    async fn list_tools(&self, _request: Option<PaginatedRequestParams>, context: RequestContext<RoleServer>) -> Result<ListToolsResult, McpError> {
        let recs = has_recommendations(&context);
        let ctx = ctx_of(&context).ok();
        // Only the tools this key may call (the operation table's scopes) and the plan allows.
        let allowed = |name: &str| ctx.as_ref().is_some_and(|c| tool_op(name).is_none_or(|op| c.may(op)));
        let tools = self.tool_router.list_all().into_iter().filter(|t| (recs || t.name != "recommend") && allowed(&t.name)).collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.tool_router.get(name).cloned()
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let ctx = ctx_of(&context)?;
        ctx.begin(Op::DocumentList).map_err(mcp_error)?;
        let cursor = request.and_then(|r| r.cursor);
        let page = documents::list(&ctx, ListQuery { path_prefix: None, cursor, limit: None }).await.map_err(mcp_error)?;
        let resources = page
            .documents
            .into_iter()
            .map(|d| {
                let mut r = Resource::new(format!("{RESOURCE_PREFIX}{}", d.path), d.path.clone()).with_mime_type(mime_of(&d.path));
                if let Some(t) = d.title {
                    r = r.with_title(t);
                }
                r
            })
            .collect();
        let mut result = ListResourcesResult::with_all_items(resources);
        result.next_cursor = page.next_cursor;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let t = ResourceTemplate::new(format!("{RESOURCE_PREFIX}{{path}}"), "document").with_description("A document of this workspace by its path.");
        Ok(ListResourceTemplatesResult::with_all_items(vec![t]))
    }

    async fn read_resource(&self, request: ReadResourceRequestParams, context: RequestContext<RoleServer>) -> Result<ReadResourceResponse, McpError> {
        let ctx = ctx_of(&context)?;
        let uri = request.uri.clone();
        let path =
            uri.strip_prefix(RESOURCE_PREFIX).ok_or_else(|| McpError::resource_not_found(format!("not a warren document URI: {uri}"), None))?;
        ctx.begin(Op::DocumentGet).map_err(mcp_error)?;
        let doc = match documents::get(&ctx, DocRef::Path(path.to_string())).await {
            Ok(d) => d,
            Err(e) if e.code() == Code::DocumentNotFound => return Err(McpError::resource_not_found(format!("no document at {path}"), None)),
            Err(e) => return Err(mcp_error(e)),
        };
        let contents = ResourceContents::text(doc.content, uri).with_mime_type(mime_of(&doc.path));
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// The operation behind each tool (for `tools/list`; each call starts its operation itself).
fn tool_op(name: &str) -> Option<Op> {
    Some(match name {
        "search" => Op::Search,
        "assemble_context" => Op::Assemble,
        "add_document" => Op::DocumentWrite,
        "get_document" => Op::DocumentGet,
        "list_documents" => Op::DocumentList,
        "delete_document" => Op::DocumentDelete,
        "recommend" => Op::Recommend,
        _ => return None,
    })
}

fn ctx_of(context: &RequestContext<RoleServer>) -> Result<TenantCtx, McpError> {
    let parts = context.extensions.get::<http::request::Parts>().ok_or_else(|| McpError::internal_error("no HTTP request", None))?;
    tenant(parts)
}

fn has_recommendations(context: &RequestContext<RoleServer>) -> bool {
    ctx_of(context).is_ok_and(|c| c.require_feature("recommendations").is_ok())
}

fn mcp_error(e: Error) -> McpError {
    let data = Some(json!({"code": e.code()}));
    match e {
        Error::Internal(cause) => {
            tracing::error!(error = ?cause, "internal error in MCP request");
            McpError::internal_error("internal server error", data)
        }
        other if other.code().status() == 400 => McpError::invalid_params(other.to_string(), data),
        other => McpError::invalid_request(other.to_string(), data),
    }
}

fn mime_of(path: &str) -> &'static str {
    if path.ends_with(".md") || path.ends_with(".markdown") {
        "text/markdown"
    } else {
        "text/plain"
    }
}
