//! The ready-to-paste quickstart a new tenant receives.

/// Ready-to-paste commands for a new tenant.
pub fn text(slug: &str, url: &str, key: &str) -> String {
    format!(
        r##"# Your tenant is live at {url}
# Keep this API key safe: it is shown only once.
export WARREN_URL={url}
export WARREN_KEY={key}

# Who am I?
curl -s $WARREN_URL/api/v1/tenant -H "Authorization: Bearer $WARREN_KEY"

# Add a document
curl -s -X POST $WARREN_URL/api/v1/documents -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' \
  -d '{{"path": "notes/hello.md", "content": "# Hello\nwarren keeps my notes searchable."}}'

# Search it
curl -s -X POST $WARREN_URL/api/v1/search -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' -d '{{"query": "searchable notes"}}'

# Assemble context for an LLM within 500 tokens
curl -s -X POST $WARREN_URL/api/v1/context/assemble -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' -d '{{"query": "what does warren keep?", "max_tokens": 500}}'

# Without DNS for the subdomain, send the key alone to the server's address:
#   curl -s http://127.0.0.1:8080/api/v1/tenant -H "X-API-Key: $WARREN_KEY"

# Use it from AI tools over MCP (plans with the `mcp` feature: starter and up).
# Claude Code:
claude mcp add --transport http warren {url}/mcp --header "Authorization: Bearer $WARREN_KEY"
# Other clients (Claude Desktop, Cursor, VS Code...), JSON config:
#   {{"mcpServers": {{"warren": {{"type": "http", "url": "{url}/mcp",
#     "headers": {{"Authorization": "Bearer {key}"}}}}}}}}

# Import a folder (respects .gitignore; re-runs skip unchanged files), export everything:
warren import {slug} ./docs --glob '**/*.md' --server {url} --key $WARREN_KEY
warren export {slug} --server {url} --key $WARREN_KEY > documents.jsonl

# The REST API is described at {url}/openapi.json and browsable at {url}/docs
"##
    )
}
