"""Load a scenario YAML file, validate it against the schema, and keep line numbers.

Every error is a :class:`~harness.errors.ScenarioError` naming the file, the
line and the field, raised before anything boots.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from harness.errors import ScenarioError

__all__ = ["Scenario", "Step", "load_scenario", "parse_addr", "parse_size", "STEP_KINDS"]

STEP_KINDS = ("boot", "shell", "workload", "wait", "check", "inject", "release")
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Step:
    """One step of a scenario: its kind, its arguments and where it stands in the file."""

    index: int
    kind: str
    args: Any
    line: int
    name: str = ""
    timeout: float | None = None

    @property
    def label(self) -> str:
        """How reports name the step: `step 3 (check) at line 27`."""
        extra = f" '{self.name}'" if self.name else ""
        return f"step {self.index + 1} ({self.kind}{extra}) at line {self.line}"


@dataclass
class Scenario:
    """A validated scenario with defaults applied."""

    path: Path
    name: str
    doc: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    lines: dict[tuple[Any, ...], tuple[int, dict[str, int]]] = field(default_factory=dict)

    def line_of(self, *path: Any) -> int:
        """The line of the value at *path* (or of its key), for error messages."""
        if path and isinstance(path[-1], str) and path[:-1] in self.lines:
            key_line = self.lines[path[:-1]][1].get(path[-1])
            if key_line:
                return key_line
        return self.lines.get(path, self.lines.get((), (1, {})))[0]

    def error(self, message: str, *path: Any) -> ScenarioError:
        """A ScenarioError pointing at *path* in this file."""
        return ScenarioError(message, file=str(self.path), line=self.line_of(*path),
                             field=".".join(map(str, path)) or None)

    @property
    def guest(self) -> dict[str, Any]:
        return dict(self.doc["guest"])

    @property
    def machine(self) -> dict[str, Any]:
        return dict(self.doc.get("machine", {}))

    @property
    def timeouts(self) -> dict[str, float]:
        t = {"boot": 180.0, "step": 120.0, "scenario": 1200.0}
        t.update(self.doc.get("timeouts", {}))
        return t

    @property
    def expect(self) -> dict[str, Any]:
        return dict(self.doc.get("expect", {"verdict": "pass"}))


def parse_addr(value: int | str) -> int:
    """An address from YAML: an integer or a hex string.

    >>> parse_addr("0x1000"), parse_addr(4096)
    (4096, 4096)
    """
    return value if isinstance(value, int) else int(value, 16)


def parse_size(value: int | str) -> int:
    """A size: integer, hex string, or decimal with K/M/G/T suffix.

    >>> parse_size("64K"), parse_size("0x10000"), parse_size(65536)
    (65536, 65536, 65536)
    """
    if isinstance(value, int):
        return value
    if value.lower().startswith("0x"):
        return int(value, 16)
    m = re.fullmatch(r"([0-9]+)([KMGT]?)", value)
    if not m:
        raise ValueError(f"bad size {value!r}")
    return int(m.group(1)) * _SUFFIX[m.group(2)]


def _schema() -> dict[str, Any]:
    text = resources.files("harness.scenario").joinpath("schema.json").read_text()
    return dict(json.loads(text))


def _line_index(node: yaml.Node, path: tuple[Any, ...] = (),
                out: dict[tuple[Any, ...], tuple[int, dict[str, int]]] | None = None
                ) -> dict[tuple[Any, ...], tuple[int, dict[str, int]]]:
    """Map each path in the document to (line of its value, {key: line of key})."""
    out = {} if out is None else out
    keys: dict[str, int] = {}
    out[path] = (node.start_mark.line + 1, keys)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            keys[str(k.value)] = k.start_mark.line + 1
            _line_index(v, path + (str(k.value),), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, path + (i,), out)
    return out


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], tuple[int, dict[str, int]]]]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(f"cannot read scenario: {e.strerror}", file=str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ScenarioError(f"YAML syntax error: {problem}", file=str(path), line=line) from None
    if node is None or not isinstance(doc, dict):
        raise ScenarioError("a scenario must be a YAML mapping", file=str(path), line=1)
    return doc, _line_index(node)


def _locate(err: jsonschema.ValidationError,
            lines: dict[tuple[Any, ...], tuple[int, dict[str, int]]]) -> tuple[int, str]:
    """The line and dotted field name a schema error points at."""
    path = tuple(err.absolute_path)
    line, keys = lines.get(path, lines[()])
    fieldname = ".".join(str(p) for p in path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        if extra:
            fieldname = ".".join([*map(str, path), extra[0]])
            line = keys.get(extra[0], line)
    elif err.validator == "required" and path:
        line = lines.get(path, (line, keys))[0]
    elif path and isinstance(path[-1], str):
        parent_keys = lines.get(path[:-1], (line, {}))[1]
        line = parent_keys.get(path[-1], line)
    return line, fieldname or "<top>"


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in set(allowed))
        return f"unknown field {extra[0]!r}; allowed here: {', '.join(allowed)}"
    if err.validator == "oneOf" and isinstance(err.instance, dict) and "steps" in [
            p for p in err.absolute_path if isinstance(p, str)]:
        return f"a step needs exactly one of: {', '.join(STEP_KINDS)}"
    return err.message


def _best(errors: list[jsonschema.ValidationError]) -> jsonschema.ValidationError:
    """Prefer the deepest, most specific error (a misspelt key over a oneOf summary)."""
    def rank(e: jsonschema.ValidationError) -> tuple[int, int]:
        specific = 0 if e.validator in ("oneOf", "anyOf") else 1
        return (len(e.absolute_path), specific)
    return max(errors, key=rank)


def _steps(doc: dict[str, Any],
           lines: dict[tuple[Any, ...], tuple[int, dict[str, int]]]) -> list[Step]:
    out = []
    for i, raw in enumerate(doc["steps"]):
        kind = next(k for k in STEP_KINDS if k in raw)
        out.append(Step(index=i, kind=kind, args=raw[kind], line=lines[("steps", i)][0],
                        name=raw.get("name", ""), timeout=raw.get("timeout")))
    return out


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file; raises ScenarioError with file/line/field."""
    p = Path(path)
    doc, lines = _read_yaml(p)
    validator = jsonschema.Draft202012Validator(_schema())
    errors = list(validator.iter_errors(doc))
    if errors:
        err = _best(errors)
        line, fieldname = _locate(err, lines)
        raise ScenarioError(_message(err), file=str(p), line=line, field=fieldname)
    sc = Scenario(path=p, name=doc["name"], doc=doc, steps=_steps(doc, lines), lines=lines)
    _check_semantics(sc)
    return sc


def _check_slots(sc: Scenario, i: int, slots: list[dict[str, Any]]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for j, s in enumerate(slots):
        gpa, size = parse_addr(s["gpa"]), parse_size(s["size"])
        where = ("steps", i, "workload", "slots", j)
        if gpa % 4096 or size % 4096:
            raise sc.error(f"slot gpa {gpa:#x} and size {size:#x} must be 4 KiB aligned",
                           *where)
        for a, b in spans:
            if gpa < b and a < gpa + size:
                raise sc.error(f"slot [{gpa:#x}, {gpa + size:#x}) overlaps [{a:#x}, {b:#x})",
                               *where)
        spans.append((gpa, gpa + size))
    return spans


def _check_semantics(sc: Scenario) -> None:
    """Checks the schema cannot express: alignment, overlaps, order of steps."""
    touched: set[int] = set()
    holding = False
    for st in sc.steps:
        i = st.index
        if st.kind == "workload":
            spans = _check_slots(sc, i, st.args["slots"])
            for j, t in enumerate(st.args.get("touch", [])):
                g = parse_addr(t["gpa"])
                if not any(a <= g < b for a, b in spans):
                    raise sc.error(f"touched gpa {g:#x} is in no slot",
                                   "steps", i, "workload", "touch", j, "gpa")
                touched.add(g & ~0xFFF)
            holding = holding or st.args.get("hold", True)
        elif st.kind == "inject":
            g = parse_addr(st.args["gpa"]) & ~0xFFF
            if g not in touched:
                raise sc.error(f"inject at {g:#x}: no earlier workload touches that page, "
                               "so there is no entry to corrupt", "steps", i, "inject", "gpa")
        elif st.kind == "release" and not holding:
            raise sc.error("release without an earlier holding workload", "steps", i, "release")
    if sc.steps[0].kind != "boot":
        raise sc.error("the first step must be 'boot'", "steps", 0)
    _check_names(sc)


def _check_names(sc: Scenario) -> None:
    """Registry names (image, guest OS, hypervisor) exist; the error lists the valid ones."""
    from harness.console import GUEST_OSES
    from harness.hypervisors import HYPERVISORS
    from harness.images import IMAGES
    checks = [(IMAGES, sc.doc["guest"]["image"], ("guest", "image")),
              (GUEST_OSES, sc.doc["guest"]["os"], ("guest", "os"))]
    if "hypervisor" in sc.doc:
        checks.append((HYPERVISORS, sc.doc["hypervisor"], ("hypervisor",)))
    for registry, name, path in checks:
        try:
            registry[name]
        except ScenarioError as e:
            raise sc.error(str(e), *path) from None
