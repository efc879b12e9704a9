"""The third-party CRDs resolve from their projects' Go modules into the cache, and each is the
CRD its file is named after (`<group>_<plural>.yaml`)."""

from __future__ import annotations

import yaml

from pimlab.cluster import flux_build, thirdparty_crds


def test_every_pinned_crd_resolves_from_its_module_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIMLAB_CACHE", str(tmp_path))
    directory = thirdparty_crds.resolve()
    assert directory.parent == tmp_path
    assert thirdparty_crds.is_resolved()
    for path in thirdparty_crds.files():
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition", path.name
        assert path.name == f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"
        assert any(v["served"] for v in crd["spec"]["versions"]), path.name
    files = thirdparty_crds.all_files()
    assert len(files) == len({p.name for p in files}) == 16


def test_flux_builds_the_controllers_whose_crds_the_tests_install():
    pinned = {m.module: m.version for m in thirdparty_crds.MODULES}
    for module, version in flux_build.CONTROLLERS.values():
        assert pinned[module] == version
