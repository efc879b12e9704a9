"""The PersonaLoad kind: model.py (the API), desired.py (pure), step.py (I/O)."""
