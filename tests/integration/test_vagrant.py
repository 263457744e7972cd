"""The Vagrantfile parses and validates (offline, no box download, no provider needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("vagrant") is None,
                                reason="vagrant not installed (bash setup.sh test installs it)")


def _validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "Vagrantfile").write_text(text)
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    return subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_vagrantfile_validates(tmp_path: Path) -> None:
    res = _validate(tmp_path, (REPO / "Vagrantfile").read_text())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validated successfully" in res.stdout
    for vm in ("lab", "client", "server", "freebsd"):
        assert f"==> {vm}:" in res.stdout


def test_validation_catches_a_broken_setting(tmp_path: Path) -> None:
    broken = (REPO / "Vagrantfile").read_text().replace("lab.vm.hostname", "lab.vm.hostnme")
    res = _validate(tmp_path, broken)
    assert res.returncode != 0
    assert "hostnme" in res.stdout + res.stderr
