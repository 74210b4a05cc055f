"""Warm starts without a VM: the state cache, its key, the cold-boot lock, compaction, and
the boot step on a scripted machine (cold boot and save, then restore, then fallback)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeWorld, machine_config
from test_runner import scenario

from harness.errors import InfraError
from harness.images import Image
from harness.kallsyms import Symbols, parse_kallsyms
from harness.machines.fake import FakeMachine
from harness.registry import Registry
from harness.runner import run_scenario
from harness.warmstart import WarmState, sparsify, state_key, warm_state

MIB = 1 << 20


def image(tmp_path: Path, digest: str = "abc123") -> Image:
    return Image(name="linux-amd64-vmx", arch="x86_64", dir=tmp_path, kernel=tmp_path / "k",
                 initrd=tmp_path / "i", modules=tmp_path, manifest={"hash": digest},
                 kernel_release="6.1.0-fake")


def test_key_covers_image_and_machine(tmp_path: Path) -> None:
    cfg = machine_config(tmp_path)
    key = state_key(image(tmp_path), cfg, "bochs")
    assert state_key(image(tmp_path), cfg, "bochs") == key
    for other in (state_key(image(tmp_path, "def456"), cfg, "bochs"),
                  state_key(image(tmp_path), replace(cfg, memory=512 * MIB), "bochs"),
                  state_key(image(tmp_path), replace(cfg, cpu="corei7_icelake_u"), "bochs"),
                  state_key(image(tmp_path), replace(cfg, smp=2), "bochs"),
                  state_key(image(tmp_path), cfg, "qemu")):
        assert other != key


def test_only_listed_emulators_and_cold_override(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = machine_config(tmp_path)
    ws = warm_state(image(tmp_path), cfg, "bochs", cache_dir=tmp_path)
    assert ws is not None and ws.dir.parent == tmp_path / "slatcheck" / "states"
    assert ws.dir.name.startswith("linux-amd64-vmx-abc123-bochs-")
    assert warm_state(image(tmp_path), cfg, "qemu", cache_dir=tmp_path) is None
    monkeypatch.setenv("SLATCHECK_COLD", "1")
    assert warm_state(image(tmp_path), cfg, "bochs", cache_dir=tmp_path) is None


def test_a_state_counts_only_once_finished(tmp_path: Path) -> None:
    ws = WarmState(tmp_path / "s")
    state = ws.begin()
    state.mkdir()
    (state / "config").write_text("x")
    assert not ws.saved()
    ws.finish({"image": "i"})
    assert ws.saved() and json.loads(ws.meta.read_text()) == {"image": "i"}
    ws.begin()                                   # a new save replaces the old state
    assert not ws.saved() and not state.exists()
    ws.discard()
    assert not ws.dir.exists()


def test_sparsify_keeps_the_bytes_and_drops_the_zeros(tmp_path: Path) -> None:
    path = tmp_path / "memory.ram"
    data = bytearray(16 * MIB)
    data[3 * MIB + 5:3 * MIB + 9] = b"SLAT"
    data[-1] = 7
    path.write_bytes(data)
    sparsify(path)
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 <= 4 * MIB           # two data MiB, the rest holes


def test_cold_boot_lock_serialises_and_times_out(tmp_path: Path) -> None:
    ws = WarmState(tmp_path / "s")
    order: list[str] = []

    def second() -> None:
        with ws.cold_boot_lock(timeout=10):
            order.append("second")

    with ws.cold_boot_lock(timeout=1):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first")
        with pytest.raises(InfraError, match="held"):
            with WarmState(tmp_path / "s").cold_boot_lock(timeout=0.2):
                pass
    t.join()
    assert order == ["first", "second"]


# -- the boot step on a scripted machine -----------------------------------------------

class WarmWorld(FakeWorld):
    """A FakeWorld whose machine registers as ``bochs`` and remembers what it was given."""

    def __init__(self, restore_works: bool = True) -> None:
        super().__init__()
        self.configs: list[Any] = []
        self.restore_works = restore_works

    def machine(self, config: Any) -> FakeMachine:
        self.configs.append(config)
        if config.incoming is not None and not self.restore_works:
            raise InfraError("the saved state does not load")
        m = super().machine(config)
        m.save_state = lambda path: (path.mkdir(), (path / "config").write_text("fake"))  # type: ignore[method-assign]
        return m

    symbol_reads = 0

    def symbols(self, *args: object) -> Symbols:
        """The boot's kallsyms, counting how often the guest is asked."""
        WarmWorld.symbol_reads += 1
        return parse_kallsyms(KALLSYMS)

    def services(self, tmp_path: Path) -> Any:
        base = super().services(tmp_path)
        machines: Registry[Any] = Registry("machine backend")
        machines.add("bochs", self.machine)
        guests: Registry[Any] = Registry("guest OS")
        for name, guest in base.guests.items():
            guests.add(name, replace(guest, symbols=self.symbols) if name == "linux" else guest)
        return replace(base, machines=machines, guests=guests)


KALLSYMS = "ffffffffb1c15740 D page_offset_base\nffffffffc0a1b2c0 d vm_list\t[kvm]\n"


def bochs_scenario(tmp_path: Path) -> Any:
    sc = scenario(tmp_path)
    return replace(sc, machine=replace(sc.machine, emulator="bochs"))


def test_first_run_boots_cold_and_saves_later_runs_restore(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    world = WarmWorld()
    first = run_scenario(bochs_scenario(tmp_path), tmp_path / "a1",
                         services=world.services(tmp_path))
    assert first.verdict == "pass", first.message
    assert first.properties["machine.start"] == "cold" and "save" in first.phases
    states = [p for p in (tmp_path / "cache" / "slatcheck" / "states").glob("*-bochs-*")
              if p.is_dir()]
    assert len(states) == 1 and (states[0] / "meta.json").is_file()
    assert (states[0] / "state" / "config").read_text() == "fake"
    meta = json.loads((states[0] / "meta.json").read_text())
    assert meta["kernel"]["linux-kvm-svm"]["symbols"]["vm_list"] == \
        ["0xffffffffc0a1b2c0", "d", "kvm"]
    reads = WarmWorld.symbol_reads
    second = run_scenario(bochs_scenario(tmp_path), tmp_path / "a2",
                          services=world.services(tmp_path))
    assert second.verdict == "pass", second.message
    assert second.properties["machine.start"] == "warm" and "restore" in second.phases
    assert [c.incoming for c in world.configs] == [None, states[0] / "state"]
    assert WarmWorld.symbol_reads == reads            # the saved boot's symbols were used
    assert "d vm_list\t[kvm]" in (second.artifacts / "kallsyms.txt").read_text()


def test_a_state_that_does_not_restore_is_replaced_by_a_cold_boot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_scenario(bochs_scenario(tmp_path), tmp_path / "a1",
                 services=WarmWorld().services(tmp_path))
    broken = WarmWorld(restore_works=False)
    res = run_scenario(bochs_scenario(tmp_path), tmp_path / "a2",
                       services=broken.services(tmp_path))
    assert res.verdict == "pass", res.message
    assert res.properties["machine.start"] == "cold"
    assert [c.incoming is None for c in broken.configs] == [False, True]
    state = next(p for p in (tmp_path / "cache" / "slatcheck" / "states").glob("*-bochs-*")
                 if p.is_dir())
    assert (state / "meta.json").is_file()                   # saved afresh
