"""Benchmarks of this app against the plain way of doing the same job: ``python -m bench``."""
