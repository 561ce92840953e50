#!/usr/bin/env bash
# Build, once, a stand-in for the official python:3.11-slim-bookworm image from Debian's own
# packages, for machines that cannot reach Docker Hub (the dev/CI machines). Idempotent: does
# nothing when the image exists. Needs root, debootstrap and a running Docker daemon.
#   bash scripts/docker_base.sh            # -> marginface-base:bookworm (about 4 minutes)
#   docker build --build-arg PYTHON_IMAGE=marginface-base:bookworm --target cpu -t marginface:cpu .
# What differs from the official image, and why:
# - Debian's python3 (3.11) is "externally managed" (PEP 668), so a venv at /opt/venv is first
#   on PATH: `python` and `pip` then behave as in the official image (pip installs as root).
# - The host's CA bundle replaces Debian's, so that pip inside a build reaches the registry
#   through whatever TLS-intercepting proxy this machine uses; PIP_CERT (the host's pip.conf
#   `cert`) points pip at it. The host's other pip settings are local folders (find-links,
#   file:// indexes) that a container does not have, and the image needs nothing from them.
# Env: MARGINFACE_BASE_IMAGE (name), DEBIAN_MIRROR (default: the mirror apt already uses),
#      DOCKER_BASE_FORCE=1 (rebuild even when the image exists).
set -euo pipefail
IMAGE=${MARGINFACE_BASE_IMAGE:-marginface-base:bookworm}
if [ "${DOCKER_BASE_FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "docker_base: $IMAGE exists (DOCKER_BASE_FORCE=1 rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "docker_base: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
if [ -z "${DEBIAN_MIRROR:-}" ]; then
    # the first Debian archive apt is configured with (deb822 .sources or one-line .list)
    DEBIAN_MIRROR=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
CA=/etc/ssl/certs/ca-certificates.crt
[ -s "$CA" ] || { echo "docker_base: no CA bundle at $CA" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/marginface-base.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs
echo "docker_base: debootstrap bookworm from $DEBIAN_MIRROR (a few minutes)"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1,curl \
    bookworm "$ROOTFS" "$DEBIAN_MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }
cp "$CA" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
chroot "$ROOTFS" python3 -m venv /opt/venv
# smaller: no apt lists, no docs, no man pages, no downloaded .debs
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV PIP_CERT=$CA" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "stand-in for python:3.11-slim-bookworm (debootstrap, $DEBIAN_MIRROR)" \
    - "$IMAGE" >/dev/null
docker run --rm --network none "$IMAGE" python -c 'import sys, ssl; print("docker_base:", sys.version.split()[0], sys.prefix)'
echo "docker_base: built $IMAGE"
