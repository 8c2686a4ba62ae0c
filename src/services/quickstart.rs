//! The ready-to-paste quickstart a new tenant receives. Every line runs as pasted in a POSIX shell
//! (a test runs them, with the server on a non-default port): curl, Python, Node, `warren import`
//! and `export`, with the public URL and the key alone, so no DNS for subdomains is needed.

/// Ready-to-paste commands for a new tenant.
pub fn text(slug: &str, url: &str, tenant_url: &str, key: &str) -> String {
    format!(
        r##"# Your tenant "{slug}" is live. Keep this API key safe: it is shown only once.
export WARREN_URL={url}
export WARREN_KEY={key}

# Who am I?
curl -s $WARREN_URL/api/v1/tenant -H "Authorization: Bearer $WARREN_KEY"

# Add a document
curl -s -X POST $WARREN_URL/api/v1/documents -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' \
  -d '{{"path": "notes/hello.md", "content": "# Hello\nwarren keeps my notes searchable."}}'

# Search it (mode "keyword" works without the embedding model too)
curl -s -X POST $WARREN_URL/api/v1/search -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' -d '{{"query": "searchable notes"}}'

# Assemble context for an LLM within 500 tokens
curl -s -X POST $WARREN_URL/api/v1/context/assemble -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' -d '{{"query": "what does warren keep?", "max_tokens": 500}}'

# The same search from Python (standard library only)
python3 -c 'import json, os, urllib.request as u; r = u.Request(os.environ["WARREN_URL"] + "/api/v1/search", json.dumps({{"query": "searchable notes"}}).encode(), {{"Authorization": "Bearer " + os.environ["WARREN_KEY"], "Content-Type": "application/json"}}); print(json.load(u.urlopen(r))["results"][0]["path"])'

# ... and from Node (18 or newer)
node -e 'fetch(process.env.WARREN_URL + "/api/v1/search", {{method: "POST", headers: {{Authorization: "Bearer " + process.env.WARREN_KEY, "Content-Type": "application/json"}}, body: JSON.stringify({{query: "searchable notes"}})}}).then(r => r.json()).then(v => console.log(v.results[0].path))'

# With DNS for the tenants' subdomains, the tenant also has its own URL (the key still names it):
#   {tenant_url}

# Use it from AI tools over MCP (plans with the `mcp` feature: starter and up).
# Claude Code:
#   claude mcp add --transport http warren $WARREN_URL/mcp --header "Authorization: Bearer $WARREN_KEY"
# Other clients (Claude Desktop, Cursor, VS Code...), JSON config:
#   {{"mcpServers": {{"warren": {{"type": "http", "url": "{url}/mcp",
#     "headers": {{"Authorization": "Bearer {key}"}}}}}}}}

# Import a folder (respects .gitignore; re-runs skip unchanged files), export everything:
warren import {slug} ./docs --glob '**/*.md' --server $WARREN_URL --key $WARREN_KEY
warren export {slug} --server $WARREN_URL --key $WARREN_KEY > documents.jsonl

# The REST API is described at {url}/openapi.json and browsable at {url}/docs
"##
    )
}
