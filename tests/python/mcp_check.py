"""Drives warren's /mcp with the official MCP Python client (run by tests/api/ai.rs).

usage: mcp_check.py BASE_URL KEY_A KEY_B KEY_FREE
Exits non-zero with a message on the first failed expectation; prints one JSON summary line on success.
"""

import asyncio
import json
import sys

import httpx2
from mcp_common import client, fail, is_error, structured, messages



async def main(base, key_a, key_b, key_free):
    url = f"{base}/mcp"
    summary = {}
    async with client(url, key_a) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        want = {"search", "assemble_context", "add_document", "get_document", "list_documents", "delete_document"}
        if not want <= set(tools):
            fail(f"tools missing: {want - set(tools)}")
        for name in want:
            t = tools[name]
            schema = getattr(t, "input_schema", None) or getattr(t, "inputSchema", None)
            if not t.description or schema is None or schema.get("type") != "object":
                fail(f"tool {name} lacks a description or an object input schema")
        summary["tools"] = sorted(tools)
        added = structured(await c.call_tool("add_document", {
            "path": "guides/burrow.md",
            "content": "# Burrows\nRabbits dig warrens: networks of burrows with many entrances.",
            "metadata": {"lang": "en"},
        }))
        if not added.get("id") or added.get("path") != "guides/burrow.md":
            fail(f"add_document answered {added}")
        found = structured(await c.call_tool("search", {"query": "rabbits dig burrows", "limit": 5}))
        paths = [r["path"] for r in found["results"]]
        if "guides/burrow.md" not in paths:
            fail(f"search did not find the document: {found}")
        ctx = structured(await c.call_tool("assemble_context", {"query": "what do rabbits dig?", "max_tokens": 60}))
        if not (0 < ctx["total_tokens"] <= 60) or "warrens" not in ctx["context"]:
            fail(f"assemble_context over budget or empty: {ctx}")
        doc = structured(await c.call_tool("get_document", {"path": "guides/burrow.md"}))
        if doc["id"] != added["id"]:
            fail(f"get_document by path answered {doc}")
        page = structured(await c.call_tool("list_documents", {"path_prefix": "guides/"}))
        if [d["path"] for d in page["documents"]] != ["guides/burrow.md"]:
            fail(f"list_documents answered {page}")
        res = await c.read_resource("warren://documents/guides/burrow.md")
        if "warrens" not in res.contents[0].text:
            fail(f"resource read answered {res}")
        summary["a_document"] = added["id"]

    # The newest protocol (negotiated by the client's default "auto" mode, no sessions) works too.
    async with client(url, key_a, mode="auto") as c:
        found = structured(await c.call_tool("search", {"query": "rabbits dig burrows", "mode": "keyword"}))
        if "guides/burrow.md" not in [r["path"] for r in found["results"]]:
            fail(f"search over protocol {c.protocol_version} answered {found}")
        summary["auto_protocol"] = c.protocol_version

    # Tenant isolation: B sees nothing of A's, by search, by id, by path or as a resource.
    async with client(url, key_b) as c:
        found = structured(await c.call_tool("search", {"query": "rabbits dig burrows", "mode": "keyword"}))
        if found["results"]:
            fail(f"tenant B found A's documents: {found}")
        got = await c.call_tool("get_document", {"id": summary["a_document"]})
        if not is_error(got) or "document_not_found" not in got.content[0].text:
            fail(f"tenant B read A's document by id: {got}")
        page = structured(await c.call_tool("list_documents", {}))
        if page["documents"]:
            fail(f"tenant B lists documents: {page}")
        try:
            await c.read_resource("warren://documents/guides/burrow.md")
            fail("tenant B read A's resource")
        except Exception as e:  # the client raises the JSON-RPC error
            if "burrow" not in str(e) and "no document" not in str(e):
                fail(f"unexpected error reading A's resource as B: {e!r}")
    summary["isolated"] = True

    # A free tenant (no `mcp` feature) is refused at the door with the documented error body.
    async with httpx2.AsyncClient() as h:
        r = await h.post(url, headers={"Authorization": f"Bearer {key_free}", "Accept": "application/json, text/event-stream",
                                       "Content-Type": "application/json"},
                         json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                               "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        body = r.json()
        # A JSON-RPC error (HTTP 200) whose data is warren's error object, so clients show it.
        err = body.get("error", {})
        data = err.get("data") or {}
        if r.status_code != 200 or body.get("id") != 1 or not isinstance(err.get("code"), int) \
                or data.get("code") != "feature_not_in_plan" or data.get("feature") != "mcp" \
                or not err.get("message", "").startswith("feature_not_in_plan: "):
            fail(f"free tenant answered {r.status_code} {body}")
    async def connect_free():
        async with client(url, key_free) as c:
            await c.list_tools()

    try:
        await asyncio.wait_for(connect_free(), 30)
        connected = True
    except BaseException as e:  # noqa: BLE001 - the refusal, but not a timeout
        if isinstance(e, asyncio.TimeoutError):
            fail("the MCP client hung on a refused free tenant")
        if not any("feature_not_in_plan" in m for m in messages(e)):
            fail(f"the official client did not show warren's error: {messages(e)}")
        connected = False
    if connected:
        fail("the MCP client connected for a free tenant")
    summary["free_refused"] = True
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
