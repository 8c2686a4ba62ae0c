#!/usr/bin/env bash
# Runs the warren server with zero configuration: fetches the embedding model if it is missing
# (the server still starts without it: keyword search works, semantic search answers 503), builds
# the release binary and serves on $WARREN_LISTEN (default 127.0.0.1:8080) with data in tenants/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh || echo "serve: the embedding model could not be fetched; starting without it" >&2
cargo build --release --bin warren
exec target/release/warren serve "$@"
