"""Benchmarks for people (not part of the installed package): `python tools/bench/<name>.py`.

Each benchmark measures onnxpress against the tools users would pick instead, in one run on one
machine, and writes its latest results to docs/BENCHMARKS.md together with the command used.
"""
