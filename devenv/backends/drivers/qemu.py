"""The QEMU driver: one detached QEMU process per instance, watched through its pid file and QMP.

It boots the instance's overlay disk with its first-boot seed under the
accelerator qemuaccel picks (falling back to tcg when auto's pick fails),
forwards the guest's sshd to a 127.0.0.1 port through QEMU's user-mode net,
writes the console to serial.log, and stops the VM with ACPI, then QMP quit,
then a kill. A suspend saves the running guest beside its disk and the next
launch restores it (qemusave.py: how, and when a saved guest is not loaded).
Everything after the launch (readiness, the host agent, exec) is the VM
backend's (devenv/backends/vm), the same for every hypervisor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devenv import hostdisk, paths
from devenv.backends.base import InstanceRef, Snapshot, StepReporter
from devenv.backends.drivers import qemuaccel, qemuhost, qemusave, qemusnap
from devenv.backends.drivers.qemuaccel import AcceleratorFailed, accel_choice, machine
from devenv.backends.drivers.qemuargs import VmSpec, build_argv, kernel_cmdline, memory_warning
from devenv.backends.drivers.qemuproc import (
    RESUMABLE,
    STOPPED_RUN_STATES,
    qmp_socket,
    relay_socket,
    resume_vm,
    running_pid,
    ssh_port,
    ssh_port_for,
    ssh_port_was_taken,
    vm_run_state,
)
from devenv.backends.vm.driver import (
    AgentPlan,
    Boot,
    DriverFeatures,
    Endpoint,
    VmState,
    require_off,
    tail,
    with_console,
)
from devenv.errors import CommandFailed, DevenvError, DiskFull, StateError, SuspendRefused, Timeout
from devenv.hostagent.wire import secure_socket_dirs
from devenv.progress import DownloadProgress
from devenv.sizes import format_measured

HOST_ADDRESS = "10.0.2.2"  # the host as QEMU user networking shows it to the guest
IMAGE_RECORD = "image.json"  # which base image (kernel, initrd, cmdline) this instance boots
QEMU_LOG = "qemu.log"  # QEMU's own stdout/stderr
QEMU_ARGV = "qemu.argv"  # the command line of the last launch: a later start reads its accelerator
POWER_BUTTON_EVERY = 5.0  # s between presses while stop waits: one made during early boot is lost


@dataclass(frozen=True)
class _Boot:
    """What every QEMU launch of one start shares, the first one and a fallback's."""

    inst: InstanceRef
    binary: str
    image: dict[str, str]
    arch: str


class _Misfit(Exception):
    """The saved guest does not fit the VM a launch would run now; the message says how."""


class QemuDriver:
    name = "qemu"
    features = DriverFeatures(
        mounts=("9p", "sshfs"),
        fast_ports="devenv.backends.drivers.qemuports:for_instance",
        accelerators=("kvm", "hvf", "whpx", "tcg"),
        # QEMU keeps a guest's RAM in a file only where it has memory-backend-file (POSIX hosts)
        suspend=sys.platform != "win32",
        snapshots=True,  # qcow2 snapshots inside the overlay (qemusnap.py)
    )
    host_address = HOST_ADDRESS

    # -- what the VM backend asks ---------------------------------------------

    def check(self, inst: InstanceRef) -> None:
        boot = self._boot_of(inst)
        accel, _ = accel_choice(inst, boot.arch)
        machine(inst, boot.arch, bool(boot.image.get("kernel")), accel, creating=False)

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        from devenv.images import catalog, overlay

        arch = self._arch(inst)
        qemuhost.check_qemu(arch)
        step(f"find image {inst.config.image}")
        record = catalog.resolve(inst.config.image, arch, progress=DownloadProgress(f"pulling {inst.config.image}"))
        accel, _ = accel_choice(inst, record.arch)
        machine(inst, record.arch, record.kernel is not None, accel, creating=True)  # before any disk
        step(f"create a {inst.config.disk // 1024**3} GiB overlay disk on {record.name}")
        overlay.create_overlay(record.disk, inst.dir / paths.DISK, inst.config.disk)
        image = {
            "name": record.name,
            "arch": record.arch,
            "base": str(record.disk),
            "kernel": str(record.kernel) if record.kernel else None,
            "initrd": str(record.initrd) if record.initrd else None,
            "cmdline": record.cmdline,
        }
        (inst.dir / IMAGE_RECORD).write_text(json.dumps(image, indent=2) + "\n")

    def delete(self, inst: InstanceRef) -> None:
        """QEMU keeps nothing outside the instance directory but the sockets that had to go to the short folder."""
        from devenv.hostagent.wire import in_short_dir

        for sock in (qmp_socket(inst.dir), relay_socket(inst.dir)):
            if in_short_dir(sock):
                sock.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # the host agent's sockets may still be there: it stops later
                    sock.parent.rmdir()

    def launch(self, inst: InstanceRef, step: StepReporter) -> Boot:
        boot = self._boot_of(inst)
        accel, source = accel_choice(inst, boot.arch)
        chosen, extra_cmdline = machine(inst, boot.arch, bool(boot.image.get("kernel")), accel, creating=False)
        if qemusave.read_record(inst.dir) is not None:
            resumed = self._restore(boot, step, accel, chosen, extra_cmdline)
            if resumed is not None:
                return resumed
        qemusave.discard(inst.dir)  # a cold boot starts from a new, empty RAM file
        accel = self._launch_or_fall_back(boot, step, (accel, source), chosen, extra_cmdline)
        return self._watch(boot, accel, source)

    def attach(self, inst: InstanceRef, step: StepReporter) -> Boot:
        boot = self._boot_of(inst)
        accel, source = accel_choice(inst, boot.arch)
        step(f"QEMU is already running (pid {running_pid(inst.dir)})")
        self._resume_if_stopped(inst, step)
        return self._watch(boot, self._running_accel(inst) or accel, source)

    def suspend(self, inst: InstanceRef, step: StepReporter) -> None:
        """Save the guest's devices (its RAM stays in its file), quit QEMU, then write the record.

        Until the record is written nothing counts as saved: a failure before
        it lets the guest run on (SuspendRefused), and a crash leaves a VM
        that `start` resumes (postmigrate) or none at all, booted cold.
        """
        from devenv.backends.drivers.qmp import Qmp

        pid = running_pid(inst.dir)
        if pid is None:
            raise SuspendRefused(f"the VM of `{inst.name}` is not running", f"devenv start -n {inst.name}")
        argv = self._argv_of(inst)
        if argv is None or not qemusave.uses_ram_file(argv):
            raise SuspendRefused(
                f"the VM of `{inst.name}` was launched without its memory in a file, so it cannot be saved",
                "a VM launched by an earlier devenv: `devenv stop --shutdown` this once; later ones can be suspended",
            )
        step("save the guest (its devices; its memory stays in its file)")
        qmp = qmp_socket(inst.dir)
        try:
            with Qmp(qmp, timeout=30) as q:
                pinned = qemusave.versioned_machine(q, argv[argv.index("-machine") + 1].partition(",")[0])
                qemusave.save(q, inst.dir)
                with contextlib.suppress(DevenvError, OSError):  # QEMU may close QMP as it quits
                    q.command("quit")
        except qemusave.MigrationFailed as e:
            step.fail()
            raise SuspendRefused(f"{e}; the VM runs on", _suspend_hint(str(e), inst.name)) from None
        except (DevenvError, OSError) as e:
            step.fail()
            if not (inst.dir / qemusave.SAVED_STATE).exists():
                raise SuspendRefused(f"QEMU did not answer while saving the guest: {e}", "see qemu.log") from None
        if not self._wait_exit(inst, pid, 10):  # saved and stopped: nothing the guest does is lost by a kill
            self.force_off(inst, step)
        qemusave.write_record(inst.dir, argv, pinned, inst.dir / paths.DISK)

    def discard_saved(self, inst: InstanceRef) -> None:
        qemusave.discard(inst.dir)

    # -- snapshots of the overlay (qemusnap.py); the VM backend asks create and restore only of a VM that is off

    def snapshot_create(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        step(f"take the qcow2 snapshot {name} of {paths.DISK}")
        qemusnap.create(inst.dir / paths.DISK, name)

    def snapshot_list(self, inst: InstanceRef) -> list[Snapshot]:
        return qemusnap.listing(inst.dir / paths.DISK)

    def snapshot_restore(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        step(f"apply the qcow2 snapshot {name} to {paths.DISK}")
        qemusnap.restore(inst.dir / paths.DISK, name, inst.name)

    def snapshot_delete(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        """Only while the VM is off: QEMU holds the disk's lock while it runs, and a saved guest its mtime."""
        require_off(self.state(inst), inst, "delete a snapshot")
        step(f"delete the qcow2 snapshot {name} of {paths.DISK}")
        qemusnap.delete(inst.dir / paths.DISK, name, inst.name)

    def power_down(self, inst: InstanceRef, step: StepReporter, timeout: float) -> bool:
        """Press the power button every POWER_BUTTON_EVERY s until QEMU exits; False after `timeout`.

        A guest hears the button only once something listens for it (systemd-logind):
        a press during early boot is lost, and a single press then waited out the
        whole timeout (seen: `devenv stop` just after a Ctrl-C'd start, 90 s).
        Pressing again while the guest shuts down does nothing more. A paused VM
        is let run first, so it can shut down cleanly; a halted one cannot hear it.
        """
        from devenv.backends.drivers.qmp import Qmp

        pid = running_pid(inst.dir)
        if pid is None:
            return True
        qmp = qmp_socket(inst.dir)
        run_state = vm_run_state(qmp)
        if run_state in ("paused", "suspended"):
            step(f"resume the VM ({run_state}) to shut it down")
            with contextlib.suppress(DevenvError, OSError):
                resume_vm(qmp, run_state)
        elif run_state in STOPPED_RUN_STATES:
            return False  # io-error, a panic: the guest cannot act on the power button
        step(f"ACPI power-down; up to {timeout:.0f} s for the guest to shut down")
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(DevenvError, OSError), Qmp(qmp) as q:
                q.command("system_powerdown")
            left = deadline - time.monotonic()
            if self._wait_exit(inst, pid, min(POWER_BUTTON_EVERY, max(left, 0.0))):
                return True
            if time.monotonic() >= deadline:
                step.fail()
                return False

    def force_off(self, inst: InstanceRef, step: StepReporter) -> None:
        """QMP quit, then a kill."""
        from devenv.backends.drivers.qmp import Qmp

        pid = running_pid(inst.dir)
        if pid is None:
            return
        step("QEMU quit (QMP)")
        with contextlib.suppress(DevenvError, OSError), Qmp(qmp_socket(inst.dir), timeout=3) as q:
            q.command("quit")
        if self._wait_exit(inst, pid, 10):
            return
        step.fail()
        step(f"kill QEMU (pid {pid})")
        with contextlib.suppress(ProcessLookupError, PermissionError):  # gone, or not ours to kill: said below
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows: SIGTERM is TerminateProcess
        if not self._wait_exit(inst, pid, 10):
            raise StateError(
                f"QEMU (pid {pid}) of `{inst.name}` did not stop, even when killed",
                f"see `ps -p {pid}`; it may be stuck in the kernel (a hung disk or device)",
            )

    def state(self, inst: InstanceRef) -> VmState:
        """From the pid file and QMP: QEMU can run while its guest does not (paused on a full disk, a panic)."""
        pid = running_pid(inst.dir)
        if pid is None:
            record = qemusave.read_record(inst.dir)
            if record is not None:
                saved = {"saved_at": record.get("saved_at"), "machine": record.get("machine")}
                return VmState("saved", "the guest is suspended to disk", details=saved)
            return VmState("off")
        details: dict[str, object] = {"pid": pid}
        run_state = vm_run_state(qmp_socket(inst.dir))
        if run_state in STOPPED_RUN_STATES:
            details["qemu_status"] = run_state
            kind = "paused" if run_state in RESUMABLE else "halted"
            reason = STOPPED_RUN_STATES[run_state]
            if run_state == "io-error":
                reason = self._io_error(inst, details)
            return VmState(kind, reason, run_state, details)
        return VmState("running", details=details)

    @staticmethod
    def _io_error(inst: InstanceRef, details: dict[str, object]) -> str:
        """Which disk's write failed and why (QMP query-block's io-status), with the room left where it lives.

        QEMU pauses the guest on the failed write (its default werror=enospc
        for a full disk) and retries it on `cont`, so the guest never sees the
        error: nothing is lost while the user frees space.
        """
        from devenv.backends.drivers.qmp import Qmp

        try:
            with Qmp(qmp_socket(inst.dir), timeout=2.0) as q:
                blocks = q.command("query-block")
        except (DevenvError, OSError):
            return STOPPED_RUN_STATES["io-error"]
        for block in blocks if isinstance(blocks, list) else []:
            status, file = block.get("io-status"), (block.get("inserted") or {}).get("file")
            if status not in ("nospace", "failed") or not isinstance(file, str):
                continue
            details["io_error"] = f"{file} ({status})"
            if status == "failed":
                return f"QEMU paused the VM because writing {file} failed on the host (see `dmesg`)"
            try:
                free = hostdisk.free_bytes(Path(file))
            except OSError:
                return f"QEMU paused the VM: the host's disk holding {file} is full"
            details["host_free"] = free
            return (
                f"QEMU paused the VM: the host's disk holding {file} is full ({format_measured(free)} free);"
                " the guest waits, nothing is lost: free space there"
            )
        return STOPPED_RUN_STATES["io-error"]

    def endpoint(self, inst: InstanceRef) -> Endpoint | None:
        port = ssh_port(inst.dir)
        return None if port is None else Endpoint("127.0.0.1", port)

    def console_log(self, inst: InstanceRef) -> Path:
        return inst.dir / paths.SERIAL_LOG

    def agent_plan(self, inst: InstanceRef) -> AgentPlan:
        return AgentPlan(
            vm_pid_file=inst.dir / paths.QEMU_PID,
            relay_socket=relay_socket(inst.dir),
            memory_file=inst.dir / qemusave.GUEST_RAM if self.features.suspend else None,
        )

    def log_files(self, inst: InstanceRef) -> list[Path]:
        return [inst.dir / QEMU_LOG]

    def failure(
        self, inst: InstanceRef, message: str, hint: str, cls: type[DevenvError] = Timeout, *, exited: bool = False
    ) -> DevenvError:
        """The error with QEMU's own log and the console's last lines.

        `exited`: QEMU is gone. It reports its own errors in qemu.log before it
        exits, so an empty log means a signal: a crash or the OOM killer (seen
        once here: QEMU 7.2 segfaulted under TCG right after launch).
        """
        qemu_log = tail(inst.dir / QEMU_LOG, 8)
        parts = [message]
        if qemu_log:
            parts.append(f"QEMU said:\n{qemu_log}")
        elif exited:
            parts[0] += (
                f", and {inst.dir / QEMU_LOG} is empty: it was killed or crashed"
                " (the host's kernel log, `dmesg`, names a segfault or the OOM killer)"
            )
        return cls(with_console(parts, self.console_log(inst)), hint)

    # -- this instance's QEMU -------------------------------------------------

    def _arch(self, inst: InstanceRef) -> str:
        """The guest's architecture: devenv.toml's `arch`, by default the host's."""
        from devenv.hostos import current

        return current().arch if inst.config.arch == "auto" else inst.config.arch

    @staticmethod
    def image_record(inst: InstanceRef) -> dict[str, str]:
        """The base image this instance boots (image.json, written by create): the one reader of it."""
        try:
            data = json.loads((inst.dir / IMAGE_RECORD).read_text())
        except (OSError, ValueError):
            raise StateError(
                f"instance `{inst.name}` has no image record ({IMAGE_RECORD})",
                f"it was not created completely; `devenv delete -n {inst.name}` and start it again",
            ) from None
        assert isinstance(data, dict)
        return {k: str(v) for k, v in data.items() if v is not None}

    def _boot_of(self, inst: InstanceRef) -> _Boot:
        image = self.image_record(inst)
        arch = image.get("arch") or self._arch(inst)
        return _Boot(inst, qemuhost.check_qemu(arch), image, arch)

    def _watch(self, boot: _Boot, accel: str, source: str) -> Boot:
        """The readiness wait's watch: QEMU still runs and, under a hardware accelerator, its guest too."""
        alive = self._alive_check(boot.inst)
        if accel == "tcg":
            return Boot(emulated=True, watch=alive)

        def to_tcg(step: StepReporter) -> Boot:
            return self._silent_to_tcg(boot, step, accel)

        retry = to_tcg if source == "auto" else None  # named in devenv.toml or the environment: the error stands
        silence = qemuaccel.silence_check(boot.inst, alive, accel, self.failure, retry)
        return Boot(emulated=False, watch=silence, running=alive)

    def _alive_check(self, inst: InstanceRef) -> Callable[[], None]:
        """QEMU still runs, and its guest is not paused on a full disk (asked every 2 s: a boot would wait it out)."""
        next_ask = time.monotonic() + 2.0

        def check() -> None:
            nonlocal next_ask
            if running_pid(inst.dir) is None:
                raise self.failure(
                    inst,
                    "the QEMU process exited while the guest was booting",
                    f"`devenv start -n {inst.name}` boots it again; the console above may say why it stopped",
                    StateError,
                    exited=True,
                )
            if time.monotonic() < next_ask:
                return
            next_ask = time.monotonic() + 2.0
            if vm_run_state(qmp_socket(inst.dir)) == "io-error":
                raise self.failure(
                    inst,
                    f"the guest stopped while booting: {self._io_error(inst, {})}",
                    f"free space there, then `devenv start -n {inst.name}` resumes the boot where it stopped",
                    DiskFull,
                )

        return check

    def _wait_exit(self, inst: InstanceRef, pid: int, timeout: float) -> bool:
        from devenv.backends.drivers.qemuproc import pid_is_ours

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_is_ours(pid, inst.dir):
                return True
            if sys.platform != "win32":
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)  # reap it if the CLI itself started it
            time.sleep(0.2)
        return not pid_is_ours(pid, inst.dir)

    def _resume_if_stopped(self, inst: InstanceRef, step: StepReporter) -> None:
        """A VM QEMU paused (a full disk, `stop`, a suspend) runs on from where it was: nothing is lost."""
        qmp = qmp_socket(inst.dir)
        state = vm_run_state(qmp)
        if state in STOPPED_RUN_STATES and state not in RESUMABLE:  # waiting for a boot would never end
            raise StateError(
                f"{STOPPED_RUN_STATES[state]}: QEMU says `{state}`",
                f"`devenv stop -n {inst.name} && devenv start -n {inst.name}` boots it again",
            )
        if state not in RESUMABLE:
            return
        step(f"resume the VM ({state})")
        resume_vm(qmp, state)
        deadline = time.monotonic() + 10
        while (now := vm_run_state(qmp)) in RESUMABLE and time.monotonic() < deadline:
            time.sleep(0.2)
        # QEMU retries the failed write once the VM runs: with the disk still full it pauses again at once,
        # after a first query may already have said "running"
        settle = time.monotonic() + (2.0 if state == "io-error" else 0.0)
        while now == "running" and time.monotonic() < settle:
            time.sleep(0.2)
            now = vm_run_state(qmp)
        if now == "io-error":
            raise DiskFull(
                f"the VM of `{inst.name}` is still paused: {self._io_error(inst, {})}",
                f"free space there, then `devenv start -n {inst.name}` again resumes it",
            )
        if now != "running":
            raise StateError(
                f"the VM of `{inst.name}` does not run on: QEMU says `{now}`", f"see `devenv logs -n {inst.name}`"
            )

    # -- restoring a suspended guest -----------------------------------------

    def _restore(self, boot: _Boot, step: StepReporter, accel: str, chosen: str, extra: str) -> Boot | None:
        """The saved guest, running again as it was; None (having said why) when it must boot cold.

        The record goes before the guest runs: from its first instruction on,
        the RAM file and the disk move on and the saved devices no longer
        match them.
        """
        from devenv.backends.drivers.qmp import Qmp

        inst = boot.inst
        step("restore the suspended guest")
        try:
            self._launch(boot, accel, chosen, extra, restore=qemusave.read_record(inst.dir))
            with Qmp(qmp_socket(inst.dir), timeout=30) as q:
                qemusave.load(q, inst.dir)
                for name in (qemusave.SAVED_RECORD, qemusave.SAVED_STATE):
                    (inst.dir / name).unlink(missing_ok=True)
                q.command("cont")
        except _Misfit as e:
            why = str(e)
        except (qemusave.MigrationFailed, DevenvError, OSError) as e:
            why = f"QEMU could not load it ({e})"
            self.force_off(inst, step)
        else:
            ran = self._running_accel(inst) or accel
            return dataclasses.replace(self._watch(boot, ran, "named"), resumed=True)
        step.fail()
        sys.stderr.write(
            f"devenv: warning: the suspended guest of `{inst.name}` is not restored: {why}. It boots cold;"
            " its disk holds everything written before the suspend (the guest synced it)\n"
        )
        return None

    # -- launching ------------------------------------------------------------

    def _launch_or_fall_back(
        self, boot: _Boot, step: StepReporter, choice: tuple[str, str], chosen: str, extra_cmdline: str
    ) -> str:
        """Launch QEMU under the chosen accelerator, or under TCG when one auto picked crashes it; which ran."""
        accel, source = choice
        step(f"start QEMU ({accel})")
        try:
            self._launch(boot, accel, chosen, extra_cmdline)
        except AcceleratorFailed as e:
            if source != "auto":
                raise
            step.fail()
            kept = boot.inst.dir / (QEMU_LOG + ".accel")
            self._relaunch_under_tcg(boot, step, qemuaccel.crashed_warning(accel, e.reason, kept))
            return "tcg"
        return accel

    def _silent_to_tcg(self, boot: _Boot, step: StepReporter, accel: str) -> Boot:
        """The guest never printed a line under the accelerator auto picked: QEMU runs, the guest does not.

        Seen on cloud VMs whose KVM opens and runs QEMU but never its guest. The
        guest never reached userspace, so stopping it loses nothing. This start
        and every later one of the instance boot under tcg (ACCEL_HUNG remembers:
        a minute of silence per start would be a tax); removing that file, or
        naming the accelerator, tries it again.
        """
        inst = boot.inst
        (inst.dir / qemuaccel.ACCEL_HUNG).write_text(f"{accel}\n")
        self.force_off(inst, step)  # its steps show: the silent QEMU is quit (or killed) before the relaunch
        self._relaunch_under_tcg(boot, step, qemuaccel.silent_warning(accel, inst))
        return self._watch(boot, "tcg", "auto")

    def _relaunch_under_tcg(self, boot: _Boot, step: StepReporter, why: str) -> None:
        """What both fallbacks share: the failed run's logs kept as *.accel, one warning, QEMU again under tcg."""
        for log in (paths.SERIAL_LOG, QEMU_LOG):
            with contextlib.suppress(OSError):
                os.replace(boot.inst.dir / log, boot.inst.dir / (log + ".accel"))
        sys.stderr.write(f"devenv: warning: {why}\n")
        step("start QEMU (tcg)")
        chosen, extra = machine(boot.inst, boot.arch, bool(boot.image.get("kernel")), "tcg", creating=False)
        self._launch(boot, "tcg", chosen, extra)

    def _launch(
        self, boot: _Boot, accel: str, chosen: str, extra_cmdline: str, restore: dict[str, object] | None = None
    ) -> None:
        """QEMU for a cold boot, or (`restore`: the saved record) waiting for the saved guest; _Misfit if it cannot."""
        inst, image, arch = boot.inst, boot.image, boot.arch
        serial = inst.dir / paths.SERIAL_LOG
        if serial.exists() and restore is None:  # a restored guest goes on writing after its boot's lines
            os.replace(serial, inst.dir / (paths.SERIAL_LOG + ".1"))
        qmp, relay = qmp_socket(inst.dir), relay_socket(inst.dir)
        for sock in (qmp, relay):  # QEMU binds them: their folders are checked (and made 0700) before it does
            if not paths.socket_path_fits(sock):
                raise StateError(
                    f"the path is too long for a unix socket, even in the short folder: {sock}",
                    "set DEVENV_HOME (and TMPDIR) to a shorter directory, such as ~/.devenv",
                )
            secure_socket_dirs(sock, create=True)
        console = "ttyS0" if arch == "x86_64" else "ttyAMA0"
        cmdline = kernel_cmdline(image.get("cmdline", ""), console, aslr=inst.config.aslr, accel=accel)
        cmdline = f"{cmdline} {extra_cmdline}".strip()
        if not inst.config.aslr and not image.get("kernel"):
            sys.stderr.write(
                "devenv: warning: aslr = false needs an image whose kernel QEMU boots directly;"
                " this one boots through its firmware, so the guest keeps address-space randomisation\n"
            )
        from devenv.hostos import current

        host = current().facts
        less = memory_warning(inst.config.memory, accel, host)
        if less is not None:
            sys.stderr.write(f"devenv: warning: {less}\n")
        ram_file = inst.dir / qemusave.GUEST_RAM if self.features.suspend else None
        if ram_file is not None and restore is None and not ram_file.exists():
            # QEMU maps it shared and the guest writes it by page faults: a fault on a full disk is a SIGBUS
            # that kills QEMU (seen: a first boot on a 400 MiB filesystem, nothing in qemu.log), so its
            # blocks are taken now, when a full disk is still an error that says so
            size = inst.config.memory // 1024**2 * 1024**2
            hostdisk.reserve(ram_file, size, f"the memory of `{inst.name}`'s guest")
        # The SSH port is found free, released, and only then bound by QEMU: another program (a second
        # `devenv start`) may take it in between. QEMU then says so at once, and a new port is tried.
        shares = qemuhost.shares(inst, boot.binary)
        cmdline = qemuhost.with_boot_mounts(cmdline, inst, shares, direct_kernel=bool(image.get("kernel")))
        for attempt in range(3):
            port = ssh_port_for(inst.dir)
            (inst.dir / paths.SSH_PORT).write_text(f"{port}\n")
            spec = VmSpec(
                name=inst.name,
                arch=arch,
                accel=accel,
                cpus=inst.config.cpus,
                memory=inst.config.memory,
                disk=inst.dir / paths.DISK,
                cidata=inst.dir / paths.CIDATA,
                ssh_port=port,
                serial_log=serial,
                qmp_socket=qmp,
                pid_file=inst.dir / paths.QEMU_PID,
                kernel=Path(image["kernel"]) if image.get("kernel") else None,
                initrd=Path(image["initrd"]) if image.get("initrd") else None,
                cmdline=cmdline,
                firmware=qemuhost.firmware(arch, direct_kernel=bool(image.get("kernel")), binary=boot.binary),
                shares=shares,
                machine=chosen,
                ram_file=ram_file,
                relay_socket=relay,
                tcg_cache_mb=inst.config.tcg_cache // 1024**2,
                host=host,
            )
            argv = build_argv(spec, boot.binary)
            if restore is not None:
                why = qemusave.misfit(restore, argv, inst.dir / paths.DISK)
                if why is not None:
                    raise _Misfit(why)
                argv = [*qemusave.pin_machine(argv, str(restore["machine"])), "-incoming", "defer"]
            try:
                self._run_qemu(inst, argv, accel)
                return
            except AcceleratorFailed:
                raise
            except CommandFailed:
                if attempt == 2 or not ssh_port_was_taken(inst.dir / QEMU_LOG, port):
                    raise
                (inst.dir / paths.SSH_PORT).unlink()  # ssh_port_for then picks a new one

    def _run_qemu(self, inst: InstanceRef, argv: list[str], accel: str) -> None:
        """QEMU detached from the CLI, until its pid file and QMP socket are there (or it exited)."""
        for stale in (qmp_socket(inst.dir), relay_socket(inst.dir), inst.dir / paths.QEMU_PID):
            stale.unlink(missing_ok=True)
        (inst.dir / QEMU_ARGV).write_text(json.dumps(argv) + "\n")
        with open(inst.dir / QEMU_LOG, "wb") as log:
            kwargs: dict[str, object] = {}
            if sys.platform == "win32":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
            else:
                kwargs["start_new_session"] = True  # survives the CLI and its Ctrl-C
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, **kwargs)  # type: ignore[call-overload]
        qmp = qmp_socket(inst.dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                failed = self.failure(
                    inst,
                    f"QEMU exited with code {code} right after it started",
                    "check the accelerator (DEVENV_QEMU_ACCEL=tcg forces software emulation) and the log above",
                    CommandFailed,
                    exited=True,
                )
                reason = qemuaccel.accelerator_error(inst.dir / QEMU_LOG, accel) if accel != "tcg" else None
                raise AcceleratorFailed(failed.message, failed.hint, reason) if reason else failed
            if (inst.dir / paths.QEMU_PID).exists() and qmp.exists():
                return
            time.sleep(0.05)
        raise self.failure(inst, "QEMU did not create its pid file and QMP socket within 30 s", "see qemu.log")

    @staticmethod
    def _argv_of(inst: InstanceRef) -> list[str] | None:
        """The command line of the QEMU last launched (qemu.argv)."""
        try:
            argv = json.loads((inst.dir / QEMU_ARGV).read_text())
        except (OSError, ValueError):
            return None
        return [str(a) for a in argv] if isinstance(argv, list) else None

    @classmethod
    def _running_accel(cls, inst: InstanceRef) -> str | None:
        """The accelerator the running QEMU was launched with (qemu.argv), which may be a fallback's tcg."""
        argv = cls._argv_of(inst) or []
        if "-accel" not in argv[:-1]:
            return None
        return argv[argv.index("-accel") + 1].partition(",")[0] or None


def _suspend_hint(qemu_said: str, name: str) -> str:
    if "VirtFS" in qemu_said:  # hw/9pfs/9p.c: a mounted 9p share blocks migration
        return (
            "a program in the guest still uses a shared folder, so it could not be unmounted; leave it"
            f" (`devenv exec -n {name} -- fuser -vm FOLDER` names it) or `devenv stop --shutdown -n {name}`"
        )
    return f"`devenv stop --shutdown -n {name}` shuts it down instead; see `devenv logs -n {name}`"
