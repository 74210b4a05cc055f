"""Warm starts on the fake machine: saved after a cold boot, used by the next run, keyed,
proven to be the same boot, broken states fall back to a cold boot with a note; the
saving is safe under concurrency; type answers are recorded per image."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeWorld
from test_runner import scenario

from harness.errors import InfraError
from harness.images import Image
from harness.ktypes import TypeLookupError
from harness.machines.base import MachineConfig
from harness.machines.fake import FakeMachine
from harness.registry import Registry
from harness.runner import run_scenario
from harness.typecache import RecordedTypes
from harness.warm import WarmState, prune, states_root


def states(tmp_path: Path) -> list[Path]:
    return sorted(states_root(tmp_path / "cache").glob("*/state.bin"))


def test_cold_boot_saves_and_the_next_run_starts_warm(tmp_path: Path) -> None:
    world = FakeWorld()
    services = world.services(tmp_path)
    sc = scenario(tmp_path)
    said: list[str] = []
    first = run_scenario(sc, tmp_path / "a", said.append, services=services)
    assert first.verdict == "pass", first.message
    assert first.provenance["machine"]["start"] == "cold"
    assert any("cold (no saved machine yet)" in line for line in said)    # said on the console
    [state] = states(tmp_path)
    assert world.machines[0].saved and state.read_bytes().startswith(b"fake machine state")
    said.clear()
    second = run_scenario(sc, tmp_path / "b", said.append, services=services)
    assert any(f"started from the saved machine {state.parent.name}" in line for line in said)
    assert second.verdict == "pass", second.message
    assert second.provenance["machine"]["start"] == "warm"
    assert second.provenance["machine"]["state"] == state.parent.name
    assert world.machines[-1].config.incoming == state
    assert len(world.machines[-1].saved) == 0                # nothing saved again
    # the per-boot symbols and facts came from the state, not from the guest
    assert (second.artifacts / "symbols.kept.json").exists()
    assert (second.artifacts / "facts.kept.json").exists()
    typed = [c for c in world.guest.typed if "address sizes" in c]
    assert len(typed) == 1                                   # read in the first run only


def test_cold_opts_out(tmp_path: Path) -> None:
    world = FakeWorld()
    res = run_scenario(scenario(tmp_path), tmp_path / "a", services=world.services(tmp_path),
                       warm=False)
    assert res.verdict == "pass" and res.provenance["machine"]["start"] == "cold (--cold)"
    assert states(tmp_path) == [] and world.machines[0].saved == []


def test_another_boot_id_falls_back_to_a_cold_boot_with_a_note(tmp_path: Path) -> None:
    world = FakeWorld()
    services = world.services(tmp_path)
    sc = scenario(tmp_path)
    run_scenario(sc, tmp_path / "a", services=services)
    world.boot_id = "fake-boot-2"                  # the restored guest is not that boot
    res = run_scenario(sc, tmp_path / "b", services=services)
    assert res.verdict == "pass", res.message
    assert res.provenance["machine"]["start"] == "cold"
    assert "boot id" in res.properties["machine.warm_fallback"]
    assert "booting cold" in res.provenance["machine"]["warm_fallback"]
    [state] = states(tmp_path)                     # saved again, from the new boot
    assert '"boot_id": "fake-boot-2"' in (state.parent / "meta.json").read_text()


def test_a_restored_guest_that_stops_answering_is_dropped_for_a_cold_boot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An arm64 state was seen to answer once after a restore, then freeze: the second
    question a moment later must see the same boot, else the run boots cold."""
    from dataclasses import replace as _replace

    from harness import steps
    monkeypatch.setattr(steps, "WARM_SETTLE", 0.01)
    world = FakeWorld()
    services = world.services(tmp_path)
    sc = scenario(tmp_path)
    run_scenario(sc, tmp_path / "a", services=services)
    real, asked = services.guests["linux"].boot_id, []
    assert real is not None

    def freezes(console: object) -> str:
        asked.append(1)
        if len(asked) == 2:
            raise InfraError("console: no answer within 30 s (frozen)")
        return real(console)  # type: ignore[arg-type]
    guests: Registry[Any] = Registry("guest OS")
    guests.add("linux", _replace(services.guests["linux"], boot_id=freezes))
    res = run_scenario(sc, tmp_path / "b", services=_replace(services, guests=guests))
    assert res.verdict == "pass", res.message
    assert res.provenance["machine"]["start"] == "cold" and len(asked) >= 2
    assert "frozen" in res.properties["machine.warm_fallback"]


def test_a_state_is_watched_running_on_its_first_restore_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second question costs a second: asked on a state's first restore, then kept with
    the state, and asked again once the state is saved anew."""
    from dataclasses import replace as _replace

    from harness import steps
    monkeypatch.setattr(steps, "WARM_SETTLE", 0.01)
    world = FakeWorld()
    services = world.services(tmp_path)
    real, asked = services.guests["linux"].boot_id, []
    assert real is not None

    def counted(console: object) -> str:
        asked.append(1)
        return real(console)  # type: ignore[arg-type]
    guests: Registry[Any] = Registry("guest OS")
    guests.add("linux", _replace(services.guests["linux"], boot_id=counted))
    services = _replace(services, guests=guests)
    sc = scenario(tmp_path)

    def questions(run: str) -> tuple[int, str]:
        asked.clear()
        res = run_scenario(sc, tmp_path / run, services=services)
        assert res.verdict == "pass", res.message
        return len(asked), res.provenance["machine"]["start"]
    assert questions("cold")[1] == "cold"
    first, second = questions("warm1"), questions("warm2")
    assert first[1] == second[1] == "warm"
    assert first[0] == second[0] + 1          # the settle question, on the first restore only
    [state] = states(tmp_path)
    assert (state.parent / f"{steps.KEEPS_RUNNING}.json").exists()


class _Unloadable(FakeMachine):
    """A machine that cannot load a state that is not its own (as QEMU refuses one)."""

    def __enter__(self) -> FakeMachine:
        inc = self.config.incoming
        if inc is not None and not inc.read_bytes().startswith(b"fake machine state"):
            (self.config.artifacts / "qemu.stderr").write_text(
                "qemu-system-x86_64: Unknown savevm section\n"
                "qemu-system-x86_64: load of migration failed: Invalid argument\n\n")
            raise InfraError("QEMU launch failed: QMP connect failed\ncommand: qemu ...")
        return super().__enter__()


def _unloadable(m: FakeMachine) -> FakeMachine:
    m.__class__ = _Unloadable
    return m


def test_a_state_that_does_not_load_is_dropped_and_the_run_boots_cold(tmp_path: Path) -> None:
    from harness import steps
    world = FakeWorld()
    services = world.services(tmp_path)
    machines: Registry[object] = Registry("machine backend")
    machines.add("qemu", lambda config: _unloadable(world.machine(config)))
    services = type(services)(services.guests, services.hypervisors, services.models,
                              machines, services.build_image, states=services.states)  # type: ignore[arg-type]
    sc = scenario(tmp_path)
    run_scenario(sc, tmp_path / "a", services=services)
    [state] = states(tmp_path)
    state.write_bytes(b"X" * state.stat().st_size)           # same size, not a state
    res = run_scenario(sc, tmp_path / "b", services=services)
    assert res.verdict == "pass", res.message
    note = res.properties["machine.warm_fallback"]
    assert "failed: QEMU launch failed: QMP connect failed (emulator: qemu-system-x86_64: " \
        "load of migration failed: Invalid argument; all in warm-start.stderr)" in note
    assert "command:" not in note                               # the first line only
    [kept] = (tmp_path / "b").rglob(steps.WARM_STDERR)        # not overwritten by the boot
    assert "Unknown savevm section" in kept.read_text()
    assert res.provenance["machine"]["start"] == "cold"
    assert state.read_bytes().startswith(b"fake machine state")   # replaced by a good one


def test_a_truncated_state_is_not_used(tmp_path: Path) -> None:
    world = FakeWorld()
    services = world.services(tmp_path)
    sc = scenario(tmp_path)
    run_scenario(sc, tmp_path / "a", services=services)
    [state] = states(tmp_path)
    saved = state.read_bytes()
    state.write_bytes(saved[:5])                              # an interrupted copy
    res = run_scenario(sc, tmp_path / "b", services=services)
    assert res.verdict == "pass", res.message
    assert res.provenance["machine"]["start"] == "cold"      # never tried, but said why
    note = res.properties["machine.warm_fallback"]
    assert "is damaged: state.bin holds 5 bytes" in note and f"{len(saved)} were saved" in note
    assert state.read_bytes() == saved                        # saved anew by the cold boot


def test_a_damaged_state_that_a_save_just_repaired_is_kept(tmp_path: Path) -> None:
    """The fallback drops a damaged state under the lock, and only if it still is."""
    world = FakeWorld()
    services = world.services(tmp_path)
    run_scenario(scenario(tmp_path), tmp_path / "a", services=services)
    [state] = states(tmp_path)
    warm = WarmState(state.parent, json.loads((state.parent / "meta.json").read_text())["inputs"])
    assert warm.damage() is None and warm.ready()
    warm.discard(if_damaged=True)                             # repaired meanwhile: kept
    assert warm.ready()
    state.write_bytes(b"x")
    assert "holds 1 bytes" in str(warm.damage())
    state.unlink()                                            # meta data, but no state
    assert "state.bin is unreadable" in str(warm.damage()) and not warm.ready()
    state.write_bytes(b"x")
    warm.discard(if_damaged=True)
    assert not warm.ready() and warm.damage() is None and not state.exists()


def image(tmp_path: Path, files: dict[str, str]) -> Image:
    return Image(name="img", arch="x86_64", dir=tmp_path, kernel=tmp_path / "k",
                 initrd=None, modules=tmp_path, manifest={"files": files},
                 kernel_release="6.1")


def test_the_key_covers_image_content_machine_and_append(tmp_path: Path) -> None:
    base = WarmState.for_key(image(tmp_path, {"k": "aa"}), {"version": "7.2"}, "", tmp_path)
    assert base == WarmState.for_key(image(tmp_path, {"k": "aa"}), {"version": "7.2"}, "",
                                     tmp_path)
    others = [WarmState.for_key(image(tmp_path, {"k": "ab"}), {"version": "7.2"}, "", tmp_path),
              WarmState.for_key(image(tmp_path, {"k": "aa"}), {"version": "8.0"}, "", tmp_path),
              WarmState.for_key(image(tmp_path, {"k": "aa"}), {"version": "7.2"}, "x",
                                tmp_path)]
    assert len({base.dir, *(o.dir for o in others)}) == 4


def test_concurrent_saves_write_one_complete_state(tmp_path: Path) -> None:
    warm = WarmState.for_key(image(tmp_path, {}), {"m": "1"}, "", tmp_path)
    started, results = threading.Event(), []

    def slow(path: Path) -> None:
        started.set()
        path.write_bytes(b"a" * 1000)
        time.sleep(0.3)

    t = threading.Thread(target=lambda: results.append(warm.save(slow, "boot-1")))
    t.start()
    started.wait(5)
    assert not warm.ready()                                   # not visible half written
    assert warm.save(lambda p: p.write_bytes(b"b"), "boot-2") is False   # lock taken
    t.join(5)
    assert results == [True] and warm.ready() and warm.boot_id() == "boot-1"
    assert warm.state.read_bytes() == b"a" * 1000
    assert [p.name for p in warm.dir.iterdir() if p.name.startswith(".state")] == []
    assert warm.save(lambda p: p.write_bytes(b"c"), "boot-3") is False   # already saved


class _Counting:
    def __init__(self) -> None:
        self.calls = 0

    def offsetof(self, spec: str, path: str) -> int:
        self.calls += 1
        if path == "missing":
            raise TypeLookupError(f"{spec} has no member {path}")
        return 40

    def sizeof(self, spec: object) -> int:
        self.calls += 1
        return 8 if str(spec) == "u64" else 4096

    def member_type(self, spec: str, path: str) -> str:
        self.calls += 1
        return "u64"

    def is_signed(self, spec: object) -> bool:
        self.calls += 1
        return False


def test_type_answers_are_recorded_and_read_back_without_parsing(tmp_path: Path) -> None:
    real = _Counting()
    first = RecordedTypes(lambda: real, tmp_path / "types.json")
    assert first.offsetof("struct kvm", "vm_list") == 40
    ref = first.member_type("struct kvm", "nr")
    assert (first.sizeof(ref), first.is_signed(ref), first.sizeof("struct kvm")) == \
        (8, False, 4096)
    with pytest.raises(TypeLookupError, match="no member missing"):
        first.offsetof("struct kvm", "missing")
    again = RecordedTypes(lambda: None, tmp_path / "types.json")   # would fail to parse
    assert again.offsetof("struct kvm", "vm_list") == 40
    assert again.sizeof(again.member_type("struct kvm", "nr")) == 8
    with pytest.raises(TypeLookupError, match="no member missing"):
        again.offsetof("struct kvm", "missing")
    assert not again.loaded
    with pytest.raises(TypeLookupError):                      # not recorded: must parse
        again.offsetof("struct kvm", "other")


def test_recorded_types_pickle_as_the_real_types(tmp_path: Path) -> None:
    """A kept core's types.pickle: the loader is a closure (not picklable); the real
    types are, and answer the same."""
    recorded = RecordedTypes(lambda: _Counting(), tmp_path / "types.json")
    assert recorded.offsetof("struct kvm", "vm_list") == 40
    back = pickle.loads(pickle.dumps(recorded))
    assert isinstance(back, _Counting) and back.offsetof("struct kvm", "vm_list") == 40


def test_fake_machine_key_is_its_options(tmp_path: Path) -> None:
    from fakes import machine_config
    cfg = machine_config(tmp_path)
    m = FakeMachine(cfg, FakeWorld().guest, FakeWorld().target)
    other = FakeMachine(MachineConfig(arch=cfg.arch, boot=cfg.boot, artifacts=tmp_path,
                                      cpu="other"), FakeWorld().guest, FakeWorld().target)
    assert m.state_key() != other.state_key()


def _saved(tmp_path: Path, name: str, size: int, used: float) -> WarmState:
    warm = WarmState.for_key(image(tmp_path, {"k": name}), {"m": name}, "", tmp_path)
    assert warm.save(lambda p: p.write_bytes(b"x" * size), f"boot-{name}")
    os.utime(warm.dir / "meta.json", (used, used))
    return warm


def test_prune_drops_the_old_then_the_least_recently_used_over_the_budget(
        tmp_path: Path) -> None:
    now = 1_000_000_000.0
    old = _saved(tmp_path, "old", 10, now - 30 * 86400)
    a = _saved(tmp_path, "a", 100, now - 3600)
    b = _saved(tmp_path, "b", 100, now - 7200)
    c = _saved(tmp_path, "c", 100, now - 60)
    gone = prune(states_root(tmp_path), budget=250, max_age=14 * 86400, now=now)
    assert sorted(gone) == sorted([old.dir, b.dir])        # too old; over the budget
    assert a.ready() and c.ready() and not b.dir.exists()


def test_prune_keeps_the_state_just_saved_and_one_being_saved(tmp_path: Path) -> None:
    now = time.time()
    big = _saved(tmp_path, "big", 500, now)
    busy = WarmState.for_key(image(tmp_path, {"k": "busy"}), {"m": "busy"}, "", tmp_path)
    with busy._locked(wait=False) as mine:          # another run is saving it
        assert mine
        gone = prune(states_root(tmp_path), budget=10, max_age=86400, keep=big.dir, now=now)
    assert gone == [] and big.ready() and busy.dir.exists()


def test_a_start_from_a_state_counts_as_a_use(tmp_path: Path) -> None:
    warm = _saved(tmp_path, "t", 10, 1000.0)
    warm.touch()
    assert warm.last_used() > time.time() - 60
