"""Host decisions are table-driven over FakeHost; the registry explains missing extras."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from devenv import backends
from devenv.backends import availability
from devenv.errors import BackendUnavailable, UsageError
from devenv.hostos import Probe, default_backend, normalize_arch, qemu_error_line
from devenv.testing import FakeHost

YES = Probe(True, "yes")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (FakeHost("linux", native_engine=YES), "native"),
        (FakeHost("linux"), "qemu"),
        (FakeHost("linux", kvm=YES), "qemu"),
        (FakeHost("linux", is_wsl=True, native_engine=YES), "native"),
        (FakeHost("linux", is_wsl=True), "qemu"),
        (FakeHost("macos", hvf=YES), "qemu"),
        (FakeHost("windows", wsl_exe=YES), "wsl2"),
        (FakeHost("windows"), "hyperv"),
    ],
)
def test_default_backend(host: FakeHost, expected: str) -> None:
    assert default_backend(host) == expected
    assert default_backend(host, "auto") == default_backend(host, host.arch) == expected


@pytest.mark.parametrize(
    "host",
    [
        FakeHost("linux", native_engine=YES),  # the host's engine runs x86_64 containers: not what was asked
        FakeHost("macos", "aarch64", hvf=YES),
        FakeHost("windows", wsl_exe=YES),
    ],
)
def test_a_guest_of_another_arch_defaults_to_qemu(host: FakeHost) -> None:
    other = "x86_64" if host.arch == "aarch64" else "aarch64"
    assert default_backend(host, other) == "qemu"


def test_a_guest_of_another_arch_gets_tcg_unless_something_is_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVENV_QEMU_ACCEL", raising=False)
    mac = FakeHost("macos", "aarch64", hvf=YES)
    assert availability.accelerator(mac, "auto", "aarch64") == "hvf"
    assert availability.accelerator(mac, "auto", "x86_64") == "tcg"  # an Intel guest on Apple Silicon
    assert availability.accelerator(FakeHost("linux", kvm=YES), "auto", "aarch64") == "tcg"
    assert availability.accelerator(mac, "hvf", "x86_64") == "hvf"  # forced: the backend refuses it, by name
    assert availability.accelerator_choice(mac, "hvf", "x86_64") == ("hvf", "config")
    assert availability.accelerator_choice(mac, "auto", "aarch64") == ("hvf", "auto")
    monkeypatch.setenv("DEVENV_QEMU_ACCEL", "KVM ")
    assert availability.accelerator_choice(mac, "hvf", "x86_64") == ("kvm", "DEVENV_QEMU_ACCEL")


@pytest.mark.parametrize(
    ("host", "env", "expected"),
    [
        (FakeHost("macos", hvf=YES), None, "hvf"),
        (FakeHost("linux", kvm=YES), None, "kvm"),
        (FakeHost("linux", kvm=YES), "tcg", "tcg"),
        (FakeHost("windows", whpx=YES), None, "whpx"),
        (FakeHost("linux"), None, "tcg"),
    ],
)
def test_accelerator(host: FakeHost, env: str | None, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if env:
        monkeypatch.setenv("DEVENV_QEMU_ACCEL", env)
    else:
        monkeypatch.delenv("DEVENV_QEMU_ACCEL", raising=False)
    assert availability.accelerator(host) == expected


def test_accelerator_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    kvm_host = FakeHost("linux", kvm=YES)
    monkeypatch.delenv("DEVENV_QEMU_ACCEL", raising=False)
    assert availability.accelerator(kvm_host, "tcg") == "tcg"  # devenv.toml over the probe
    monkeypatch.setenv("DEVENV_QEMU_ACCEL", "kvm")
    assert availability.accelerator(FakeHost("linux"), "tcg") == "kvm"  # the variable over devenv.toml


@pytest.mark.parametrize(("machine", "arch"), [("AMD64", "x86_64"), ("arm64", "aarch64"), ("x86_64", "x86_64")])
def test_arch_names(machine: str, arch: str) -> None:
    assert normalize_arch(machine) == arch


def test_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", None)  # makes `import libvirt` fail
    monkeypatch.delitem(sys.modules, "devenv.backends.drivers.libvirtdrv", raising=False)
    with pytest.raises(BackendUnavailable) as e:
        backends.load("libvirt")
    assert e.value.hint == "pip install 'devenv[libvirt]'"
    assert "libvirt" in e.value.message


def test_unknown_backend_suggests() -> None:
    with pytest.raises(UsageError) as e:
        backends.entry("natve")
    assert e.value.hint == "did you mean `native`?"


def test_doctor_lists_every_backend_with_reason_and_fix(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost("linux", qemu=Probe(True, "QEMU 9"), kvm=YES)
    monkeypatch.setattr("devenv.hostos.current", lambda: host)
    monkeypatch.delenv("DEVENV_QEMU_ACCEL", raising=False)
    ran = cli("doctor", "--json")
    assert ran.code == 0, ran.err
    info = json.loads(ran.out)
    assert info["default_backend"] == "qemu"
    assert info["qemu_accelerator"] == "kvm"
    rows = {r["backend"]: r for r in info["backends"]}
    assert set(rows) == {"native", "qemu", "libvirt", "wsl2", "hyperv"}
    assert rows["qemu"] == {"backend": "qemu", "available": True, "detail": "QEMU 9; accelerator kvm", "fix": ""}
    assert rows["native"]["available"] is False
    text = cli("doctor").out
    assert text.splitlines()[0] == "host: linux x86_64; default backend: qemu"
    assert "  ok  qemu" in text


def test_doctor_names_tcg_when_qemu_stops_at_once_under_the_accelerator_found(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = Probe(False, "QEMU stops at once under kvm (failed to set MSR 0x10a to 0x69)", "start falls back")
    asked: list[str] = []

    def accelerator_runs(accel: str) -> Probe:
        asked.append(accel)
        return crash

    host = FakeHost("linux", qemu=Probe(True, "QEMU 9"), kvm=YES, accelerator_runs=accelerator_runs)
    monkeypatch.setattr("devenv.hostos.current", lambda: host)
    monkeypatch.delenv("DEVENV_QEMU_ACCEL", raising=False)
    info = json.loads(cli("doctor", "--json").out)
    assert info["qemu_accelerator"] == "tcg"
    rows = {r["backend"]: r for r in info["backends"]}
    assert rows["qemu"]["available"] is True
    assert rows["qemu"]["detail"] == f"QEMU 9; accelerator tcg: {crash.detail}"
    assert set(asked) == {"kvm"}  # the accelerator auto picked is the one launched
    assert "fix: start falls back" in cli("doctor").out
    monkeypatch.setenv("DEVENV_QEMU_ACCEL", "kvm")  # named: start would not fall back, and doctor says kvm
    assert json.loads(cli("doctor", "--json").out)["qemu_accelerator"] == "kvm"


def test_doctor_reports_a_mistyped_accel_variable_in_the_qemu_row(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rest of the report stands: one row says what is wrong and how to fix it."""
    host = FakeHost("linux", qemu=Probe(True, "QEMU 9"), kvm=YES, native_engine=YES)
    monkeypatch.setattr("devenv.hostos.current", lambda: host)
    monkeypatch.setenv("DEVENV_QEMU_ACCEL", "kvmm")
    ran = cli("doctor", "--json")
    assert ran.code == 0, ran.err
    info = json.loads(ran.out)
    rows = {r["backend"]: r for r in info["backends"]}
    assert info["qemu_accelerator"] is None and rows["native"]["available"] is True
    assert rows["qemu"]["available"] is False
    assert rows["qemu"]["detail"] == "QEMU 9; DEVENV_QEMU_ACCEL=kvmm is not an accelerator"
    assert "unset DEVENV_QEMU_ACCEL" in rows["qemu"]["fix"]


def test_qemu_error_line_is_the_first_error_not_a_warning() -> None:
    out = (
        "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni\n"
        "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
        "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed.\n"
    )
    assert qemu_error_line(out, "kvm") == "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69"
    assert qemu_error_line(out, "hvf") is None
    assert (
        qemu_error_line("qemu: -accel hvf: Could not access HVF\n", "hvf") == "qemu: -accel hvf: Could not access HVF"
    )


def test_accelerator_runs_launches_qemu_once_per_accelerator(tmp_path: Path) -> None:
    """doctor's qemu row and its JSON both ask: a real launch (a script standing in for QEMU) happens once."""
    from devenv.hostos import Host

    launches = tmp_path / "launches"
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(f"#!/bin/sh\necho \"$@\" >> {launches}\necho 'qemu: error: kvm: failed' >&2\nexit 1\n")
    qemu.chmod(0o755)
    host = Host()
    host.__dict__.update(arch="x86_64", qemu_binary=str(qemu))
    first = host.accelerator_runs("kvm")
    assert host.accelerator_runs("kvm") is first
    assert first == Probe(
        False,
        "QEMU stops at once under kvm (qemu: error: kvm: failed)",
        "`devenv start` boots under tcg instead by itself; fix kvm on this host for full speed",
    )
    assert launches.read_text().splitlines() == [
        "-nodefaults -display none -machine q35 -accel kvm -cpu host"  # devenv's own machine and CPU model
    ]


def test_real_host_probe_does_not_raise() -> None:
    from devenv.hostos import Host

    h = Host()
    for attr in ("kvm", "hvf", "whpx", "wsl_exe", "hyperv", "libvirt_socket", "qemu", "native_engine"):
        assert isinstance(getattr(h, attr), Probe)
    # and they agree with the machine itself
    import shutil

    assert h.qemu.ok == bool(shutil.which(f"qemu-system-{h.arch}") and shutil.which("qemu-img"))
    if h.system == "linux" and "DOCKER_HOST" not in os.environ:
        from devenv.hostos import ping_unix

        assert (h.engine is not None and h.engine.runtime == "docker") == ping_unix("/var/run/docker.sock")


@pytest.mark.parametrize(
    ("answer", "alive"), [(b"HTTP/1.1 200 OK\r\n\r\nOK", True), (b"HTTP/1.1 500 Boom\r\n\r\n", False)]
)
def test_ping_unix_reads_the_status_line(tmp_path: Path, answer: bytes, alive: bool) -> None:
    import socket
    import threading

    from devenv.hostos import ping_unix

    path = str(tmp_path / "engine.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(conn.recv(4096))
            conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert ping_unix(path) is alive
        t.join(5)
        assert got and got[0].startswith(b"GET /_ping HTTP/1.0\r\n")
    finally:
        server.close()
    assert ping_unix(str(tmp_path / "missing.sock")) is False


def test_a_runtimes_engine_is_probed_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docker down: a docker instance never runs `podman info` (~0.2 s per `devenv list`); podman's own probe does."""
    from devenv.hostos import Engine, Host

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "podman-ran"
    (bin_dir / "podman").write_text(f'#!/bin/sh\necho "$@" >> {ran}\necho amd64\n')
    (bin_dir / "podman").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nobody.sock'}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    if Path("/run/podman/podman.sock").exists():
        pytest.skip("this host has a system podman socket, which the podman probe would find first")
    host = Host()
    assert host.engine_of("docker") is None
    assert not ran.exists()
    assert host.engine_of("podman") == Engine("podman", "")
    assert ran.read_text() == "info --format {{.Host.Arch}}\n"
    assert host.engine_of("podman") == Engine("podman", "") and ran.read_text().count("\n") == 1  # probed once
    assert host.engine_of("containerd") is None


def test_a_native_podman_instance_finds_podman_beside_a_running_docker(tmp_path: Path) -> None:
    from devenv.backends.base import InstanceRef
    from devenv.backends.native import NativeBackend
    from devenv.config import Config
    from devenv.hostos import Engine

    docker, podman = Engine("docker", "unix:///var/run/docker.sock"), Engine("podman", "unix:///run/podman.sock")
    host = FakeHost("linux", engine=docker, _engines={"docker": docker, "podman": podman})
    (tmp_path / "started").touch()
    backend = NativeBackend(host)
    st = backend.status(InstanceRef("p", tmp_path, Config(backend="native", runtime="podman")))
    assert (st.state, st.details) == ("running", {"engine": "unix:///run/podman.sock"})
    alone = NativeBackend(FakeHost("linux", engine=docker))
    st = alone.status(InstanceRef("p", tmp_path, Config(backend="native", runtime="podman")))
    assert (st.state, st.reason) == ("broken", "the local podman engine does not answer")
