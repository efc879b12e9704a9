"""Hash slots, shard map validation and reload, SQL Server URL building, and the shards' report."""

from __future__ import annotations

import json
import time
import zlib

import pytest
from sqlalchemy.dialects import mssql
from sqlalchemy.schema import CreateTable

from api_services import engines, tables
from api_services.sharding import ShardMap, ShardMapWatcher, embedded_map, load_map, slot_of

from .conftest import free_port, start_server

CLUSTER_MAP = {
    "version": 7, "slotCount": 1024,
    "shards": [{"name": f"shard-0{i}", "ordinal": i, "slots": {"start": s, "end": e},
                "primary": {"host": f"shard-0{i}-primary.lab.svc", "port": 1433},
                "readonly": {"host": f"shard-0{i}-readonly.lab.svc", "port": 1433},
                "database": "pim", "credentialsSecret": f"shard-0{i}-credentials"}
               for i, (s, e) in enumerate([(0, 341), (342, 682), (683, 1023)])],
}


def test_slot_is_crc32_mod_slot_count_and_ranges_are_inclusive():
    pid = "pat-" + "ab" * 16
    assert slot_of(pid, 1024) == zlib.crc32(pid.encode()) % 1024
    smap = ShardMap.model_validate(CLUSTER_MAP)
    assert smap.shard_for_slot(341).name == "shard-00" and smap.shard_for_slot(342).name == "shard-01"
    assert smap.shard_for_slot(1023).name == "shard-02"


def test_embedded_map_tiles_all_slots(tmp_path):
    smap = ShardMap.model_validate(embedded_map(tmp_path, 3))
    assert [s.name for s in smap.shards] == ["shard-00", "shard-01", "shard-02"]
    assert all(s.sqlite_path and s.primary is None for s in smap.shards)


@pytest.mark.parametrize("mutate", [
    lambda m: m["shards"][1]["slots"].update(start=300),        # overlap
    lambda m: m["shards"][2]["slots"].update(end=1000),         # gap at the end
    lambda m: m["shards"][0].pop("primary"),                    # no backend
])
def test_invalid_maps_are_rejected(mutate):
    bad = json.loads(json.dumps(CLUSTER_MAP))
    mutate(bad)
    with pytest.raises(ValueError):
        ShardMap.model_validate(bad)


def test_operator_fields_are_accepted_and_unknown_optional_fields_kept():
    extended = {**CLUSTER_MAP, "generatedBy": "operator"}
    assert ShardMap.model_validate(extended).model_extra == {"generatedBy": "operator"}


def test_watcher_reloads_on_change_and_keeps_last_good_map(tmp_path):
    path = tmp_path / "shard-map.json"
    path.write_text(json.dumps(CLUSTER_MAP))
    seen = []
    watcher = ShardMapWatcher(path, interval=0, on_change=seen.append)
    path.write_text(json.dumps({**CLUSTER_MAP, "version": 8}))
    assert watcher.get().version == 8 and seen[-1].version == 8
    time.sleep(0.01)
    path.write_text("{not json")
    assert watcher.get().version == 8


def test_mssql_url_reads_mounted_credentials_and_hides_the_password(tmp_path):
    secret = tmp_path / "shard-01-credentials"
    secret.mkdir()
    (secret / "username").write_text("pim_app\n")
    (secret / "password").write_text("s3cr3t-Pa55\n")
    shard = ShardMap.model_validate(CLUSTER_MAP).by_name("shard-01")
    url = engines.mssql_url(shard, tmp_path)
    assert url.drivername == "mssql+pyodbc" and url.host == "shard-01-primary.lab.svc" and url.port == 1433
    assert url.username == "pim_app" and url.password == "s3cr3t-Pa55" and url.database == "pim"
    assert url.query["driver"] == "ODBC Driver 18 for SQL Server"
    assert "s3cr3t" not in str(url) and "s3cr3t" not in repr(url)
    ro = engines.mssql_url(shard, tmp_path, readonly=True)
    assert ro.host == "shard-01-readonly.lab.svc" and ro.query["ApplicationIntent"] == "ReadOnly"


def test_schema_and_chain_lock_compile_for_sql_server():
    ddl = str(CreateTable(tables.audit_events).compile(dialect=mssql.dialect()))
    assert "CREATE TABLE audit_events" in ddl
    from api_services.audit import chain_head_for_update

    assert "WITH (UPDLOCK, HOLDLOCK, ROWLOCK)" in str(chain_head_for_update().compile(dialect=mssql.dialect()))


def test_running_server_reloads_its_map_without_restart(server):
    path = server.data_dir / "shard-map.json"
    current = json.loads(path.read_text())
    with server.client("sre", "sre-1") as sre:
        assert sre.get("/admin/shards").json()["version"] == current["version"]
        path.write_text(json.dumps({**current, "version": current["version"] + 1}))
        deadline = time.monotonic() + 5
        while sre.get("/admin/shards").json()["version"] != current["version"] + 1:
            assert time.monotonic() < deadline, "map not reloaded"
            time.sleep(0.2)
        assert "pim_shard_map_version " + f"{current['version'] + 1}.0" in sre.get("/metrics").text
    assert load_map(path).version == current["version"] + 1


def test_admin_shards_reports_the_engine_each_shard_runs(tmp_path):
    """`backend` names the engine as the Shard CRD's `spec.engine` does (`sqlserver` when the map
    names none), or `sqlite` for a shard stored in a file. It is read from the map, so a shard
    whose server cannot be reached is reported with its engine, as unavailable."""
    credentials = tmp_path / "credentials"
    mapped = embedded_map(tmp_path / ".lab" / "data", 3)
    for shard, engine in zip(mapped["shards"][1:], ("postgres", None)):
        del shard["sqlitePath"]
        if engine:
            shard["engine"] = engine
        shard["primary"] = {"host": "127.0.0.1", "port": free_port()}  # nothing listens there
        shard["credentialsSecret"] = f"{shard['name']}-credentials"
        (credentials / shard["credentialsSecret"]).mkdir(parents=True)
        (credentials / shard["credentialsSecret"] / "username").write_text("pim_app\n")
        (credentials / shard["credentialsSecret"] / "password").write_text("not-a-real-password\n")
    map_file = tmp_path / "cluster-map.json"
    map_file.write_text(json.dumps(mapped))
    srv = start_server(tmp_path, env={"PIM_SHARD_MAP_FILE": str(map_file),
                                      "PIM_SHARD_CREDENTIALS_DIR": str(credentials)})
    try:
        with srv.client("sre", "sre-1") as sre:
            resp = sre.get("/admin/shards")
        assert resp.status_code == 200, resp.text
        shards = {s["name"]: s for s in resp.json()["shards"]}
        assert {name: s["backend"] for name, s in shards.items()} == {
            "shard-00": "sqlite", "shard-01": "postgres", "shard-02": "sqlserver"}
        assert shards["shard-00"]["status"] == "ok"
        assert shards["shard-01"]["status"].startswith("unavailable: shard shard-01 is unavailable")
        assert shards["shard-02"]["status"].startswith("unavailable: shard shard-02 is unavailable")
    finally:
        srv.stop()
