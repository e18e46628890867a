"""One development box config for the package's tests that only read it (each writes its variants
next to its own tmp_path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="package")
def dev_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("publish")
    r = subprocess.run([sys.executable, "-m", "appliance", "init", "--dev", str(d / "box"), "--domain", "example.test"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return d / "box" / "appliance.toml"
