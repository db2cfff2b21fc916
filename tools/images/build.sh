#!/usr/bin/env bash
# Build the two local images the demo host and the tests run on, with no registry:
#   zoe-consolidate/base:bookworm     minimal Debian (python3, sqlite3, curl) from debootstrap + docker import
#   zoe-consolidate/service:latest    the demo Zoe HTTP service on top of the base
# Each image is reused when it already exists; the service image is rebuilt only when its
# sources changed (their digest is stored as an image label).
#
# Environment:
#   ZOE_BASE_IMAGE / ZOE_SERVICE_IMAGE   image names (defaults above)
#   ZOE_DEBIAN_MIRROR                    mirror URL; default: read from this machine's apt sources
#   ZOE_DEBIAN_SUITE                     default: bookworm
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
base_image=${ZOE_BASE_IMAGE:-zoe-consolidate/base:bookworm}
service_image=${ZOE_SERVICE_IMAGE:-zoe-consolidate/service:latest}
suite=${ZOE_DEBIAN_SUITE:-bookworm}

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is the daemon running?)"

# First Debian mirror named in the apt sources, deb822 (.sources) or one-line (.list) style.
debian_mirror() {
  local files=() f url
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 1
  url=$(awk '
    /^[[:space:]]*#/ { next }
    /^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /debian\/?$/ && $i !~ /security/) { print $i; exit } }
    /^deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/ && $i ~ /debian\/?$/ && $i !~ /security/) { print $i; exit } }
  ' "${files[@]}")
  [ -n "$url" ] && printf '%s\n' "$url"
}

build_base() {
  if docker image inspect "$base_image" >/dev/null 2>&1; then
    log "reusing $base_image"
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root to build $base_image"
  local mirror=${ZOE_DEBIAN_MIRROR:-$(debian_mirror || true)}
  [ -n "$mirror" ] || die "no Debian mirror found in the apt sources; set ZOE_DEBIAN_MIRROR"
  local rootfs
  rootfs=$(mktemp -d /tmp/zoe-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' RETURN
  log "debootstrap $suite from $mirror (a few minutes, once)"
  debootstrap --variant=minbase --include=python3,sqlite3,curl,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; die "debootstrap failed"; }
  rm -f "$rootfs.log"
  # Trim what a container never needs.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
  log "built $base_image"
}

build_service() {
  local ctx="$here/zoe-service" digest current
  digest=$( (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum; echo "$base_image") | sha256sum | cut -c1-16)
  current=$(docker image inspect -f '{{ index .Config.Labels "zoe.source-digest" }}' "$service_image" 2>/dev/null || true)
  if [ "$current" = "$digest" ]; then
    log "reusing $service_image"
    return
  fi
  # The classic builder uses the local base image as it is; it never asks a registry.
  local out
  if ! out=$(DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE_IMAGE=$base_image" \
    --label "zoe.source-digest=$digest" -t "$service_image" "$ctx" 2>&1); then
    printf '%s\n' "$out" >&2
    die "docker build of $service_image failed"
  fi
  log "built $service_image"
}

build_base
build_service
