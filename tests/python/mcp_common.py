"""What the MCP check scripts share: failing loudly, and a client of the official MCP SDK with a key."""

import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def client(url, key, mode="legacy"):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(url, http_client=http), mode=mode)


def is_error(result):
    return bool(getattr(result, "is_error", False) or getattr(result, "isError", False))


def messages(e):
    """Every message in an exception and the groups it may be wrapped in (anyio task groups)."""
    out = [str(e)]
    for sub in getattr(e, "exceptions", ()) or ():
        out.extend(messages(sub))
    return out


def structured(result, what="tool"):
    """A tool result's structured content (or its JSON text); fails on a tool error, naming `what`."""
    if is_error(result):
        fail(f"{what} answered a tool error: {result.content[0].text if result.content else result}")
    sc = getattr(result, "structured_content", None)
    if sc is None:
        sc = getattr(result, "structuredContent", None)
    if sc is None:
        sc = json.loads(result.content[0].text)
    return sc
