#!/bin/sh
# Nix post-build-hook: push what a build produced, with its closure, to a refstrip store.
#
# Nix runs the hook after every successful build, as the user that runs the builds (root on a
# single-user install, the nix-daemon otherwise), with the built outputs in $OUT_PATHS (separated
# by spaces) and the derivation in $DRV_PATH. Install it with, in /etc/nix/nix.conf:
#
#     post-build-hook = /etc/nix/refstrip-post-build-hook.sh
#
# and set where to push in /etc/refstrip/push.conf (read by this script if it exists):
#
#     REFSTRIP_PUSH_TO=s3://cache/refstrip?endpoint=https://s3.example.org&region=eu-1
#     REFSTRIP_SIGN_KEY=/etc/refstrip/secret.key       # nix-store --generate-binary-cache-key
#     AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…      # for s3:// stores
#
# The same variables may come from the environment instead (for the nix-daemon: a systemd
# `Environment=` drop-in). Settings:
#   REFSTRIP_PUSH_TO      the store to push to (required): a directory, file:///dir or s3://…
#   REFSTRIP_SIGN_KEY     a secret key file to sign the paths with (recommended: locally built
#                         paths have no signature, and clients that check signatures refuse them)
#   REFSTRIP_PUSH_STORE   the local Nix store root (default /)
#   REFSTRIP              the refstrip binary (default: refstrip on PATH)
#   REFSTRIP_PUSH_STRICT  1: a failed push fails the hook. Nix then stops building, so the default
#                         (unset) only reports the failure on stderr, in the build's log.
#
# Nix waits for the hook before it goes on, so every build pays for its push. Where that matters,
# run `refstrip push --watch --to STORE` as a service instead: it pushes new paths in the
# background and retries failed pushes (docs/user-guide.md, "Pushing from build machines").
set -eu
set -f # $OUT_PATHS is split on spaces below and must not be globbed

config=${REFSTRIP_PUSH_CONFIG:-/etc/refstrip/push.conf}
if [ -r "$config" ]; then
    set -a
    # shellcheck disable=SC1090
    . "$config"
    set +a
fi

if [ -z "${REFSTRIP_PUSH_TO:-}" ]; then
    echo "refstrip post-build-hook: REFSTRIP_PUSH_TO is not set (in $config or the environment); not pushing" >&2
    exit "${REFSTRIP_PUSH_STRICT:-0}"
fi
if [ -z "${OUT_PATHS:-}" ]; then
    exit 0
fi

set -- push --to "$REFSTRIP_PUSH_TO" --store "${REFSTRIP_PUSH_STORE:-/}"
if [ -n "${REFSTRIP_SIGN_KEY:-}" ]; then
    set -- "$@" --sign-key "$REFSTRIP_SIGN_KEY"
fi

# shellcheck disable=SC2086 # split $OUT_PATHS into one argument per path
if ! "${REFSTRIP:-refstrip}" "$@" $OUT_PATHS; then
    echo "refstrip post-build-hook: pushing $OUT_PATHS to $REFSTRIP_PUSH_TO failed" >&2
    if [ "${REFSTRIP_PUSH_STRICT:-0}" = 1 ]; then
        exit 1
    fi
fi
