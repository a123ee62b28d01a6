#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are missing (as root).
# Idempotent: packages already present are skipped quickly.
set -euo pipefail

# protoc needs the well-known types (google/protobuf/*.proto) that etcd-client's
# protos import; they are in libprotobuf-dev, which protobuf-compiler only
# recommends, and recommends are not installed here.
pkgs=("$@")
for pkg in "$@"; do
    [ "$pkg" = protobuf-compiler ] && pkgs+=(libprotobuf-dev)
done
need_apt=()
for pkg in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
