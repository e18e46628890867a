"""Run one fuzz target under atheris: ``python -m tests.fuzz.run TARGET [libFuzzer options] CORPUS...``.

The box's modules are imported with atheris' coverage instrumentation, so
libFuzzer is guided by which branches of *our* parsers an input reaches.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["appliance", "services"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer options] CORPUS...")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
