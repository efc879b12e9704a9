"""kopf handlers, one module per kind; importing this package registers them all."""

from pimlab_operator.handlers import (  # noqa: F401
    chaos, children, lab, personaload, settings, shard, slo,
)
