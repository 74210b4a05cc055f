"""Load a scenario file: schema, then typed records, then the checks the schema cannot make.

Every error is a :class:`~harness.errors.ScenarioError` naming the file, the
line and the field, raised before anything boots; a file with several errors
raises :class:`~harness.errors.ScenarioErrors` listing all of them.
"""

from __future__ import annotations

import difflib
import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from harness.errors import ScenarioError, ScenarioErrors
from harness.images.recipe import KernelSource
from harness.scenario.extras import parse_midpoint, parse_race, parse_vary
from harness.scenario.spec import (
    BootStep,
    CheckStep,
    Expect,
    ExpectedFinding,
    GuestSpec,
    InjectStep,
    MachineSpec,
    ReleaseStep,
    Scenario,
    ShellStep,
    SlotSpec,
    Step,
    TouchSpec,
    WaitStep,
    WorkloadStep,
)
from harness.scenario.yamlsource import Lines, read_yaml
from harness.sizes import parse_addr, parse_size

__all__ = ["load_scenario", "STEP_KINDS"]

STEP_KINDS = ("boot", "shell", "workload", "wait", "check", "inject", "release")
Doc = dict[str, Any]


@cache
def _validator() -> jsonschema.protocols.Validator:
    """Draft 2020-12, where "integer" is an int (never 1.0 or a bool) and numbers are finite."""
    text = resources.files("harness.scenario").joinpath("schema.json").read_text()
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many({
        "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda _, v: ((isinstance(v, int) and not isinstance(v, bool))
                                or (isinstance(v, float) and math.isfinite(v))),
    })
    cls: Any = jsonschema.validators.extend(base, type_checker=checker)  # type: ignore[no-untyped-call]
    validator: jsonschema.protocols.Validator = cls(json.loads(text))
    return validator


class _Errors:
    """Collects the errors of one file, each at the line of its field."""

    def __init__(self, path: Path, lines: Lines) -> None:
        self.path = path
        self.lines = lines
        self.found: list[ScenarioError] = []

    def line(self, at: tuple[object, ...]) -> int:
        while at and at not in self.lines:
            at = at[:-1]
        return self.lines.get(at, 1)

    def add(self, message: str, *at: object) -> None:
        self.found.append(ScenarioError(message, file=str(self.path), line=self.line(at),
                                        field=".".join(map(str, at)) or None))

    def raise_any(self) -> None:
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            raise ScenarioErrors(self.found)


# ---- schema --------------------------------------------------------------------------

def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _deepest(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """The most specific error behind a oneOf/anyOf (the branch that got furthest)."""
    while err.validator in ("oneOf", "anyOf") and err.context:
        # a branch whose type fits the value says more than one that wants another type
        fitting = [e for e in err.context if e.validator != "type"] or err.context
        best = jsonschema.exceptions.best_match(fitting)
        if best is None or best is err:
            break
        err = best
    return err


def _schema_error(errs: _Errors, err: jsonschema.ValidationError) -> None:
    at = tuple(err.absolute_path)
    if at and at[0] == "steps" and len(at) == 2 and err.validator == "oneOf":
        keys = list(err.instance) if isinstance(err.instance, dict) else []
        unknown = [k for k in keys if k not in STEP_KINDS + ("name", "timeout", "delay")]
        extra = f"; unknown key {unknown[0]!r}{_hint(str(unknown[0]), list(STEP_KINDS))}" \
            if unknown else ""
        errs.add(f"a step needs exactly one of: {', '.join(STEP_KINDS)}{extra}", *at)
        return
    err = _deepest(err)
    at = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(_schema_dict(err).get("properties", {}))
        for key in sorted(k for k in err.instance if k not in allowed):
            errs.add(f"unknown field {key!r}{_hint(key, allowed)}; allowed here: "
                     f"{', '.join(allowed)}", *at, key)
    elif err.validator == "enum" and isinstance(err.instance, str):
        enum = err.validator_value
        choices = [str(c) for c in enum] if isinstance(enum, list) else []
        errs.add(f"{err.instance!r} is not one of {', '.join(choices)}"
                 f"{_hint(err.instance, choices)}", *at)
    elif err.validator in ("minProperties", "maxProperties") and _one_of_keys(err):
        errs.add(f"name exactly one of: {', '.join(_one_of_keys(err))}", *at)
    elif err.validator == "pattern" and "description" in _schema_dict(err):
        errs.add(f"{err.instance!r} is not {_schema_dict(err)['description']}", *at)
    elif err.validator == "pattern":
        errs.add(f"{err.instance!r} is not allowed here (must match {err.validator_value})", *at)
    else:
        errs.add(err.message, *at)


def _one_of_keys(err: jsonschema.ValidationError) -> list[str]:
    """The keys of a mapping that takes exactly one of them (min = max = 1), else []."""
    schema = _schema_dict(err)
    if schema.get("minProperties") == schema.get("maxProperties") == 1:
        return sorted(schema.get("properties", {}))
    return []


def _schema_dict(err: jsonschema.ValidationError) -> dict[str, Any]:
    """The (sub)schema an error comes from, as a dict."""
    return dict(err.schema) if isinstance(err.schema, dict) else {}


def _check_schema(errs: _Errors, doc: Doc) -> None:
    seen: set[tuple[tuple[object, ...], str]] = set()
    before = len(errs.found)
    for err in _validator().iter_errors(doc):
        _schema_error(errs, err)
    steps = {e.field for e in errs.found[before:] if e.message.startswith("a step needs")}
    unique = []
    for e in errs.found[before:]:
        key = ((e.field or "",), e.message)
        parent = (e.field or "").rpartition(".")[0]
        if key in seen or (parent in steps and e.message.startswith("unknown field")):
            continue                    # the step's own error already names the key
        seen.add(key)
        unique.append(e)
    errs.found[before:] = unique


# ---- typed records -------------------------------------------------------------------

def _hold(value: object) -> str:
    """``hold: true`` holds the last cycle, ``false`` never; else the mode as written."""
    if isinstance(value, bool):
        return "last" if value else "none"
    return str(value)


def _workload(raw: Doc, common: dict[str, Any], n: int) -> WorkloadStep:
    slots = tuple(SlotSpec(parse_addr(s["gpa"]), parse_size(s["size"]),
                           tuple(s.get("flags", ()))) for s in raw["slots"])
    return WorkloadStep(
        **common, id=raw.get("id", f"w{n}"), driver=raw.get("driver", "slat-workload"),
        vms=raw.get("vms", 1),
        threads=raw.get("threads", False), cycles=raw.get("cycles", 1),
        hold=_hold(raw.get("hold", True)), ipa_bits=raw.get("ipa_bits"), slots=slots,
        touch=tuple(TouchSpec(parse_addr(t["gpa"]), t["access"]) for t in raw.get("touch", ())),
        vcpus=raw.get("vcpus", 1), race=parse_race(raw.get("race"), slots))


def _step(raw: Doc, index: int, lines: Lines, workloads: int) -> Step:
    kind = next(k for k in STEP_KINDS if k in raw)
    common: dict[str, Any] = {"index": index, "line": lines.get(("steps", index), 1),
                              "name": raw.get("name", ""), "timeout": raw.get("timeout"),
                              "delay": float(raw.get("delay", 0.0))}
    args = raw[kind]
    if kind == "boot":
        return BootStep(**common)
    if kind == "shell":
        a = args if isinstance(args, dict) else {"cmd": args}
        return ShellStep(**common, cmd=a["cmd"], expect=a.get("expect"),
                         status=a.get("status", 0))
    if kind == "wait":
        return WaitStep(**common, pattern=args["pattern"])
    if kind == "workload":
        return _workload(args, common, workloads + 1)
    if kind == "check":
        return CheckStep(**common, vms=args.get("vms"), during=args.get("during"),
                         at=parse_midpoint(args.get("at")))
    if kind == "inject":
        to = args.get("to", {})
        return InjectStep(**common, corruption=args["kind"], gpa=parse_addr(args["gpa"]),
                          workload=args.get("workload", ""), vm=args.get("vm", 0),
                          permission=args.get("permission", "w"),
                          restore=args.get("restore", True),
                          to_gpa=parse_addr(to["gpa"]) if "gpa" in to else None,
                          to_hpa=parse_addr(to["hpa"]) if "hpa" in to else None,
                          probability=float(args.get("probability", 1.0)))
    return ReleaseStep(**common, workload=args.get("workload"))


def _expect(doc: Doc) -> Expect:
    raw = doc.get("expect", {})
    return Expect(verdict=raw.get("verdict", "pass"), findings=tuple(
        ExpectedFinding(kind=f["kind"],
                        gpa=parse_addr(f["gpa"]) if "gpa" in f else None,
                        workload=f.get("workload"), vm=f.get("vm"))
        for f in raw.get("findings", ())))


def _machine(doc: Doc) -> MachineSpec:
    m = doc.get("machine", {})
    defaults = MachineSpec()
    return MachineSpec(
        emulator=m.get("emulator", defaults.emulator), accel=m.get("accel", defaults.accel),
        cpu=m.get("cpu"), memory=parse_size(m["memory"]) if "memory" in m else defaults.memory,
        smp=m.get("smp", defaults.smp), vmrun_log=m.get("vmrun_log"))


def _kernel(path: Path, guest: Doc) -> KernelSource | None:
    """The guest block's ``kernel`` (and ``modules``), relative to the scenario file."""
    if "kernel" not in guest:
        return None
    base = path.parent
    modules = guest.get("modules")
    return KernelSource(base / Path(guest["kernel"]).expanduser(),
                        None if modules is None else base / Path(modules).expanduser())


def _scenario(path: Path, doc: Doc, lines: Lines, hypervisor: str, model: str) -> Scenario:
    from harness.scenario.spec import Timeouts
    steps: list[Step] = []
    for i, raw in enumerate(doc["steps"]):
        steps.append(_step(raw, i, lines, sum(isinstance(s, WorkloadStep) for s in steps)))
    g = doc["guest"]
    t = doc.get("timeouts", {})
    return Scenario(
        path=path, name=doc["name"], description=doc.get("description", ""),
        guest=GuestSpec(os=g["os"], image=g["image"], append=g.get("append", ""),
                        kernel=_kernel(path, g)),
        hypervisor=hypervisor, model=model, steps=tuple(steps), machine=_machine(doc),
        timeouts=Timeouts(**{k: float(v) for k, v in t.items()}), expect=_expect(doc),
        vary=parse_vary(doc), seed=doc.get("seed"), lines=lines)


def load_scenario(path: str | Path, image: str | None = None) -> Scenario:
    """Read and validate one scenario file; raises ScenarioError(s) with file/line/field.

    *image* runs it on another image than its ``guest.image`` (``slatcheck run
    --image``): the scenario is validated against that one.
    """
    from harness.scenario.checks import check_scenario, resolve_names
    p = Path(path)
    doc, lines = read_yaml(p)
    if image is not None and isinstance(doc, dict) and isinstance(doc.get("guest"), dict):
        doc["guest"]["image"] = image
    errs = _Errors(p, lines)
    _check_schema(errs, doc)
    errs.raise_any()
    hypervisor, model = resolve_names(doc, errs.add)
    errs.raise_any()
    sc = _scenario(p, doc, lines, hypervisor, model)
    check_scenario(sc, errs.add)
    errs.raise_any()
    return sc
