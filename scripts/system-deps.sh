#!/usr/bin/env bash
# Servers and tools the tests start themselves (Debian packages): Redis, promtool/Prometheus, the
# Chromium the browser tests drive, and rootful podman for the container image tests (runc and
# cgroupfs, a base image made with mmdebstrap: see tests/support/podman.py). Installs them when
# missing (as root, or through sudo); says what to do otherwise.
set -euo pipefail
missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need redis-server redis-server
need promtool prometheus
need chromium chromium
need podman podman
need runc runc
need conmon conmon
need mmdebstrap mmdebstrap
need iptables iptables
[ -x /usr/lib/podman/netavark ] || missing+=(netavark)
[ -d /usr/lib/cni ] || missing+=(containernetworking-plugins)
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
