"""`receiver bench`: the receiver against a textbook peer and an empty route, under the same
gunicorn settings, with realistic signed traffic (docs/performance.md)."""
