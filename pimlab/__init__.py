"""PIM SRE Lab: the project CLI and the local lab tooling (control plane, bring-up)."""

__version__ = "0.1.0"
