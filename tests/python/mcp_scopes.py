"""Drives warren's /mcp with a read-only key through the official MCP Python client (run by tests/api/scopes.rs).

usage: mcp_scopes.py MCP_URL READ_KEY DOC_ID DOC_PATH
The tenant holds the document DOC_ID at DOC_PATH. The reading tools must succeed with the read key;
add_document and delete_document must fail with a tool error naming insufficient_scope, and change nothing.
Exits non-zero with a message on the first failed expectation; prints one JSON summary line on success.
"""

import asyncio
import json
import sys

from mcp_common import client, fail, is_error, structured



def refused_code(name, result):
    """The error code of a tool error (the REST error body), failing unless it is insufficient_scope."""
    if not is_error(result):
        fail(f"{name} with the read key succeeded: {result}")
    text = result.content[0].text
    if "insufficient_scope" not in text:
        fail(f"{name} with the read key failed for another reason: {text}")
    return json.loads(text)["error"]["code"]


async def main(url, key, doc_id, doc_path):
    summary = {"reads": [], "refused": {}}
    async with client(url, key) as c:
        tools = {t.name for t in (await c.list_tools()).tools}
        want = {"search", "assemble_context", "get_document", "list_documents"}
        if not want <= tools:
            fail(f"tools missing: {want - tools}")
        # tools/list offers a read-only key only what it may call; calling a write tool anyway is refused.
        if tools & {"add_document", "delete_document"}:
            fail(f"write tools offered to a read-only key: {sorted(tools)}")

        found = structured(what="search with the read key", result=await c.call_tool("search", {"query": "rabbits dig burrows", "limit": 5}))
        if doc_path not in [r["path"] for r in found["results"]]:
            fail(f"search did not find {doc_path}: {found}")
        summary["reads"].append("search")
        ctx = structured(what="assemble_context with the read key", result=await c.call_tool("assemble_context", {"query": "what do rabbits dig?", "max_tokens": 60}))
        if not (0 < ctx["total_tokens"] <= 60) or "warrens" not in ctx["context"]:
            fail(f"assemble_context over budget or empty: {ctx}")
        summary["reads"].append("assemble_context")
        doc = structured(what="get_document with the read key", result=await c.call_tool("get_document", {"id": doc_id}))
        if doc["path"] != doc_path:
            fail(f"get_document answered {doc}")
        summary["reads"].append("get_document")
        page = structured(what="list_documents with the read key", result=await c.call_tool("list_documents", {}))
        if [d["path"] for d in page["documents"]] != [doc_path]:
            fail(f"list_documents answered {page}")
        summary["reads"].append("list_documents")

        # Writes: refused with the REST error body, and nothing changes.
        added = await c.call_tool("add_document", {"path": "guides/new.md", "content": "# New\nThe read key may not add this."})
        summary["refused"]["add_document"] = refused_code("add_document", added)
        deleted = await c.call_tool("delete_document", {"id": doc_id})
        summary["refused"]["delete_document"] = refused_code("delete_document", deleted)
        still = structured(what="get_document with the read key", result=await c.call_tool("get_document", {"id": doc_id}))
        if still["path"] != doc_path:
            fail(f"the document changed after a refused delete: {still}")
        gone = await c.call_tool("get_document", {"path": "guides/new.md"})
        if not is_error(gone) or "document_not_found" not in gone.content[0].text:
            fail(f"a refused add_document stored the document: {gone}")
    summary["reads"].sort()
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
