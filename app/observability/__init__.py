"""Logs and metrics: one line per record, Prometheus figures summed over every worker."""
