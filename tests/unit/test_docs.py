"""The docs follow the code: README snippets are the shipped files, and every field the
scenario schema accepts is documented in docs/scenario-format.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_scenario_snippets_are_the_shipped_files() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"`(scenarios/[\w/.-]+\.yaml)`, as shipped:\n\n```yaml\n(.*?)```",
                       readme, re.S)
    assert shown, "the README shows at least one shipped scenario"
    for path, body in shown:
        assert (ROOT / path).read_text() == body, f"README's copy of {path} is stale"


def _fields(node: object, prefix: str = "") -> set[str]:
    """Every property name of the schema, as dotted paths (arrays and refs flattened)."""
    out: set[str] = set()
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            out.add(f"{prefix}{name}")
            out |= _fields(sub, f"{prefix}{name}.")
        for key in ("items", "oneOf", "anyOf"):
            subs = node.get(key)
            for sub in subs if isinstance(subs, list) else [subs] if subs else []:
                out |= _fields(sub, prefix)
    return out


def test_every_schema_field_is_documented() -> None:
    schema = json.loads((ROOT / "harness" / "scenario" / "schema.json").read_text())
    defs = schema["$defs"]
    doc = (ROOT / "docs" / "scenario-format.md").read_text()
    fields = _fields(schema) | _fields(defs["step"]) | _fields(defs["workload"])
    spans = re.findall(r"`([^`\n]+)`", doc)
    missing = sorted(f for f in fields if not any(
        re.search(rf"(?<![\w-]){re.escape(f.rsplit('.', 1)[-1])}(?![\w-])", span)
        for span in spans))
    assert missing == []
    assert "steps.0.tuoch" not in fields and "ipa_bits" in fields   # the walk reaches deep
