import pytest

# Takes the session's cluster down and up again: whatever the session installed (CRDs) is gone
# afterwards, so it runs after every other test.
LAST = ("test_cluster_down_leaves_nothing_behind",)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
    items.sort(key=lambda item: item.name.startswith(LAST))
