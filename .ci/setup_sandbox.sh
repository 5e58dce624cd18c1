#!/usr/bin/env bash
# One-time sandbox prerequisites for the unit-tests verifier, called by .ci/run before the tests.
# Idempotent; needs root on a Debian/Ubuntu machine:
#   - installs bubblewrap, docker.io and debootstrap when missing;
#   - starts dockerd in the background when no engine answers (vfs storage, no iptables, no bridge: the
#     sandbox containers use network "none", and this works inside VMs/containers without overlayfs);
#   - builds the default sandbox image (`treerpo sandbox build`, a no-op when it is already there).
set -euo pipefail

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

engine_answers() { python3 -c 'import docker; docker.from_env(timeout=5).ping()' >/dev/null 2>&1 \
    || docker info >/dev/null 2>&1; }

if ! engine_answers; then
    echo "setup_sandbox: starting dockerd (log: /var/log/treerpo-dockerd.log)"
    nohup dockerd --storage-driver=vfs --iptables=false --bridge=none >/var/log/treerpo-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        engine_answers && break
        sleep 1
    done
    engine_answers || { echo "setup_sandbox: dockerd did not answer within 60 s"; tail -20 /var/log/treerpo-dockerd.log; exit 1; }
fi

treerpo sandbox build
