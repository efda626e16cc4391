"""Running processes: gunicorn and its settings, the embedded Redis, local addresses."""
