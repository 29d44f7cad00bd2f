"""Installing pathalign into an environment that already has a torch keeps that torch.

A fresh venv sees this repository's environment (the constraints' torch, a CUDA build) through a
``.pth`` line, as a GPU user's environment holds their own torch. Then, offline:
``pip install -e . --no-deps`` must leave that torch in place, and a full resolve (``--dry-run``
with dependencies) must install nothing but pathalign: the package declares ranges, the exact pins
live in constraints.txt for this repository's own set-up. About 10-25 s (venv + pip), so gated:
``PATHALIGN_PACKAGING_TEST=1`` (set by ``.ci/run``).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not os.environ.get("PATHALIGN_PACKAGING_TEST"),
                                reason="packaging check (venv + pip, ~20 s): set PATHALIGN_PACKAGING_TEST=1")


def _pinned(name: str) -> str:
    m = re.search(rf"^{name}==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert m, f"constraints.txt pins no {name}"
    return m.group(1)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


def test_pip_install_keeps_the_environments_torch(tmp_path):
    import torch

    assert torch.__version__.split("+")[0] == _pinned("torch"), "run this check in the constraints' environment"
    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    # the user's packages: everything of this environment except pathalign itself and its .pth hooks
    shared = tmp_path / "user-site"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "pathalign" in entry.name.lower() or entry.suffix == ".pth" or entry.name == "__pycache__":
            continue
        (shared / entry.name).symlink_to(entry)
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "user_site.pth").write_text(str(shared) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index", "--no-build-isolation",
           "--disable-pip-version-check"]

    _run(pip + ["-q", "-e", str(ROOT), "--no-deps"])
    probe = "import json, torch, pathalign; print(json.dumps([torch.__version__, torch.__file__, pathalign.__file__]))"
    version, torch_file, pkg_file = json.loads(_run([str(py), "-c", probe]).stdout)
    assert version == torch.__version__ and Path(torch_file).parent.parent == shared, (version, torch_file)
    assert Path(pkg_file).is_relative_to(ROOT / "src"), pkg_file

    report = tmp_path / "report.json"
    _run(pip + ["-q", "-e", str(ROOT), "--dry-run", "--report", str(report)])
    to_install = [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]]
    assert to_install == ["pathalign"], f"pip would also install {to_install} over the environment's packages"

