"""Logs, metrics and traces: one line per record, Prometheus figures summed over every worker,
OpenTelemetry spans when the OTEL_* variables ask for them."""
