"""Fuzzing the scenario loader: whatever the bytes, a ScenarioError with the file and a
line, or a valid scenario; never another exception, never a hang (seeded, thousands of
cases in seconds; benchmarks/fuzz_scenarios.py runs 100,000)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import ScenarioError
from harness.scenario import load_scenario
from harness.scenario.mutate import mutate

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").rglob("*.yaml"))


def _load(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        load_scenario(path)
    except ScenarioError as e:
        assert e.file == str(path), e
        assert e.line is not None and e.line >= 1, e


def test_thousands_of_mutated_shipped_scenarios_give_scenario_errors(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    texts = [p.read_text() for p in SHIPPED]
    t0 = time.monotonic()
    for i in range(1500):
        text = mutate(rng.choice(texts), rng)
        _load(tmp_path / f"m{i % 7}.yaml", text.encode("utf-8", "surrogateescape"))
    assert time.monotonic() - t0 < 120


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    _load(tmp_path / "b.yaml", data)


@pytest.mark.parametrize("text, line", [
    ("name: t\nguest: {os: linux, image: linux-amd64}\nsteps:\n  - boot: {}\n"
     "  - workload: {slots: [{gpa: 0.0, size: 4K}]}\n", 5),
    ("name: t\nname: u\n", 2),
    ("name: t\n1: x\n", 2),
    ("a: &a [*a]\n", 1),
    ("name: t\nx: !!int zz\n", 2),
])
def test_known_troublemakers(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario_text(tmp_path, text)
    assert err.value.line == line


def load_scenario_text(tmp_path: Path, text: str) -> None:
    p = tmp_path / "t.yaml"
    p.write_text(text)
    load_scenario(p)


def test_billion_laughs_and_a_huge_file_are_refused_fast(tmp_path: Path) -> None:
    import resource
    lol = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 10))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(ScenarioError, match="aliases are expanded"):
        load_scenario_text(tmp_path, lol)
    with pytest.raises(ScenarioError, match="larger than"):
        load_scenario_text(tmp_path, "name: t\n" + "#" * (10 << 20))
    assert time.monotonic() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
