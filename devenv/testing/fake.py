"""FakeBackend keeps its "VM" as a JSON file in the instance directory.

Because state lives on disk, a fresh FakeBackend in another process (the CLI
run by a test) sees what an earlier one did, just like a real backend.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devenv import backends
from devenv.backends.base import ExecRequest, Features, InstanceRef, Status, StepReporter
from devenv.errors import BackendUnavailable, StateError
from devenv.hostos import Engine, Host, Probe

STATE_FILE = "fake-vm.json"


class FakeBackend:
    name = "fake"
    features = Features(vm=True, ssh=False, port_forwarding=False)

    def _load(self, inst: InstanceRef) -> dict[str, object]:
        f = inst.dir / STATE_FILE
        return json.loads(f.read_text()) if f.exists() else {}

    def _save(self, inst: InstanceRef, **changes: object) -> None:
        state = self._load(inst) | changes
        (inst.dir / STATE_FILE).write_text(json.dumps(state))

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        step("make the fake disk")
        if inst.config.env.get("FAKE_FAIL_CREATE"):
            raise BackendUnavailable("fake create failed on purpose", "unset FAKE_FAIL_CREATE")
        (inst.dir / "disk.img").write_bytes(b"\0" * 16)
        self._save(inst, running=False, starts=0)

    def start(self, inst: InstanceRef, step: StepReporter) -> None:
        step("boot the fake VM")
        state = self._load(inst)
        starts = state.get("starts", 0)
        self._save(inst, running=True, starts=int(starts) + 1 if isinstance(starts, int) else 1)

    def stop(self, inst: InstanceRef, force: bool, step: StepReporter, *, suspend: bool = False) -> None:
        step("power off the fake VM")
        self._save(inst, running=False, forced=force)

    def delete(self, inst: InstanceRef) -> None:
        pass

    def status(self, inst: InstanceRef) -> Status:
        state = self._load(inst)
        if state.get("broken"):
            return Status("broken", str(state["broken"]))
        return Status("running" if state.get("running") else "stopped", details={"starts": state.get("starts", 0)})

    def exec(self, inst: InstanceRef, req: ExecRequest) -> int:
        if not self._load(inst).get("running"):
            raise StateError("fake VM is not running")
        log = inst.dir / "exec.log"
        with open(log, "a") as f:
            f.write(json.dumps({**dataclasses.asdict(req), "argv": list(req.argv)}) + "\n")
        if list(req.argv[:1]) == ["exit"]:
            return int(req.argv[1])
        return 0

    def shell(self, inst: InstanceRef) -> int:
        return 0

    def copy_in(self, inst: InstanceRef, src: Path, dst: str) -> None:
        shutil.copy(src, inst.dir / Path(dst).name)

    def copy_out(self, inst: InstanceRef, src: str, dst: Path) -> None:
        shutil.copy(inst.dir / Path(src).name, dst)

    def docker_env(self, inst: InstanceRef) -> dict[str, str]:
        return {"DOCKER_HOST": f"unix://{inst.dir}/sock/docker.sock"}

    def ssh_config(self, inst: InstanceRef) -> str:
        return f"Host devenv-{inst.name}\n  HostName 127.0.0.1\n"

    def log_files(self, inst: InstanceRef) -> list[Path]:
        return []


@contextmanager
def use_fake_backend() -> Iterator[None]:
    backends.register(backends.Entry("fake", "devenv.testing.fake:FakeBackend", "test double"))
    try:
        yield
    finally:
        backends.unregister("fake")


class FakeHost(Host):
    """A Host whose probes are given, for table-driven tests of decisions."""

    def __init__(self, system: str = "linux", arch: str = "x86_64", **probes: object) -> None:
        self.__dict__["system"] = system
        self.__dict__["arch"] = arch
        self.__dict__.setdefault("is_wsl", False)
        no = Probe(False, "absent in this fake host", "")
        for attr in ("kvm", "hvf", "whpx", "wsl_exe", "hyperv", "libvirt_socket", "qemu", "native_engine"):
            self.__dict__[attr] = no
        self.__dict__["engine"] = None
        self.__dict__["qemu_binary"] = None
        self.__dict__["accelerator_runs"] = lambda accel: Probe(True, f"a fake host's {accel} runs")
        for key, value in probes.items():
            self.__dict__[key] = value
        engine = self.__dict__["engine"]  # engine_of answers from it, never from the real host
        self.__dict__.setdefault(
            "_engines", {r: engine if engine and engine.runtime == r else None for r in ("docker", "podman")}
        )


__all__ = ["Engine", "FakeBackend", "FakeHost", "use_fake_backend"]
