"""The CRD reference (docs/reference/crds.md), from the same structural schema `crdgen` puts in
crds/: one source of truth, so the reference cannot say what the apiserver does not enforce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from pimlab_operator import crdgen
from pimlab_operator.kinds import KINDS
from pimlab_operator.render import render_text
from pimlab_operator.schema import API_VERSION, Resource

TEMPLATE = "docs/crds.md.j2"
FILE_NAME = "crds.md"

#: Schema bound -> how the reference writes it (`exclusive*` turns ≥/≤ into >/<).
_BOUNDS = {
    "minimum": "≥", "maximum": "≤", "minLength": "length ≥", "maxLength": "length ≤",
    "minItems": "items ≥", "maxItems": "items ≤", "maxProperties": "entries ≤",
}
_STRICT = {"minimum": ("exclusiveMinimum", ">"), "maximum": ("exclusiveMaximum", "<")}


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "integer | string"
    kind = node.get("type", "")
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    return kind + (f" ({node['format']})" if "format" in node else "")


def _allowed(node: dict[str, Any]) -> list[str]:
    """Enum values, bounds and pattern of a node, each as a short code-formatted phrase."""
    items = node.get("items", {})
    allowed = [f"`{json.dumps(value)}`" for value in node.get("enum", items.get("enum", ()))]
    for key, label in _BOUNDS.items():
        if key in node:
            flag, strict = _STRICT.get(key, ("", label))
            allowed.append(f"{strict if node.get(flag) is True else label} {node[key]}")
    if "pattern" in node:
        allowed.append(f"pattern `{node['pattern']}`")
    if node.get("x-kubernetes-list-type") == "map":
        allowed.append(f"keyed by {', '.join(node['x-kubernetes-list-map-keys'])}")
    elif node.get("x-kubernetes-list-type") == "set":
        allowed.append("unique items")
    return allowed


def _fields(node: dict[str, Any], path: str, required: bool) -> Iterator[dict[str, Any]]:
    """Every field under `node`, depth first, with what the table shows about it."""
    yield {
        "path": path,
        "type": _type(node),
        "default": json.dumps(node["default"], sort_keys=True) if "default" in node else "",
        "allowed": _allowed(node),
        "required": required,
        "description": " ".join((node.get("description") or "").split()),
    }
    children = node.get("properties", {})
    if not children and node.get("type") == "array":
        children, path = node.get("items", {}).get("properties", {}), f"{path}[]"
        node = node.get("items", {})
    elif not children and isinstance(node.get("additionalProperties"), dict):
        children, path = node["additionalProperties"].get("properties", {}), f"{path}[*]"
        node = node["additionalProperties"]
    for name, child in children.items():
        yield from _fields(child, f"{path}.{name}", name in node.get("required", ()))


def _rules(node: dict[str, Any], path: str) -> Iterator[dict[str, Any]]:
    """Every CEL rule in the schema with the path of the node that declares it."""
    for rule in node.get("x-kubernetes-validations", ()):
        yield {"path": path or "(object)", **rule}
    for name, child in node.get("properties", {}).items():
        yield from _rules(child, f"{path}.{name}".lstrip("."))
    if "items" in node:
        yield from _rules(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _rules(node["additionalProperties"], f"{path}[*]")


def kind_context(resource: type[Resource]) -> dict[str, Any]:
    """What the template shows about one kind, read off its generated CRD."""
    crd = crdgen.crd(resource)
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    sections = {
        part: list(_fields(root["properties"][part], part, part in root.get("required", ())))
        for part in ("spec", "status")
    }
    return {
        "kind": crd["spec"]["names"]["kind"],
        "name": crd["metadata"]["name"],
        "names": crd["spec"]["names"],
        "description": root.get("description", ""),
        "columns": version["additionalPrinterColumns"],
        "spec": sections["spec"],
        "status": sections["status"],
        "rules": list(_rules(root, "")),
    }


def render() -> str:
    return render_text(TEMPLATE, api_version=API_VERSION, kinds=[kind_context(k.model) for k in KINDS])


def rendered_files() -> dict[str, str]:
    return {FILE_NAME: render()}


def write(out_dir: Path) -> list[Path]:
    return crdgen.write_files(rendered_files(), out_dir)


def stale_files(out_dir: Path) -> list[str]:
    return crdgen.stale(rendered_files(), out_dir)
