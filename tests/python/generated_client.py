"""Generates a Python client from warren's served OpenAPI document with openapi-python-client
(a maintained generator from PyPI) and uses it, unmodified, against the live server: tenant
creation, document upsert, search, assemble and usage. Every answer must parse into the generated
classes (a required field missing or of the wrong type raises in from_dict).

usage: generated_client.py BASE_URL ADMIN_TOKEN
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request


def main(base, admin):
    with tempfile.TemporaryDirectory() as scratch:
        spec = os.path.join(scratch, "openapi.json")
        with urllib.request.urlopen(f"{base}/openapi.json") as r, open(spec, "wb") as f:
            f.write(r.read())
        gen = os.path.join(os.path.dirname(sys.executable), "openapi-python-client")
        out = os.path.join(scratch, "warren_client")
        config = os.path.join(scratch, "config.yaml")
        with open(config, "w") as f:
            f.write("post_hooks: []\n")  # no formatter run on the generated code
        gen_run = subprocess.run([gen, "generate", "--path", spec, "--output-path", out, "--meta", "none", "--config", config],
                                 cwd=scratch, env=dict(os.environ, NO_COLOR="1"), capture_output=True, text=True)
        print(gen_run.stdout, gen_run.stderr, flush=True)
        assert gen_run.returncode == 0, "the generator failed"
        assert "Warning" not in gen_run.stdout + gen_run.stderr, "the generator warned: the document has pieces it cannot use"
        sys.path.insert(0, scratch)
        run(importlib.import_module("warren_client"), base, admin)


def run(wc, base, admin):
    from warren_client.api.admin import create_tenant, show_tenant
    from warren_client.api.documents import create, get_one
    from warren_client.api.search import search, assemble
    from warren_client.api.tenant import usage, me
    from warren_client.models import (AssembleRequest, AssembleResponse, Created, CreateTenant, DocumentInput, Error,
                                      MonthUsage, SearchMode, SearchRequest, SearchResponse, TenantDetail, WriteResult, Me)

    operator = wc.AuthenticatedClient(base_url=base, token=admin)
    created = create_tenant.sync(client=operator, body=CreateTenant(slug="gen-client", name="Generated Co", email="ops@gen.test", tier="starter"))
    assert isinstance(created, Created), created
    assert created.api_key.startswith("wk_"), created.api_key
    assert created.tenant.slug == "gen-client" and created.key.scopes == ["read", "write"], created.key
    detail = show_tenant.sync(client=operator, slug="gen-client")
    assert isinstance(detail, TenantDetail) and detail.effective_tier == "starter", detail

    # A typed error: the generated Error class carries warren's code.
    again = create_tenant.sync(client=operator, body=CreateTenant(slug="gen-client", name="Again", email="a@gen.test"))
    assert isinstance(again, Error) and again.error.code == "slug_taken", again

    tenant = wc.AuthenticatedClient(base_url=base, token=created.api_key)
    who = me.sync(client=tenant)
    assert isinstance(who, Me) and who.slug == "gen-client", who
    text = ("To restore a tenant, run warren restore with the tenant's slug. The restore replaces the "
            "tenant's SQLite file from its replica while other tenants keep serving.")
    wrote = create.sync(client=tenant, body=DocumentInput(path="docs/restore.md", title="Restoring a tenant", content=text))
    assert isinstance(wrote, WriteResult), wrote
    assert wrote.created and wrote.chunks >= 1, wrote
    doc = get_one.sync(client=tenant, id=wrote.id)
    assert doc.path == "docs/restore.md", doc

    found = search.sync(client=tenant, body=SearchRequest(query="restore a tenant", mode=SearchMode.KEYWORD, limit=5))
    assert isinstance(found, SearchResponse), found
    assert found.results and found.results[0].path == "docs/restore.md", found
    top = found.results[0]
    assert 0.0 < top.score <= 1.0, top.score

    ctx = assemble.sync(client=tenant, body=AssembleRequest(query="restore a tenant", max_tokens=200))
    assert isinstance(ctx, AssembleResponse), ctx
    assert "warren restore" in ctx.context and ctx.total_tokens <= 200, ctx

    month = usage.sync(client=tenant)
    assert isinstance(month, MonthUsage), month
    assert month.usage["documents"] == 1, month.usage.additional_properties
    assert month.limits.documents and month.percent_used.documents is not None, month.percent_used
    print(json.dumps({"tenant": created.tenant.slug, "search_hits": len(found.results), "total_tokens": ctx.total_tokens,
                      "documents": month.usage["documents"]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
