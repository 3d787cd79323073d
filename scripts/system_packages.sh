#!/usr/bin/env bash
# The system packages the test suite needs: PostgreSQL 15 (initdb, postgres, pg_basebackup),
# PgBouncer, wrk and Chromium; with the argument `image`, what `make image-test` needs: podman
# and debootstrap. Installs what is missing with apt-get (as root, or via sudo) and fails with
# the list when it cannot.
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
postgres_bin() {
  have "$1" || compgen -G "/usr/local/bin/$1" >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}
if [ "${1:-}" = image ]; then
  have podman || missing+=(podman)
  have debootstrap || missing+=(debootstrap)
else
  for binary in initdb postgres pg_basebackup; do
    postgres_bin "$binary" || { missing+=(postgresql); break; }
  done
  have pgbouncer || missing+=(pgbouncer)
  have wrk || missing+=(wrk)
  have chromium || missing+=(chromium)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "system packages: installing ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
  echo "system packages: missing ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system packages: no apt-get; install ${missing[*]} with your package manager" >&2
  exit 1
fi
apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -qq)
"${sudo[@]}" "${apt[@]}" update >/dev/null
"${sudo[@]}" "${apt[@]}" install "${missing[@]}" >/dev/null
