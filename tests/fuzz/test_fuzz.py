"""Coverage-guided fuzzing (atheris) of the box's parsers, within a fixed time budget per target.

- every input in ``corpus/TARGET/`` (seeds and what earlier runs found) and in
  ``regressions/TARGET/`` (inputs that once crashed or hung a target) is replayed
  through the target on every run: a fixed bug stays fixed;
- then atheris fuzzes each target for ``BUDGET_SECONDS``, starting from the
  corpus. A crash or a hang (``-timeout``) fails the test and names the input
  file; copy it into ``regressions/TARGET/`` with the fix (docs/testing.md).

New inputs found during ``make test`` go to a temporary directory, so a test
run never changes the repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUDGET_SECONDS = 20
PER_INPUT_TIMEOUT = 10  # seconds; longer is a hang
MAX_LEN = 8192


def _inputs(target: str) -> list[Path]:
    return sorted(p for sub in ("corpus", "regressions") for p in (HERE / sub / target).iterdir() if p.is_file())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_and_regressions_replay(target: str) -> None:
    inputs = _inputs(target)
    assert inputs, f"no corpus for {target}"
    for p in inputs:
        try:
            TARGETS[target](p.read_bytes())
        except BaseException as exc:
            raise AssertionError(f"{p.relative_to(REPO)}: {type(exc).__name__}: {exc}") from exc


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_within_budget(target: str, tmp_path: Path) -> None:
    found = tmp_path / "new-corpus"
    found.mkdir()
    cmd = [sys.executable, "-m", "tests.fuzz.run", target,
           f"-max_total_time={BUDGET_SECONDS}", f"-timeout={PER_INPUT_TIMEOUT}", f"-max_len={MAX_LEN}",
           "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/", str(found), str(HERE / "corpus" / target)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=BUDGET_SECONDS + 120)
    artifacts = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0 and not artifacts, (
        f"fuzz target {target} failed (exit {proc.returncode}); input(s) {artifacts} in {tmp_path}: "
        f"copy to tests/fuzz/regressions/{target}/ once fixed\n{tail}")
    assert "Done " in proc.stderr, tail  # libFuzzer ran to its time budget
