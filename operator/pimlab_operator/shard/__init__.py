"""The Shard kind: model.py (the API), desired.py (children, pure), status.py (status, pure), step.py (I/O)."""
