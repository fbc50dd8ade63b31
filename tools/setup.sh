#!/usr/bin/env bash
# Install what refstrip's tests and demo need on a fresh Debian machine, idempotently:
# real Nix (Debian's nix-bin, single-user as root) as the test oracle, and cargo-nextest.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() { # packages: install from Debian, refreshing the package lists once per run
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if ! command -v nix-store >/dev/null 2>&1; then
  echo "setup: installing nix-bin (the test oracle)" >&2
  apt_install nix-bin
fi

# Single-user Nix as root: no build users, no sandbox (these machines cannot create namespaces for it).
# No narinfo disk cache: the tests start many binary caches on loopback ports that later tests
# reuse, and Nix would answer from what another test's cache said under the same URL (a 404 for
# an hour, an unsigned narinfo for a month).
conf=/etc/nix/nix.conf
want='build-users-group =
sandbox = false
experimental-features = nix-command
substituters =
fsync-metadata = false
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0'
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  as_root mkdir -p /etc/nix
  printf '%s\n' "$want" | as_root tee "$conf" >/dev/null
fi
as_root mkdir -p /nix/var/nix/gcroots /nix/var/nix/profiles /nix/store

# GNU time measures peak RSS of refstrip under attack (tests/hostile_store.rs).
if [ ! -x /usr/bin/time ]; then
  echo "setup: installing time" >&2
  apt_install time
fi

# casync cross-checks the CDC row of `refstrip savings` (tools/savings/casync_check.sh); a small package.
if ! command -v casync >/dev/null 2>&1; then
  echo "setup: installing casync" >&2
  apt_install casync
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# The Prometheus project's Python client, whose OpenMetrics parser reads serve's /metrics in
# tests/metrics.rs, from PyPI.
if ! python3 -c 'import prometheus_client.openmetrics.parser' >/dev/null 2>&1; then
  echo "setup: installing prometheus-client (the /metrics parser of tests/metrics.rs)" >&2
  python3 -m pip install --quiet 'prometheus-client==0.26.0' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'prometheus-client==0.26.0'
fi

# moto's S3-compatible server (and boto3) for tests/s3.rs, from PyPI.
if ! python3 -c 'import moto.server, boto3, flask' >/dev/null 2>&1; then
  echo "setup: installing moto[server] (the S3 server of tests/s3.rs)" >&2
  python3 -m pip install --quiet 'moto[server]==5.2.1' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]==5.2.1'
fi
