"""What happened to each callback, as Prometheus metrics and one log line."""
