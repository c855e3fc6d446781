"""The build's last step in the guest: the local busybox image imported into the new disk's dockerd.

Why at build time: an instance's first boot that imports it waits for dockerd
to be up and then spends ~3 s of its CPU under TCG on the import, on the path
to ready, where every later boot waits for neither (the engine's socket
answers while dockerd still starts). So the image built here boots once under
QEMU, on its own raw disk before it becomes the qcow2, with the kernel's init
set to provisioning/image/bake-local-image.sh: no systemd, nothing of an
instance, only containerd, dockerd and `docker import`. Its console says how
it went (DEVENV-BAKED ok | failed step=NAME).

When it cannot run, the build goes on and says so, and the first boot
imports the image as before (provisioning/engines/common.sh): an image for
another architecture than the host's (its QEMU would emulate a foreign CPU:
minutes, for a first boot of that image that is emulated anyway), no
qemu-system binary, or an image without docker. When it runs and fails with
every accelerator, the build fails: the engine of that disk did not start.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from devenv.errors import ImageError
from devenv.hostos import normalize_arch
from devenv.runner import run

BAKE_INIT = "/usr/local/lib/devenv/bake-local-image.sh"
RESULT_PREFIX = "DEVENV-BAKED "
ACCEL_ENV = "DEVENV_QEMU_ACCEL"
TIMEOUT = 600.0  # TCG on a 2-core machine: ~20 s; a hung guest must not hang the build
SILENT_AFTER = 60.0  # the kernel's first line comes within a second or two, even under TCG
MACHINES = {"x86_64": "q35", "aarch64": "virt"}


def host_arch() -> str:
    return normalize_arch(platform.machine())


def accelerators(arch: str) -> list[str]:
    """DEVENV_QEMU_ACCEL alone when set; else KVM when this user can open it, then TCG.

    TCG is always the fallback: a KVM that opens but crashes QEMU (nested
    virtualisation) must not fail a build that TCG finishes.
    """
    chosen = os.environ.get(ACCEL_ENV, "").strip().lower()
    if chosen and chosen != "auto":
        return [chosen]
    if arch == host_arch() and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ["kvm", "tcg"]
    return ["tcg"]


def skip_reason(arch: str, root_has_script: bool) -> str | None:
    """Why the bake does not run here, or None when it does."""
    if not root_has_script:
        return "the image has no docker"
    if arch != host_arch():
        return f"a {arch} image on a {host_arch()} host; its first boot imports it"
    if shutil.which(f"qemu-system-{arch}") is None:
        return f"qemu-system-{arch} is not installed; the first boot imports it"
    return None


def qemu_argv(arch: str, accel: str, raw: Path, kernel: Path, initrd: Path, cmdline: str, console: Path) -> list[str]:
    cpu = "host" if accel in ("kvm", "hvf") else "max"
    return [
        f"qemu-system-{arch}",
        "-machine",
        f"{MACHINES[arch]},accel={accel}",
        "-cpu",
        cpu,
        "-smp",
        "2",
        "-m",
        "1024",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-net",
        "none",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        f"{cmdline} init={BAKE_INIT} panic=-1",
        "-drive",
        f"file={str(raw).replace(',', ',,')},format=raw,if=virtio",
        "-serial",
        f"file:{console}",
    ]


def outcome(console_text: str) -> str | None:
    """The text after DEVENV-BAKED on the console, or None when the line never came."""
    for line in console_text.splitlines():
        at = line.find(RESULT_PREFIX)
        if at >= 0:
            return line[at + len(RESULT_PREFIX) :].strip()
    return None


def run_qemu(argv: list[str], console: Path, errors: Path, *, timeout: float, silent_after: float) -> str:
    """QEMU to its exit: "" when it exited 0, else why not.

    A guest that has printed nothing after `silent_after` s is killed: the
    kernel prints at once (the bake boots without `quiet`), so silence is an
    accelerator that hangs at boot (nested KVM does), not a slow guest.
    """
    started = time.monotonic()
    try:
        with errors.open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    except OSError as e:
        return f"cannot run {argv[0]}: {e}"
    why = ""
    while proc.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            why = f"did not finish within {timeout:g} s"
        elif elapsed > silent_after and (not console.exists() or console.stat().st_size == 0):
            why = f"the guest printed nothing in {silent_after:g} s"
        if why:
            proc.kill()
            proc.wait()
            return why
        time.sleep(0.2)
    if proc.returncode != 0:
        tail = errors.read_text(errors="replace").strip().splitlines()[-3:]
        return f"QEMU exited with {proc.returncode}: " + " ".join(tail)
    return ""


def bake(
    arch: str,
    raw: Path,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    work: Path,
    *,
    timeout: float = TIMEOUT,
    silent_after: float = SILENT_AFTER,
) -> str:
    """Run the bake on `raw`; returns the accelerator that did it. Raises ImageError when every one failed."""
    failures: list[str] = []
    loud = " ".join(word for word in cmdline.split() if word != "quiet")
    for accel in accelerators(arch):
        console, errors = work / f"bake-{accel}.log", work / f"bake-{accel}.qemu.log"
        console.unlink(missing_ok=True)
        argv = qemu_argv(arch, accel, raw, kernel, initrd, loud, console)
        qemu_error = run_qemu(argv, console, errors, timeout=timeout, silent_after=silent_after)
        text = console.read_text(errors="replace") if console.exists() else ""
        said = outcome(text)
        if said == "ok":
            return accel
        tail = "\n".join(text.strip().splitlines()[-8:])
        failures.append(f"{accel}: {said or qemu_error or 'no result on the console'}\n{tail}".strip())
    raise ImageError(
        "importing the local devenv/busybox image into the new disk's dockerd failed:\n" + "\n".join(failures),
        "its console output is above; provisioning/image/bake-local-image.sh is the guest's side",
    )


def run_check(raw: Path) -> None:
    """e2fsck after the bake: the disk every instance starts from must be clean."""
    result = run(["e2fsck", "-f", "-p", str(raw)])
    if result.returncode not in (0, 1):  # 1: errors corrected (a journal replayed)
        raise ImageError(
            f"the image's filesystem is damaged after the bake (e2fsck exit {result.returncode}):\n{result.tail()}",
            "build again with --force",
        )
