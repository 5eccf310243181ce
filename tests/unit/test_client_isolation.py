"""The client stands apart: it imports nothing of the server, and installs and runs from its own
small distribution (clients/python) with httpx alone."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "diffusers", "fastapi", "starlette", "pydantic", "PIL",
         "numpy", "uvicorn", "tqdm")
# httpx and what it imports; on Python < 3.11 anyio also needs exceptiongroup/typing_extensions.
HTTPX_CLOSURE = ("httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi",
                 "exceptiongroup", "typing_extensions")


def test_importing_the_client_loads_no_server_module_and_no_heavy_library():
    code = "import json, sys, safegen.client; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    modules = json.loads(done.stdout)
    ours = [m for m in modules if m.split(".")[0] == "safegen"]
    assert [m for m in ours if m != "safegen" and not m.startswith("safegen.client")] == []
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []


def _link_httpx_closure(folder: Path) -> None:
    folder.mkdir()
    for name in HTTPX_CLOSURE:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue  # not needed on this Python
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (folder / source.name).symlink_to(source)


def test_client_distribution_installs_and_runs_with_httpx_alone(tmp_path):
    pytest.importorskip("setuptools")
    # Built from a copy (links resolved) so the build leaves nothing in the working tree.
    project = tmp_path / "client-project"
    shutil.copytree(ROOT / "clients" / "python", project, symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(project)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = wheels.glob("safegen_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "safegen/client/__init__.py" in names
    assert not [n for n in names if n.startswith("safegen/") and "/client/" not in n]
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("METADATA"))
    ).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["Requires-Dist: httpx>=0.27"]

    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)  # a wheel is installed by unpacking it
    _link_httpx_closure(tmp_path / "deps")
    # -S -E: no site-packages and no PYTHONPATH, so only the wheel and httpx can be imported.
    code = (
        f"import sys; sys.path[:0] = [{str(target)!r}, {str(tmp_path / 'deps')!r}]\n"
        "from safegen.client import Client, RetryPolicy\n"
        "import importlib.util as u\n"
        "assert u.find_spec('torch') is None and u.find_spec('fastapi') is None\n"
        "with Client('http://127.0.0.1:9', 'k', retry=RetryPolicy(attempts=1)) as c:\n"
        "    try:\n"
        "        c.info()\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-S", "-E", "-c", code], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ConnectionFailed"
