"""The relay's policy: a pipeline of small checks, each answering with a Verdict or None.

See ``pipeline.py`` for the list of checks and how to add one, ``verdicts.py``
for every reply text, and docs/ARCHITECTURE.md for the contract.
"""
