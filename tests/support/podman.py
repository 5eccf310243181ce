"""Rootful podman for the container tests: a local Debian base image, the image build, and runs.

No container registry is reachable from the machines the tests run on, so the base image
(``debian:bookworm-slim``) is made from Debian's packages with mmdebstrap and imported under that
name; the tar is cached (``.cache/container/``) so later runs only re-import it. Podman needs two
settings here (a ``containers.conf`` passed through ``CONTAINERS_CONF``): the ``nofile`` limit no
higher than this process's hard limit (podman's default is refused by ``setrlimit``), and runc with
cgroupfs (crun refuses hybrid cgroup hierarchies).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "container"
BASE_IMAGE = "localhost/debian:bookworm-slim"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the official *-slim images leave out, kept out of every later apt install too.
SLIM_DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


def unavailable_reason() -> str | None:
    """Why container tests cannot run on this machine, or None when they can."""
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/system-deps.sh installs it on Debian)"
    if os.geteuid() != 0:
        return "the container tests use rootful podman: run them as root"
    if shutil.which("mmdebstrap") is None and not (CACHE / "debian-bookworm-slim.tar").exists():
        return "mmdebstrap is not installed (needed once to make the Debian base image)"
    return None


class PodmanError(RuntimeError):
    pass


@dataclass
class Podman:
    """Runs ``podman`` with this machine's containers.conf."""

    conf: Path
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    @classmethod
    def configured(cls, cache: Path = CACHE) -> Podman:
        import resource

        cache.mkdir(parents=True, exist_ok=True)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 1_048_576 if hard == resource.RLIM_INFINITY else min(hard, 1_048_576)
        conf = cache / "containers.conf"
        conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=16384:16384"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n',
            encoding="utf-8",
        )
        return cls(conf)

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )
        if check and completed.returncode != 0:
            raise PodmanError(
                f"podman {' '.join(args[:3])} ... exited {completed.returncode}: "
                f"{completed.stderr[-4000:]}"
            )
        return completed

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def image_id(self, name: str) -> str | None:
        found = self.run("image", "inspect", "--format", "{{.Id}}", name, check=False)
        return found.stdout.strip() or None

    def inspect(self, name: str) -> dict:
        return json.loads(self.run("inspect", name).stdout)[0]


def apt_sources() -> str:
    """The host's Debian sources (its mirror or proxy), or Debian's own mirror."""
    candidates = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
    for candidate in candidates:
        if candidate.is_file() and "debian" in candidate.read_text(encoding="utf-8"):
            return str(candidate)
    return "http://deb.debian.org/debian"


def ensure_base_image(podman: Podman, cache: Path = CACHE) -> None:
    """Make ``debian:bookworm-slim`` from Debian's packages (mmdebstrap) unless it exists."""
    if podman.image_exists(BASE_IMAGE):
        return
    tar = cache / "debian-bookworm-slim.tar"
    if not tar.exists():
        partial = tar.with_suffix(".tar.partial")
        command = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", "--quiet"]
        command += [f"--dpkgopt={option}" for option in SLIM_DPKG_OPTIONS]
        command += ["bookworm", str(partial), apt_sources()]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=900, check=False
        )
        if completed.returncode != 0:
            partial.unlink(missing_ok=True)
            raise PodmanError(f"mmdebstrap failed: {completed.stderr[-4000:]}")
        partial.rename(tar)
    podman.run("import", "--change", 'CMD ["bash"]', str(tar), BASE_IMAGE, timeout=300)


def _pip_find_links() -> list[Path]:
    """Wheel folders pip is configured with here (environment or pip config)."""
    values = os.environ.get("PIP_FIND_LINKS", "").split()
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
        timeout=60, check=False,
    )
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".find-links"):
            values += value.strip().strip("'\"").split()
    local = (v.removeprefix("file://") for v in values)
    return [Path(v) for v in local if v and "://" not in v]


def torch_build_args() -> tuple[list[str], list[str]]:
    """Build arguments and volumes that give the image the torch this environment runs.

    A local wheel of that version for Debian bookworm's Python (cp311) is used when pip is
    configured with a folder holding one (the CI machines' CPU build); otherwise the
    Dockerfile's default source (the PyTorch CPU index) applies.
    """
    import torch

    version = torch.__version__
    for folder in _pip_find_links():
        if folder.is_dir() and any(folder.glob(f"torch-{version}-cp311-*.whl")):
            args = [
                "--build-arg", "TORCH_INDEX_URL=",
                "--build-arg", f"TORCH_REQUIREMENT=torch=={version}",
                "--build-arg", f"PIP_FIND_LINKS={folder}",
            ]
            return args, ["-v", f"{folder}:{folder}:ro"]
    return [], []


@dataclass
class BuiltImage:
    tag: str
    build_s: float
    size_bytes: int


def build_image(
    podman: Podman, tag: str, *, extra_args: Sequence[str] = (), timeout: float = 1800
) -> BuiltImage:
    """``podman build`` the repository's Dockerfile (layer cache kept, the replaced image
    removed)."""
    previous = podman.image_id(tag)
    torch_args, volumes = torch_build_args()
    secret = (
        ["--secret", f"id=hostca,src={HOST_CA_BUNDLE}"] if HOST_CA_BUNDLE.is_file() else []
    )
    started = time.monotonic()
    podman.run(
        "build", "--pull=never", "--format", "docker", "--tag", tag, *volumes, *torch_args,
        *secret, *extra_args, str(REPO), timeout=timeout,
    )
    build_s = time.monotonic() - started
    current = podman.image_id(tag)
    if previous and previous != current:
        podman.run("rmi", previous, check=False)  # no longer tagged: 1+ GB otherwise left behind
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    return BuiltImage(tag, build_s, size)


def published_port(podman: Podman, container: str, port: int = 8000) -> int:
    """The host port (on 127.0.0.1) that ``-p 127.0.0.1::PORT`` gave the container's port."""
    out = podman.run("port", container, f"{port}/tcp").stdout.strip()
    match = re.search(r":(\d+)$", out.splitlines()[0] if out else "")
    if match is None:
        raise PodmanError(f"no published port for {container}:{port}: {out!r}")
    return int(match.group(1))
