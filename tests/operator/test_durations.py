"""The one duration parser every kind uses (Go durations and Prometheus windows)."""

import pytest

from pimlab_operator.schema import duration_seconds


@pytest.mark.parametrize("text, seconds", [
    ("300ms", 0.3), ("1s", 1), ("1m30s", 90), ("2h", 7200), ("30d", 2_592_000),
    ("1w", 604_800), ("1h500ms", 3600.5), ("0s", 0),
])
def test_duration_seconds(text, seconds):
    assert duration_seconds(text) == pytest.approx(seconds)


def test_unknown_unit_is_an_error_not_zero():
    with pytest.raises(KeyError):
        duration_seconds("5y")
