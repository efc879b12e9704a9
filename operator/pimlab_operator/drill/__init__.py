"""The Drill kind: model.py (the API), status.py (the state machine, pure), judge.py (the verdict, pure), desired.py (the children, pure), step.py (I/O)."""
