"""kopf handlers, one module per kind; importing this package registers them all."""

from pimlab_operator.handlers import children, lab, settings  # noqa: F401
