"""The docs tooling: `pimlab docs-validate` and `pimlab diagrams` (check.py), Mermaid (mermaid.py)."""
