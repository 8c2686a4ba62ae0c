# Shared by the benchmark scripts (sourced): tenant creation through a running server's admin API.
# Needs PORT and ADMIN set by the caller.
#
# create_tenants PREFIX N OUT [HAVE]: writes N API keys to OUT, the keys listed in HAVE first and then
# new enterprise tenants PREFIX00000, PREFIX00001, ... (enterprise: the load meets no rate limit or
# quota of the plan; issue 16: honest figures).
create_tenants() {
  python3 - "$PORT" "$ADMIN" "$1" "$2" "$3" "${4:-/dev/null}" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, admin, prefix, n, out, have = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], open(sys.argv[6]).read().split()
def create(i):
    body = json.dumps({"slug": f"{prefix}{i:05d}", "name": "b", "email": "b@b.co", "tier": "enterprise"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/v1/tenants", body,
        {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["api_key"]
with ThreadPoolExecutor(8) as ex:
    keys = have + list(ex.map(create, range(max(0, n - len(have)))))
open(out, "w").write("\n".join(keys[:n]) + "\n")
PY
}
