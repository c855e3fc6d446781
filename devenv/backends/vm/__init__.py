"""The one VM backend: what every Linux guest reached over SSH needs, whichever hypervisor runs it.

It holds a driver (driver.py) and asks it only what differs per hypervisor.
Start: the driver's check, then the first-boot seed and its launch (or attach
to a VM already running), the readiness wait (boot.py), the host agent
through to the engine and the mounts (agent.py). Status is derived each time
from the driver's view of its VM, the console and the host agent; nothing
about a running VM is cached on disk. exec, shell, cp, ssh-config and
docker-env go through the host agent or SSH to the driver's endpoint.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from devenv import paths
from devenv.atomicfile import write_atomic
from devenv.backends.base import ExecRequest, Features, InstanceRef, Snapshot, Status, StepReporter
from devenv.backends.vm import agent, boot, cost
from devenv.backends.vm.driver import BootStalled, Driver, Endpoint, Suspends, tail
from devenv.errors import NotSupported, StateError, SuspendRefused
from devenv.progress import CopyProgress
from devenv.provision.readiness import console_readiness, ssh_banner
from devenv.provision.userdata import READY_LINE

if TYPE_CHECKING:
    from devenv.transport.ssh import SSHConnection

STOP_TIMEOUT = 90.0  # s a clean power-down may take, whatever the hypervisor, before the VM is forced off


def powered_off_by_guest(console: Path) -> bool:
    """The console's last kernel line says the guest powered itself off (`poweroff` inside), not a crash."""
    return tail(console, 3).rstrip().endswith(("reboot: Power down", "reboot: System halted"))


def rebooting_by_guest(console: Path) -> bool:
    """The guest restarted itself (`reboot` inside) and has not announced itself ready since.

    The kernel prints "reboot: Restarting system" even when booted quiet; every
    boot ends with the ready line (devenv-ready.service), so a restart after the
    last one is a reboot still under way.
    """
    text = tail(console, 1000)
    return text.rfind("reboot: Restarting system") > text.rfind(READY_LINE)


def _cwd_or_none() -> str | None:
    """The host's working directory; None when it was deleted under us (the command runs in the guest home)."""
    try:
        return os.getcwd()
    except OSError:
        return None


class VmBackend:
    """A Backend (base.py) for a VM of any hypervisor; `driver` is the only part that knows which."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.name = driver.name
        self.features = Features(
            vm=True,
            ssh=True,
            port_forwarding=True,
            mounts=driver.features.mounts,
            snapshots=driver.features.snapshots,
            suspend=driver.features.suspend,
            accelerators=driver.features.accelerators,
        )

    # -- lifecycle ------------------------------------------------------------

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        from devenv.provision import prepare_seed

        self.driver.create(inst, step)
        step("generate SSH keys and the first-boot seed")
        prepare_seed(inst.dir, inst.config, host_address=self.driver.host_address)

    def start(self, inst: InstanceRef, step: StepReporter) -> None:
        from devenv import hostagent
        from devenv.provision import prepare_seed

        started = time.monotonic()
        d = self.driver
        d.check(inst)  # a VM this host or image cannot boot is refused before anything changes
        vm = d.state(inst)
        if vm.up:
            booting = d.attach(inst, step)
            self._write_ssh_config(inst)  # kept current, also for a VM started before devenv wrote the file
        else:
            # an agent of the VM that is gone (killed a moment ago) lives on for a tick, its SSH session
            # to the old guest perhaps still up: start must not take it for this boot's. A suspended
            # guest's agent is kept: its session goes on once the guest is restored.
            if vm.state != "saved":
                hostagent.shutdown(inst.dir)
            if vm.state != "saved":  # a restored guest goes on with the seed it booted with
                step("prepare the first-boot seed")
                prepare_seed(inst.dir, inst.config, host_address=d.host_address)
            try:
                booting = d.launch(inst, step)
            finally:  # the endpoint it chose, even when the launch failed after choosing it
                self._write_ssh_config(inst)
        if booting.resumed:  # ready as it was saved: no boot to wait for
            agent.start(d, inst, step, resumed=True)
            cost.record_start(inst.dir, time.monotonic() - started, "resume")
            return
        if vm.state == "saved":  # booted cold after all: the kept agent's session is of the saved guest
            hostagent.shutdown(inst.dir)
        provisioned = inst.dir / paths.PROVISIONED
        announces = provisioned.exists()  # provisioned: devenv-ready.service reports every boot
        if announces:
            agent.launch_early(d, inst)
        try:
            boot.wait_ready(d, inst, step, booting, announces=announces)
        except BootStalled as e:
            if e.retry is None:
                raise
            step.fail()
            step("stop the host agent")
            hostagent.shutdown(inst.dir)
            booting = e.retry(step)
            self._write_ssh_config(inst)
            boot.wait_ready(d, inst, step, booting, announces=announces)
        provisioned.touch()
        agent.start(d, inst, step)
        kind = "attach" if vm.up else ("boot" if announces else "first boot")
        cost.record_start(inst.dir, time.monotonic() - started, kind)

    def stop(self, inst: InstanceRef, force: bool, step: StepReporter, *, suspend: bool = False) -> None:
        """A clean power-down first, so the guest's disk is clean; then the driver forces the VM off.

        `force` skips the power-down. Each stage is a step, so a 90 s wait for
        a guest that ignores the power button is never a silent one.
        `suspend` saves the running guest instead (SuspendRefused, the VM
        running on, when it cannot be). A suspended guest asked to shut down
        is restored and powered down: its RAM may hold what a program has not
        written yet. Forced, it is discarded.
        """
        from devenv import hostagent

        vm = self.driver.state(inst)
        if vm.state == "saved":
            if suspend:
                return
            if force:
                step("discard the suspended guest")
                self._suspends().discard_saved(inst)
                return
            step("restore the suspended guest to shut it down cleanly")
            self.driver.launch(inst, step)
        elif suspend:
            if vm.state != "running":
                raise SuspendRefused(
                    f"the VM of `{inst.name}` is {vm.state}" + (f" ({vm.reason})" if vm.reason else ""),
                    "only a running guest is saved; `devenv stop --shutdown` stops it",
                )
            step("sync the guest's disk and unmount its 9p shares")
            agent.prepare_suspend(inst, lambda argv: self._run_quietly(inst, argv))
            kept = agent.quiesce(inst, step)
            try:
                self._suspends().suspend(inst, step)
            except BaseException:
                if kept:  # not saved: the session goes on as it was
                    hostagent.resume(inst.dir)
                raise
            return
        step("stop the host agent")
        hostagent.shutdown(inst.dir)
        if self.driver.state(inst).up and (force or not self.driver.power_down(inst, step, STOP_TIMEOUT)):
            self.driver.force_off(inst, step)
        # Off for good (or already, after a crash or a poweroff inside): what a suspend would have kept is
        # garbage now, and the guest's memory file alone holds as much of the host's disk as the guest has RAM.
        if self.driver.features.suspend:
            self._suspends().discard_saved(inst)

    # -- snapshots of the disk (vm/snapshots.py: when they may be taken and restored) ------------

    def snapshot_create(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        from devenv.backends.vm import snapshots

        snapshots.create(self.driver, inst, name, step, provisioned=(inst.dir / paths.PROVISIONED).exists())

    def snapshot_list(self, inst: InstanceRef) -> list[Snapshot]:
        from devenv.backends.vm import snapshots

        return snapshots.listing(self.driver, inst)

    def snapshot_restore(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        from devenv.backends.vm import snapshots

        snapshots.restore(self.driver, inst, name, step)

    def snapshot_delete(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        from devenv.backends.vm import snapshots

        snapshots.delete(self.driver, inst, name, step)

    def _suspends(self) -> Suspends:
        if not self.driver.features.suspend:
            raise NotSupported(self.name, "suspend", "`devenv stop` shuts the VM down")
        return cast(Suspends, self.driver)

    def _run_quietly(self, inst: InstanceRef, argv: list[str]) -> tuple[int, str]:
        """A short command in the guest, its exit code and stderr: through the host agent, else over SSH."""
        import io
        import tempfile

        from devenv.hostagent import client

        with tempfile.TemporaryFile() as err, open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null:
            code = client.exec(
                inst.dir, argv, {}, None, stdin_fd=null_in.fileno(), stdout_fd=null.fileno(), stderr_fd=err.fileno()
            )
            if code is not None:
                err.seek(0)
                return code, err.read().decode(errors="replace")
        out, errors = io.BytesIO(), io.BytesIO()
        with self.connection(inst) as conn:
            code = conn.exec(argv, stdout=out, stderr=errors)
        return code, errors.getvalue().decode(errors="replace")

    def delete(self, inst: InstanceRef) -> None:
        """The disk, seed and keys live in the instance directory, which the caller removes.

        Outside it devenv made the docker context `devenv-NAME` (and podman's connection of that
        name for a podman instance), and the driver what it says.
        """
        from devenv import hostagent

        hostagent.shutdown(inst.dir)
        hostagent.remove_docker_context(inst.name)
        if inst.config.runtime == "podman":
            hostagent.remove_podman_connection(inst.name)
        self.driver.delete(inst)

    def status(self, inst: InstanceRef) -> Status:
        vm = self.driver.state(inst)
        wanted = (inst.dir / paths.STARTED_MARKER).exists()
        console = self.driver.console_log(inst)
        disk = inst.dir / paths.DISK
        memory_file = self.driver.agent_plan(inst).memory_file
        if vm.state == "saved":
            words, figures = cost.measure(inst.dir, None, disk, None, memory_file)
            return Status("suspended", f"{vm.reason}; `devenv start` resumes it", {**vm.details, **words}, figures)
        if not vm.up:
            if vm.state == "crashed" and wanted:
                return Status("broken", f"{vm.reason}; `devenv start` boots it again", dict(vm.details))
            if wanted and console is not None and powered_off_by_guest(console):
                return Status("stopped", "the guest powered itself off; `devenv start` boots it again")
            if wanted:
                return Status(
                    "broken",
                    "the VM process is gone (killed or crashed); `devenv start` boots it again",
                    {"serial_log": str(console)} if console is not None else {},
                )
            return Status("stopped", "", *cost.measure(inst.dir, None, disk, None))
        endpoint = self.driver.endpoint(inst)
        details: dict[str, object] = dict(vm.details)
        if endpoint is not None:
            details["ssh"] = f"{endpoint.host}:{endpoint.port}"
        details["ssh_config"] = str(inst.dir / paths.SSH_CONFIG)
        if vm.state == "paused":  # nothing lost yet: degraded, so delete still asks for --force
            return Status("degraded", f"{vm.reason}; `devenv start` resumes it", details)
        if vm.state == "halted":
            return Status("broken", f"{vm.reason}; `devenv stop && devenv start` boots it", details)
        if console is not None:
            readiness = console_readiness(console)
            if readiness.failed:
                return Status("broken", readiness.describe(), details)
            if not readiness.ready:
                return Status("starting", _starting("the guest is booting", inst.dir), details)
        if endpoint is None or not ssh_banner(endpoint.port, host=endpoint.host, proxy=endpoint.proxy):
            if console is not None and rebooting_by_guest(console):  # read only when sshd is silent
                why = "the guest is rebooting (from inside); the host agent reconnects when it is up"
                return Status("starting", why, details)
            return Status("degraded", "the guest's sshd does not answer", details)
        if not wanted:
            return Status("starting", _starting("the guest has booted", inst.dir), details)
        return self._agent_status(inst, details, memory_file)

    @staticmethod
    def _agent_status(inst: InstanceRef, details: dict[str, object], memory_file: Path | None) -> Status:
        """A booted guest is as well as its host agent: connected, its forwards and mounts."""
        from devenv import hostagent

        ha = hostagent.state(inst.dir, guest_memory=True)
        pid = details.get("pid")
        words, figures = cost.measure(
            inst.dir, pid if isinstance(pid, int) else None, inst.dir / paths.DISK, ha.get("guest_memory"), memory_file
        )
        details.update(words)
        if not ha.get("alive"):
            return Status("degraded", "the host agent is not running; `devenv start` restarts it", details, figures)
        details["agent"] = ha.get("state")
        if ha.get("ssh_via"):  # relay: the session lives through a suspend; network: a resume logs in again
            details["ssh_via"] = ha.get("ssh_via")
        details["docker_host"] = hostagent.docker_env(inst.dir)["DOCKER_HOST"]
        details["forwards"] = [
            f"{f.get('host')} -> {f.get('guest_port')} ({f.get('status')}"
            + (f" via {f.get('via')}" if f.get("via") else "")
            + (f": {f.get('reason')}" if f.get("reason") else "")
            + ")"
            for f in ha.get("forwards", [])
        ]
        details["mounts"] = [f"{m.get('guest')} ({m.get('type')}, {m.get('state')})" for m in ha.get("mounts", [])]
        if ha.get("degraded"):
            return Status(
                "degraded",
                f"host agent {ha.get('state')} since {ha.get('since')}: {ha.get('last_error')}",
                details,
                figures,
            )
        return Status("running", details=details, figures=figures)

    # -- using a running instance ---------------------------------------------

    def connection(self, inst: InstanceRef, timeout: float = 60.0) -> SSHConnection:
        from devenv.transport.ssh import SSHConnection, SSHTarget

        endpoint = self.driver.endpoint(inst)
        if endpoint is None:
            raise StateError(f"instance `{inst.name}` has no SSH port; is it running?", f"devenv start -n {inst.name}")
        target = SSHTarget.for_instance(
            inst.dir, port=endpoint.port, user=endpoint.user, host=endpoint.host, proxy=endpoint.proxy
        )
        conn = SSHConnection(target, boot_timeout=timeout)
        conn.connect(timeout)
        return conn

    def _guest_cwd(self, inst: InstanceRef, cwd: str | None) -> str | None:
        """Where a mount puts the host folder `cwd`, or where the guest sees the host's files itself."""
        from devenv.hostagent.mounts import guest_cwd, mount_specs

        if self.driver.features.guest_paths:
            import importlib

            module, _, function = self.driver.features.guest_paths.partition(":")
            mapped: str | None = getattr(importlib.import_module(module), function)(cwd)
            return mapped
        return guest_cwd(mount_specs(inst.config.mounts), cwd)

    def exec(self, inst: InstanceRef, req: ExecRequest) -> int:
        from devenv.hostagent import client

        here = _cwd_or_none()
        argv, env = list(req.argv), {**inst.config.env, **req.env}
        if req.tty:  # a PTY: only SSH has one (the host agent's exec hands over plain fds)
            with self.connection(inst) as conn:
                return conn.shell(argv, env=env, cwd=req.cwd or self._guest_cwd(inst, here))
        # the host agent maps the host folder through mounts itself; the mapping is made here only for plain
        # SSH, and for a guest that sees the host's files without a mount (the agent knows no such mapping)
        workdir = req.cwd or (self._guest_cwd(inst, here) if self.driver.features.guest_paths else None)
        code = client.exec(inst.dir, argv, req.env, here, workdir=workdir) if req.ask_agent else None
        if code is not None:
            return code
        cwd = req.cwd or self._guest_cwd(inst, here)
        with self.connection(inst) as conn:
            stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
            return conn.exec(argv, env=env, cwd=cwd, stdin=stdin, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)

    def shell(self, inst: InstanceRef) -> int:
        """The guest's login shell, in the folder you are in when a mount puts it in the guest (as Lima does)."""
        with self.connection(inst) as conn:
            return conn.shell(env=dict(inst.config.env), cwd=self._guest_cwd(inst, _cwd_or_none()))

    def copy_in(self, inst: InstanceRef, src: Path, dst: str) -> None:
        with self.connection(inst) as conn:
            conn.copy_to_guest(src, dst, progress=CopyProgress())

    def copy_out(self, inst: InstanceRef, src: str, dst: Path) -> None:
        with self.connection(inst) as conn:
            conn.copy_from_guest(src, dst, progress=CopyProgress())

    def docker_env(self, inst: InstanceRef) -> dict[str, str]:
        from devenv import hostagent
        from devenv.provision.engines import engine

        eng = engine(inst.config.runtime)
        if not eng.docker_api:
            raise NotSupported(
                self.name,
                f"docker-env for runtime {inst.config.runtime}: containerd has no Docker API for a docker CLI",
                f"run its own CLI in the guest: `devenv exec -n {inst.name} -- ctr run --rm IMAGE ID CMD`"
                f" (nerdctl too, where the guest has it)",
            )
        if not hostagent.is_running(inst.dir):
            raise StateError(f"instance `{inst.name}` has no host agent running", f"devenv start -n {inst.name}")
        return {**hostagent.docker_env(inst.dir), **testcontainers_env(eng.socket)}

    def ssh_config(self, inst: InstanceRef) -> str:
        endpoint = self.driver.endpoint(inst)
        if endpoint is None:
            raise StateError(f"instance `{inst.name}` has not been started yet", f"devenv start -n {inst.name}")
        return _ssh_config_text(inst, endpoint)

    def _write_ssh_config(self, inst: InstanceRef) -> None:
        """ssh.config for an `Include` in ~/.ssh/config, kept current at every start."""
        endpoint = self.driver.endpoint(inst)
        if endpoint is not None:
            write_atomic(inst.dir / paths.SSH_CONFIG, _ssh_config_text(inst, endpoint).encode())

    def log_files(self, inst: InstanceRef) -> list[Path]:
        console = self.driver.console_log(inst)
        return [
            *self.driver.log_files(inst),
            inst.dir / paths.HOSTAGENT_LOG,
            *([console] if console is not None else []),
        ]


def testcontainers_env(guest_socket: str) -> dict[str, str]:
    """What Testcontainers (Java, Go, Node, Python) needs beside DOCKER_HOST to work against a guest's engine.

    Its reaper container mounts the engine socket: the path must be the
    guest's, not the host's forward. A mapped port answers on the host at
    127.0.0.1 (the host agent forwards it), never at the guest's or a bridge's
    address, which a library in a container (a dev container, CI runners with
    /.dockerenv) would otherwise pick. Colima documents the same three.
    """
    return {
        "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE": guest_socket,
        "TESTCONTAINERS_HOST_OVERRIDE": "127.0.0.1",
        "TESTCONTAINERS_CONNECTION_MODE": "docker_host",  # testcontainers-python: the host, not a gateway
    }


def _ssh_config_text(inst: InstanceRef, endpoint: Endpoint) -> str:
    from devenv.transport.proxy import openssh_proxy_command
    from devenv.transport.sshconfig import SSHConfigEntry

    entry = SSHConfigEntry(
        name=inst.name,
        hostname=endpoint.host,
        proxy_command=openssh_proxy_command(endpoint.proxy) if endpoint.proxy else "",
        port=endpoint.port,
        user=endpoint.user,
        identity_file=inst.dir / paths.SSH_KEY,
        known_hosts_file=inst.dir / paths.SSH_KNOWN_HOSTS,
    )
    return entry.render()


def _starting(what: str, inst_dir: Path) -> str:
    """What a start in progress means: one still waits for it, or none does (interrupted, killed)."""
    from devenv import oplock

    doing = oplock.running(inst_dir)
    if doing is not None and doing[1] == "start":
        return f"{what}; `devenv start` (pid {doing[0]}) is waiting for it"
    return f"{what}, but no `devenv start` is waiting for it any more (interrupted?); `devenv start` finishes it"
