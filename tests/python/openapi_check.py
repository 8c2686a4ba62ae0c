"""Validates warren's served OpenAPI document, then fuzzes the live server with schemathesis.

usage: openapi_check.py BASE_URL TENANT_KEY ADMIN_TOKEN MAX_SECONDS
Tenant and operations paths are fuzzed with the tenant key (2/3 of the budget), admin paths with the
admin token (1/3).
Run by tests/api/ai.rs against a server on loopback. Checks: no 5xx, every status documented,
every body (4xx included: the documented error schema) and header matching the document.
"""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

from openapi_spec_validator import validate


def main(base, key, admin, max_secs):
    with urllib.request.urlopen(f"{base}/openapi.json") as r:
        spec = json.load(r)
    validate(spec)  # raises on an invalid document
    assert spec["openapi"].startswith("3.1"), spec["openapi"]
    print(f"openapi: valid {spec['openapi']} document, {len(spec['paths'])} paths", flush=True)

    st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    env = dict(os.environ, NO_COLOR="1")

    def fuzz(token, secs, path_filter):
        cmd = [
            st, "run", f"{base}/openapi.json",
            "--url", base,
            "-H", f"Authorization: Bearer {token}",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                        "response_headers_conformance,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "25",
            "--max-time", str(secs),
            "--seed", "7",
            # One worker: hypothesis describes strategies through a process-wide AST cache that is not
            # thread-safe, and two workers made it fail at random ("AST constructor recursion depth
            # mismatch", a tool error and not a finding about the API).
            "--workers", "1",
            "--request-timeout", "30",
            "--suppress-health-check", "all",
            "--continue-on-failure",
            *path_filter,
        ]
        # In a scratch directory: schemathesis keeps a cache in its working directory.
        with tempfile.TemporaryDirectory() as scratch:
            return subprocess.run(cmd, env=env, cwd=scratch).returncode

    rc = fuzz(key, max(1, max_secs * 2 // 3), ["--exclude-path-regex", "^/admin/"])
    rc = fuzz(admin, max(1, max_secs // 3), ["--include-path-regex", "^/admin/"]) or rc
    sys.exit(rc)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
