"""What host is this, and what can it run?

Every probe is lazy and cached for the life of the process, so `devenv list`
pays for none of them and `devenv doctor` pays for each once. The default
backend for a host is decided in exactly one function, `default_backend`.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64", "x86_64": "x86_64"}


def normalize_arch(machine: str) -> str:
    return ARCH_ALIASES.get(machine.lower(), machine.lower())


@dataclass(frozen=True)
class Engine:
    """A container engine that answered on this host."""

    runtime: str  # docker | podman | containerd
    endpoint: str  # DOCKER_HOST-style address, or "" for a daemonless CLI
    version: str = ""


@dataclass(frozen=True)
class HostFacts:
    """What the QEMU command line depends on about the host, as plain values.

    The argv builder, the mount choice and doctor's macOS checks take these
    instead of asking the running system, so every host kind (an Apple Silicon
    or Intel Mac, Linux, Windows) is tested on any of them. `macos_version`
    is None off macOS, or when macOS would not say.
    """

    system: str  # linux | macos | windows
    arch: str  # x86_64 | aarch64
    macos_version: tuple[int, ...] | None = None


def parse_macos_version(text: str) -> tuple[int, ...] | None:
    """`sw_vers -productVersion` / platform.mac_ver()'s "14.4.1" as (14, 4, 1); None for anything else."""
    parts = text.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def parse_qemu_version(text: str) -> tuple[int, int, int] | None:
    """`qemu-system-* --version`'s first line as (major, minor, micro), as Lima's parseQemuVersion reads it.

    "QEMU emulator version 8.2.1" (Homebrew), "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7...)".
    """
    import re

    lines = text.splitlines()
    m = re.match(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)", lines[0].strip() if lines else "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


@dataclass(frozen=True)
class Probe:
    """One capability: usable or not, and when not, why and what fixes it."""

    ok: bool
    detail: str = ""
    fix: str = ""


def qemu_error_line(output: str, accel: str) -> str | None:
    """QEMU's first error line when its output names `accel` (kvm, hvf, whpx), else None.

    The line that names it is often an assertion deep in QEMU's source
    (`kvm_buf_set_msrs: Assertion ...`); the first line is what went wrong
    (`failed to set MSR 0x10a to 0x69`). Warnings (a CPU feature the host lacks) are skipped.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not any(accel in line.lower() for line in lines):
        return None
    errors = [line for line in lines if "warning:" not in line]
    return (errors or lines)[0]


def ping_unix(path: str, timeout: float = 1.0) -> bool:
    """GET /_ping on a Docker-API unix socket (docker and podman both serve it).

    socket.py's C half: socket.py itself costs `devenv list` ~8 ms (its enums and selectors).
    """
    import _socket

    if not hasattr(_socket, "AF_UNIX"):
        return False
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        data = s.recv(4096)
    except OSError:
        return False
    finally:
        s.close()
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] + b" "


class Host:
    """The running host. Subclass or construct HostFacts for tests."""

    @functools.cached_property
    def system(self) -> str:
        return {"linux": "linux", "darwin": "macos", "win32": "windows", "cygwin": "windows"}.get(
            sys.platform, sys.platform
        )

    @functools.cached_property
    def arch(self) -> str:
        import platform

        return normalize_arch(platform.machine())

    @functools.cached_property
    def macos_version(self) -> tuple[int, ...] | None:
        if self.system != "macos":
            return None
        import platform

        return parse_macos_version(platform.mac_ver()[0])

    @property
    def facts(self) -> HostFacts:
        return HostFacts(self.system, self.arch, self.macos_version)

    @functools.cached_property
    def is_wsl(self) -> bool:
        """devenv itself running inside a WSL distro (Linux, but Windows underneath)."""
        if self.system != "linux":
            return False
        if os.path.exists("/proc/sys/fs/binfmt_misc/WSLInterop") or os.environ.get("WSL_DISTRO_NAME"):
            return True
        try:
            return "microsoft" in Path("/proc/version").read_text().lower()
        except OSError:
            return False

    @functools.cached_property
    def kvm(self) -> Probe:
        if self.system != "linux":
            return Probe(False, "KVM exists only on Linux")
        dev = "/dev/kvm"
        if not os.path.exists(dev):
            return Probe(
                False, "/dev/kvm does not exist", "enable virtualization in the firmware and load kvm_intel/kvm_amd"
            )
        if not os.access(dev, os.R_OK | os.W_OK):
            return Probe(
                False,
                "/dev/kvm is not readable and writable by this user",
                "sudo usermod -aG kvm $USER, then log in again",
            )
        return Probe(True, "/dev/kvm is usable")

    @functools.cached_property
    def hvf(self) -> Probe:
        if self.system != "macos":
            return Probe(False, "Hypervisor.framework exists only on macOS")
        r = _quiet(["sysctl", "-n", "kern.hv_support"])
        if r is not None and r.strip() == "1":
            return Probe(True, "kern.hv_support = 1")
        return Probe(False, "kern.hv_support is not 1", "use a Mac that supports Hypervisor.framework")

    @functools.cached_property
    def whpx(self) -> Probe:
        if self.system != "windows":
            return Probe(False, "WHPX exists only on Windows")
        qemu = self.qemu_binary
        out = _quiet([qemu, "-accel", "help"]) if qemu else None
        if out and "whpx" in out:
            return Probe(True, "qemu lists the whpx accelerator")
        return Probe(
            False,
            "the Windows Hypervisor Platform is not available to QEMU",
            "Enable-WindowsOptionalFeature -Online -FeatureName HypervisorPlatform",
        )

    @functools.cached_property
    def wsl_exe(self) -> Probe:
        path = _which("wsl.exe") or _which("wsl")
        if self.system == "windows" and path:
            return Probe(True, path)
        if self.system != "windows":
            return Probe(False, "wsl.exe exists only on Windows")
        return Probe(False, "wsl.exe was not found", "wsl --install --no-distribution")

    @functools.cached_property
    def hyperv(self) -> Probe:
        if self.system != "windows":
            return Probe(False, "Hyper-V exists only on Windows (a remote Hyper-V host is reached over WinRM)")
        out = _quiet(["powershell.exe", "-NoProfile", "-Command", "(Get-Module -ListAvailable Hyper-V).Name"])
        if out and "Hyper-V" in out:
            return Probe(True, "the Hyper-V PowerShell module is installed")
        return Probe(
            False,
            "the Hyper-V PowerShell module is not installed",
            "Enable-WindowsOptionalFeature -Online -FeatureName Microsoft-Hyper-V-All",
        )

    @functools.cached_property
    def libvirt_socket(self) -> Probe:
        candidates = ["/run/libvirt/libvirt-sock", "/var/run/libvirt/libvirt-sock"]
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            candidates.append(os.path.join(runtime, "libvirt", "libvirt-sock"))
        for c in candidates:
            if os.path.exists(c):
                return Probe(True, c)
        return Probe(False, "no libvirtd socket found", "sudo systemctl start libvirtd (or virtqemud)")

    @functools.cached_property
    def qemu_binary(self) -> str | None:
        return _which(f"qemu-system-{self.arch}")

    @functools.cached_property
    def qemu(self) -> Probe:
        binary = self.qemu_binary
        fix = {
            "macos": "brew install qemu",
            "windows": "winget install SoftwareFreedomConservancy.QEMU",
        }.get(self.system, "sudo apt-get install qemu-system-x86 qemu-utils (or your distribution's qemu package)")
        if not binary:
            return Probe(False, f"qemu-system-{self.arch} was not found on PATH", fix)
        if not _which("qemu-img"):
            return Probe(False, "qemu-img was not found on PATH", fix)
        out = _quiet([binary, "--version"]) or ""
        version = out.splitlines()[0] if out else "unknown version"
        return Probe(True, version)

    def accelerator_runs(self, accel: str) -> Probe:
        """Whether QEMU keeps running under `accel` (kvm, hvf, whpx) for a second: for doctor, which waits that long.

        /dev/kvm can open and still fail at the first vCPU (a cloud VM whose nested
        virtualisation is broken), which only a launch shows. QEMU gets devenv's
        machine and CPU model on an empty machine; alive after the wait means it runs.
        Blamed on `accel` only when QEMU's output names it, as `devenv start` judges.
        Asked once per accelerator: doctor's qemu row and its JSON read the same answer.
        """
        known: dict[str, Probe] = self.__dict__.setdefault("_accelerator_runs", {})
        if accel not in known:
            known[accel] = self._launch_under(accel)
        return known[accel]

    def _launch_under(self, accel: str) -> Probe:
        binary = self.qemu_binary
        if binary is None:
            return Probe(True, f"no QEMU to launch under {accel}")
        import subprocess

        from devenv.machines import cpu_model, resolve_machine

        machine = resolve_machine("auto", self.arch, direct_kernel=False)
        argv = [binary, "-nodefaults", "-display", "none", "-machine", machine, "-accel", accel]
        argv += ["-cpu", cpu_model(self.arch, accel)]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as e:
            return Probe(False, f"{binary} did not start: {e}")
        try:
            out, _ = proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return Probe(True, f"QEMU runs under {accel}")
        reason = qemu_error_line(out.decode(errors="replace"), accel)
        if reason is None:  # not the accelerator's fault, as `devenv start` judges it: it would not fall back
            return Probe(True, f"QEMU left the probe with exit code {proc.returncode}, not naming {accel}")
        return Probe(
            False,
            f"QEMU stops at once under {accel} ({reason})",
            f"`devenv start` boots under tcg instead by itself; fix {accel} on this host for full speed",
        )

    @functools.cached_property
    def engine(self) -> Engine | None:
        """A native engine that answers right now (docker, then podman)."""
        return self.engine_of("docker") or self.engine_of("podman")

    def engine_of(self, runtime: str) -> Engine | None:
        """This runtime's native engine when it answers right now; each runtime probed once per process.

        A docker instance asks after docker alone: with docker down, probing
        podman (`podman info`, ~0.2 s) would tell it nothing, and on a host
        running both, a podman instance finds podman, not docker.
        """
        probed: dict[str, Engine | None] = self.__dict__.setdefault("_engines", {})
        if runtime not in probed:
            probed[runtime] = _docker() if runtime == "docker" else _podman() if runtime == "podman" else None
        return probed[runtime]

    @functools.cached_property
    def native_engine(self) -> Probe:
        if self.system != "linux":
            return Probe(False, "the native backend runs containers directly on a Linux host (or inside WSL)")
        engine = self.engine
        if engine:
            where = engine.endpoint or "the podman CLI (daemonless)"
            return Probe(True, f"{engine.runtime} answers at {where}")
        return Probe(
            False,
            "no docker or podman engine answers on this host",
            "sudo systemctl start docker (or install podman), or use --backend qemu",
        )


def _docker() -> Engine | None:
    docker_host = os.environ.get("DOCKER_HOST", "")
    docker_sock = docker_host.removeprefix("unix://") if docker_host.startswith("unix://") else "/var/run/docker.sock"
    if (not docker_host or docker_host.startswith("unix://")) and ping_unix(docker_sock):
        return Engine("docker", f"unix://{docker_sock}")
    return None


def _podman() -> Engine | None:
    for sock in _podman_sockets():
        if ping_unix(sock):
            return Engine("podman", f"unix://{sock}")
    if _which("podman") and _quiet(["podman", "info", "--format", "{{.Host.Arch}}"], timeout=15):
        return Engine("podman", "")
    return None


def _which(name: str) -> str | None:
    import shutil  # ~4 ms with its own imports; most commands never look a program up

    return shutil.which(name)


def _podman_sockets() -> list[str]:
    out = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        out.append(os.path.join(runtime, "podman", "podman.sock"))
    out.append("/run/podman/podman.sock")
    return out


def _quiet(argv: list[str], timeout: float = 5) -> str | None:
    """Run a probe command through the one runner; None on any failure. Probes never raise."""
    from devenv.errors import DevenvError
    from devenv.runner import run

    try:
        result = run(argv, timeout=timeout)
    except (DevenvError, OSError):
        return None
    return result.stdout if result.ok else None


@functools.cache
def current() -> Host:
    return Host()


def default_backend(host: Host, arch: str = "auto") -> str:
    """The one place that decides which backend a new instance uses by default.

    Linux: the native engine when one answers (no VM needed), else QEMU.
    Inside a WSL distro the same rule holds (an engine in the distro is native).
    macOS: QEMU (hvf). Windows: WSL2 when wsl.exe exists, else Hyper-V.
    A guest `arch` other than the host's: QEMU everywhere, the one backend that emulates a CPU.
    """
    if arch not in ("auto", host.arch):
        return "qemu"
    if host.system == "linux":
        if host.native_engine.ok:
            return "native"
        return "qemu"
    if host.system == "macos":
        return "qemu"
    if host.system == "windows":
        return "wsl2" if host.wsl_exe.ok else "hyperv"
    return "qemu"
