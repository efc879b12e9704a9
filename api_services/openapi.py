"""Regenerate the checked-in OpenAPI document: `python -m api_services.openapi`."""

from __future__ import annotations

import json
from pathlib import Path

from api_services.app import openapi_document

TARGET = Path(__file__).with_name("openapi.json")


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
