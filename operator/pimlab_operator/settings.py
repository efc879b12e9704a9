"""kopf's settings (the operator's own are `config.Settings`): our own annotation prefix and
finalizer, and watch timeouts so a silent connection drop never leaves the operator deaf."""

from __future__ import annotations

import logging

import kopf

from pimlab_operator.schema import GROUP


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # kopf posts an Event only for what went wrong: the kinds post their own Ready/Degraded
    # Events, and kopf's "Handler succeeded" for every handled object would double the writes
    # of a burst.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    memo.executor = settings.execution.executor  # where the resync daemons run reconciles
