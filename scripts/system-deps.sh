#!/usr/bin/env bash
# Servers the tests start themselves: Redis and promtool/Prometheus (Debian packages).
# Installs them when missing (as root, or through sudo); says what to do otherwise.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v apt-get >/dev/null; then
  echo "The tests need: ${missing[*]} (Debian package names). Install them and retry." >&2
  exit 1
fi
echo "Installing ${missing[*]} (Debian packages) for the tests..." >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
