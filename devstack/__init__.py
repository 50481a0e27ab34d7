"""Local stack for tests, the local run and benchmarks: real emulators, real servers, local doubles.

Nothing in here is deployed; `functions/` never imports it.
"""
