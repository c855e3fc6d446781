"""QEMU as a process: its pid, QMP's word on the VM, and the host port its user-mode net gives sshd.

Nothing here launches QEMU (qemu.py does); these are the reads and small
acts every part of the driver shares, and the tests call directly.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from devenv import paths
from devenv.errors import DevenvError

# QMP run states (query-status) in which the guest does not run although QEMU does, and what to say.
# Left out: running; prelaunch and the transient migration states, which are QEMU's own business.
STOPPED_RUN_STATES = {
    "paused": "the VM is paused (QEMU's `stop`, or a debugger)",
    "io-error": "QEMU paused the VM because a disk write failed: is the host's disk full?",
    "suspended": "the guest suspended itself to RAM",
    "internal-error": "QEMU stopped the VM on an internal error (see qemu.log)",
    "guest-panicked": "the guest kernel panicked (see the console log)",
    "watchdog": "the guest's watchdog fired",
    "shutdown": "the guest shut down but QEMU stays",
    "postmigrate": "the guest was saved but QEMU did not quit (an interrupted suspend)",
    "inmigrate": "a restore of the suspended guest did not finish",
}
RESUMABLE = {"paused", "io-error", "suspended", "postmigrate"}  # QMP `cont` (or system_wakeup) lets these run on


def read_pid(inst_dir: Path) -> int | None:
    try:
        return int((inst_dir / paths.QEMU_PID).read_text().strip())
    except (OSError, ValueError):
        return None


def qmp_socket(inst_dir: Path) -> Path:
    """QEMU's QMP socket: in the instance dir, or in the short folder when that path would not fit sun_path."""
    from devenv.hostagent.wire import socket_path

    return socket_path(inst_dir, paths.QMP_SOCK)


def relay_socket(inst_dir: Path) -> Path:
    """The SSH relay's virtio-serial port, placed as qmp_socket is."""
    from devenv.hostagent.wire import socket_path

    return socket_path(inst_dir, paths.RELAY_SOCK)


def pid_is_ours(pid: int, inst_dir: Path) -> bool:
    """Alive, and really our QEMU (pidutil.runs_as): its command line names this instance's QMP socket."""
    from devenv.pidutil import runs_as

    return runs_as(pid, os.fsencode(qmp_socket(inst_dir)))


def running_pid(inst_dir: Path) -> int | None:
    pid = read_pid(inst_dir)
    return pid if pid is not None and pid_is_ours(pid, inst_dir) else None


def resume_vm(qmp: Path, state: str) -> None:
    """Let a VM in one of the RESUMABLE states run on: a suspended guest is woken, a paused one continued."""
    from devenv.backends.drivers.qmp import Qmp

    with Qmp(qmp) as q:
        q.command("system_wakeup" if state == "suspended" else "cont")


def vm_run_state(qmp: Path, timeout: float = 2.0) -> str | None:
    """QEMU's own word on the VM (QMP query-status), None when QMP does not answer."""
    from devenv.backends.drivers.qmp import Qmp

    try:
        with Qmp(qmp, timeout=timeout) as q:
            status = q.command("query-status").get("status")
    except (DevenvError, OSError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_free(port: int) -> bool:
    """Could QEMU's user-mode net listen on 127.0.0.1:port now? It binds with SO_REUSEADDR, so do we.

    Not on Windows, where SO_REUSEADDR would let the bind share a port in use.
    """
    with socket.socket() as s:
        if os.name != "nt":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ssh_port(inst_dir: Path) -> int | None:
    """The host port QEMU forwards to the guest's sshd (ssh.port), None before the first launch."""
    try:
        return int((inst_dir / paths.SSH_PORT).read_text().strip())
    except (OSError, ValueError):
        return None


def ssh_port_for(inst_dir: Path) -> int:
    """The SSH port the instance had last time while it is free, else a new one.

    So `devenv ssh-config` pasted into ~/.ssh/config, or an editor's
    remote-SSH host, stays right across restarts (ssh.config is rewritten
    each start all the same).
    """
    previous = ssh_port(inst_dir) or 0
    return previous if 1024 <= previous <= 65535 and port_free(previous) else free_port()


def ssh_port_was_taken(log: Path, port: int) -> bool:
    """QEMU's log says it could not listen on the SSH forward's port (another program has it)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return "Could not set up host forwarding rule" in text and f"127.0.0.1:{port}-:22" in text


def has_9p(binary: str) -> bool:
    from devenv.runner import run

    try:
        out = run([binary, "-device", "help"], timeout=10)
    except (DevenvError, OSError):
        return False
    return "virtio-9p-pci" in out.stdout + out.stderr


def host_tsc_khz(cpuinfo: str = "/proc/cpuinfo", cpufreq: str = "/sys/devices/system/cpu/cpu0/cpufreq") -> int | None:
    """The host's TSC rate in kHz, which is the rate of a TCG guest's TSC (QEMU reads the host's counter).

    Known without privileges only on an x86_64 Linux host whose `cpu MHz` in
    /proc/cpuinfo is the TSC's rate: a constant TSC whose rate the kernel was
    told rather than measured (tsc_known_freq: CPUID or the hypervisor; a
    measured cpu_khz can be off from the TSC by a few percent), and neither
    frequency scaling nor APERF/MPERF (with either, `cpu MHz` is the core's
    current clock). That is the usual virtual machine or CI runner, where TCG is
    what runs; elsewhere None.
    """
    if os.path.exists(cpufreq):
        return None
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            first = f.read().split("\n\n", 1)[0]
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = set(fields.get("flags", "").split())
    if not {"constant_tsc", "tsc_known_freq"} <= flags or "aperfmperf" in flags:
        return None
    try:
        mhz = float(fields.get("cpu MHz", ""))
    except ValueError:
        return None
    return round(mhz * 1000) if mhz > 0 else None
