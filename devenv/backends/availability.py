"""Can this host run a backend? One pure function per backend, read by `doctor`.

These take a Host (real or a test double) and never import the backend module,
so `doctor` works even when an optional dependency is missing and can say so.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

from devenv.hostos import Host, Probe


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def native(host: Host) -> Probe:
    return host.native_engine


def qemu(host: Host) -> Probe:
    q = host.qemu
    if not q.ok:
        return q
    from devenv.errors import UsageError

    try:
        accel, fallback = launch_accelerator(host)
    except UsageError as e:  # a mistyped DEVENV_QEMU_ACCEL: doctor's row says so, the rest of the report stands
        return Probe(False, f"{q.detail}; {e.message}", e.hint)
    if fallback is not None:
        return Probe(True, f"{q.detail}; accelerator {accel}: {fallback.detail}", fallback.fix)
    return Probe(True, f"{q.detail}; accelerator {accel}")


def launch_accelerator(host: Host) -> tuple[str, Probe | None]:
    """What `devenv start` ends up running under, for doctor (it launches QEMU once: up to ~1 s).

    auto's pick, unless QEMU stops at once under it: then tcg, as start falls
    back, and the failed probe saying why.
    """
    accel, source = accelerator_choice(host)
    if source == "auto" and accel != "tcg" and host.qemu.ok:
        runs = host.accelerator_runs(accel)
        if not runs.ok:
            return "tcg", runs
    return accel, None


ACCEL_ENV = "DEVENV_QEMU_ACCEL"


def accelerator(host: Host, configured: str = "auto", guest_arch: str | None = None) -> str:
    """The accelerator to use: DEVENV_QEMU_ACCEL, else devenv.toml's, else hvf, kvm, whpx, tcg.

    The variable wins over the config for hosts where a probe says yes but the
    accelerator does not work (nested KVM that hangs at boot, for example).
    A guest of another architecture than the host's gets tcg unless one of them
    names something else (which the backend then refuses).
    """
    return accelerator_choice(host, configured, guest_arch)[0]


def accelerator_choice(host: Host, configured: str = "auto", guest_arch: str | None = None) -> tuple[str, str]:
    """accelerator() and who chose it: ACCEL_ENV, "config", or "auto" (the probes)."""
    for choice, source in ((os.environ.get(ACCEL_ENV, "").strip().lower(), ACCEL_ENV), (configured, "config")):
        if choice and choice != "auto":
            if source == ACCEL_ENV:
                _check_accel_env(choice)
            return choice, source
    if guest_arch is not None and guest_arch != host.arch:
        return "tcg", "auto"
    for accel, probe in (("hvf", host.hvf), ("kvm", host.kvm), ("whpx", host.whpx)):
        if probe.ok:
            return accel, "auto"
    return "tcg", "auto"


def _check_accel_env(value: str) -> None:
    """devenv.toml's accelerator is checked with the file; the variable is checked here, before QEMU sees it."""
    from devenv.config import ACCELERATORS
    from devenv.errors import UsageError

    if value not in ACCELERATORS:
        raise UsageError(
            f"{ACCEL_ENV}={value} is not an accelerator",
            f"use one of {', '.join(ACCELERATORS)}, or unset {ACCEL_ENV}",
        )


def libvirt(host: Host) -> Probe:
    """Which libvirt daemon an instance would use here, and why (and, for the default, why not the other)."""
    if host.system != "linux":
        return Probe(False, "the libvirt backend is for Linux hosts")
    if not _has_module("libvirt"):
        return Probe(
            False,
            "the Python package libvirt-python is not installed",
            "sudo apt-get install libvirt-dev pkg-config && pip install 'devenv[libvirt]'",
        )
    from devenv.backends.drivers.libvirturi import DNSMASQ_FIX, IPTABLES_FIX, SESSION, SYSTEM, choose, locate

    choice = choose("")
    where = locate(choice.uri)
    if where.remote:
        if where.driver != "qemu" or where.path != "/system":
            return Probe(
                False,
                f"{choice.uri} ({choice.why}): devenv runs domains on a remote host's qemu system daemon only",
                f'set libvirt_uri = "qemu+ssh://USER@HOST/system" in devenv.toml, or LIBVIRT_DEFAULT_URI={SESSION}',
            )
        return Probe(
            True,
            f"{choice.uri} ({choice.why}): a daemon on {where.host or 'the network'}, the guest on its NAT network"
            f" `default`, reached with `ssh -W` through {where.destination or where.host}",
        )
    if choice.uri not in (SESSION, SYSTEM):
        return Probe(
            False,
            f"{choice.uri} ({choice.why}): devenv runs domains on {SESSION}, {SYSTEM} or a remote system daemon",
            f'set libvirt_uri = "{SESSION}" in devenv.toml, or LIBVIRT_DEFAULT_URI={SESSION}',
        )
    if choice.uri == SYSTEM:
        # its NAT network `default` needs both on this host (the daemon says so too, when it starts the network)
        for program, fix in (("dnsmasq", DNSMASQ_FIX), ("iptables", IPTABLES_FIX)):
            if not _which(program):
                return Probe(False, f"{SYSTEM} ({choice.why}), but {program} for its NAT network is missing", fix)
        return Probe(True, f"{SYSTEM} ({choice.why}), the guest on its NAT network `default`")
    if choice.uri == SESSION and not any(_which(d) for d in ("libvirtd", "virtqemud")):
        return Probe(
            False,
            f"{SESSION} ({choice.why}), but no libvirt daemon is installed to start",
            "sudo apt-get install libvirt-daemon-system (Fedora: dnf install libvirt-daemon-kvm)",
        )
    return Probe(True, f"{choice.uri} ({choice.why}), user-mode networking, SSH on a 127.0.0.1 port")


def _which(program: str) -> bool:
    import shutil

    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None


def wsl2(host: Host) -> Probe:
    """wsl.exe, then what it says of itself: WSL's version and the default version, or what keeps WSL2 off."""
    found = host.wsl_exe
    if not found.ok:
        return found
    from devenv.backends.drivers.wslexe import Wsl, probe

    return probe(Wsl(exe=found.detail))


def hyperv(host: Host) -> Probe:
    if host.system == "windows":
        return host.hyperv
    if not _has_module("winrm"):
        return Probe(
            False,
            "not Windows, and pywinrm (for a remote Hyper-V host) is not installed",
            "pip install 'devenv[winrm]' and set hyperv_host in devenv.toml",
        )
    return Probe(False, "not Windows; a remote Hyper-V host needs `hyperv_host`, which is not configured")


# Lima's minimumQemuVersion (pkg/driver/qemu/qemu.go) on macOS: Apple Silicon needs 8.2.1 (qemu issue 1990);
# an Intel Mac needs 7.0 and is advised 8.2.1.
MACOS_QEMU_REQUIRED = {"aarch64": (8, 2, 1), "x86_64": (7, 0, 0)}
MACOS_QEMU_ADVISED = (8, 2, 1)


def accelerators_listed(accel_help: str) -> list[str]:
    """The names `qemu-system-* -M none -accel help` lists, below its "Accelerators supported" line."""
    return [line.strip() for line in accel_help.splitlines()[1:] if line.strip()]


def macos_checks(
    host_arch: str, hv_support: str | None, version_out: str | None, accel_help: str | None
) -> list[tuple[str, Probe]]:
    """What a Mac needs for hvf, from the outputs of `sysctl -n kern.hv_support`, `qemu --version`, `-accel help`.

    Pure, so each answer is tested against recorded outputs; macos() runs the
    commands. The last row says what another architecture's guest costs: it
    is emulated (TCG) whatever the Mac, and Rosetta is not used (only
    Virtualization.framework offers it to Linux guests, and devenv runs QEMU).
    """
    from devenv.hostos import parse_qemu_version

    rows: list[tuple[str, Probe]] = []
    hv = (hv_support or "").strip()
    if hv == "1":
        rows.append(("hvf", Probe(True, "kern.hv_support = 1: Hypervisor.framework runs guests of this Mac's arch")))
    else:
        said = f"kern.hv_support = {hv}" if hv else "sysctl kern.hv_support did not answer"
        rows.append(
            (
                "hvf",
                Probe(
                    False,
                    f"{said}: no Hypervisor.framework here (a macOS VM without nested virtualisation, such as a CI"
                    " runner); guests run under tcg, several times slower",
                    "run devenv on the Mac itself, not in a VM on it",
                ),
            )
        )
    version = parse_qemu_version(version_out or "")
    required = MACOS_QEMU_REQUIRED.get(host_arch, MACOS_QEMU_ADVISED)
    dotted = ".".join(map(str, required))
    if version is None:
        rows.append(
            ("qemu version", Probe(False, "QEMU's version could not be read (`--version`)", "brew install qemu"))
        )
    elif version < required:
        shown = ".".join(map(str, version))
        why = " (hvf on Apple Silicon: qemu issue 1990)" if host_arch == "aarch64" else ""
        rows.append(
            (
                "qemu version",
                Probe(
                    False, f"QEMU {shown} is older than {dotted}, the oldest that works here{why}", "brew upgrade qemu"
                ),
            )
        )
    else:
        shown = ".".join(map(str, version))
        advice = "brew upgrade qemu" if version < MACOS_QEMU_ADVISED else ""
        note = f" (older than {'.'.join(map(str, MACOS_QEMU_ADVISED))}, which Lima advises)" if advice else ""
        rows.append(("qemu version", Probe(True, f"QEMU {shown}{note}", advice)))
    if accel_help is None:
        rows.append(("qemu accelerators", Probe(False, "`-accel help` did not answer", "brew reinstall qemu")))
    else:
        listed = accelerators_listed(accel_help)
        names = ", ".join(listed) or "none"
        if "hvf" in listed:
            rows.append(("qemu accelerators", Probe(True, f"QEMU lists hvf (-accel help: {names})")))
        else:
            rows.append(
                (
                    "qemu accelerators",
                    Probe(
                        False,
                        f"QEMU does not list hvf (-accel help: {names}): it was built without it",
                        "brew reinstall qemu (Homebrew's QEMU has hvf)",
                    ),
                )
            )
    other = "x86_64" if host_arch == "aarch64" else "aarch64"
    native = "aarch64" if host_arch == "aarch64" else "x86_64"
    rows.append(
        (
            f"{other} guests",
            Probe(
                True,
                f"emulated (tcg): several times slower than {native} guests under hvf; Rosetta is not used"
                " (QEMU cannot use it)",
            ),
        )
    )
    return rows


def macos(host: Host) -> list[tuple[str, Probe]]:
    """macos_checks with this Mac's own outputs (three commands, ~0.1 s)."""
    from devenv.hostos import _quiet

    binary = host.qemu_binary
    return macos_checks(
        host.arch,
        _quiet(["sysctl", "-n", "kern.hv_support"]),
        _quiet([binary, "--version"]) if binary else None,
        _quiet([binary, "-M", "none", "-accel", "help"]) if binary else None,
    )


CHECKS: dict[str, Callable[[Host], Probe]] = {
    "native": native,
    "qemu": qemu,
    "libvirt": libvirt,
    "wsl2": wsl2,
    "hyperv": hyperv,
}
