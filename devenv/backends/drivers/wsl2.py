"""The WSL2 driver: the instance's VM is a WSL2 distro named devenv-NAME, driven through wsl.exe (wslexe.py).

The distro is imported from the instance's image, exported as a rootfs
tarball (devenv/images/wslexport.py), into the instance folder at its first
launch, so what runs is what a QEMU instance runs. Right after the import, provisioning/wsl/
setup.sh writes the marker /etc/devenv/wsl-owner naming this instance, turns
systemd on and hands root, network and resolv.conf to WSL. Each launch copies
the first-boot seed in and starts provisioning/wsl/boot.sh through a wsl.exe
that stays running (WSL stops a distro no wsl.exe holds): it applies the seed
once (the same earlyboot.py as a VM devenv built: user, pinned host key,
engine, guest agent) and starts sshd on a port of this instance's own, as
every WSL2 distro shares one network.

The host reaches that sshd at 127.0.0.1 through WSL's localhost forwarding,
or at the distro's own address when the forwarding does not answer (it dies
after host sleep and breaks in mirrored mode): the launch tries both and
keeps the one that answers; `devenv start` on a running instance chooses
again, and so does a running host agent whose logins fail (relocate(), its
AgentPlan.relocate), which then follows the distro to where sshd answers.
Readiness comes over SSH (there is no console). No folder is mounted:
Windows' drives are in the distro already (C:\\src\\app is /mnt/c/src/app).

Only a distro named devenv-* whose marker names this instance (its name,
its folder and a token kept in the folder) is ever stopped or unregistered;
a distro of the user's, whatever its name, is left alone, and one in the way
of an import is refused with a message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv import paths
from devenv.backends.drivers import wslexe
from devenv.backends.drivers.wslexe import Distro, Wsl
from devenv.backends.vm.driver import AgentPlan, Boot, DriverFeatures, Endpoint, VmState, tail
from devenv.errors import ConfigError, DevenvError, NotSupported, StateError, Timeout
from devenv.pidutil import detached

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef, StepReporter

PREFIX = "devenv-"
RECORD = "wsl.json"  # in the instance dir: the distro's name, the marker's token, how sshd is reached
DISTRO_DIR = "wsl"  # in the instance dir: where WSL keeps the distro's ext4.vhdx
BOOT_LOG = "wsl-boot.log"  # what boot.sh prints, through the keep-alive wsl.exe
KEEPALIVE_PID = "wsl-keepalive.pid"  # the wsl.exe that keeps the distro running; the host agent watches it
MARKER = "/etc/devenv/wsl-owner"
GUEST_DIR = "/var/lib/devenv/wsl"  # the seed and earlyboot.py, copied in at each launch
BOOT_SCRIPT = "/usr/local/lib/devenv/wsl-boot.sh"
HOST_LOOPBACK = "127.0.0.1"
REACH_WAIT = 60.0  # s a launch waits for sshd to answer one way or the other before leaving it to readiness
BUSY_STATES = ("Installing", "Uninstalling", "Converting", "Exporting")
_NAME_OK = re.compile(r"[^A-Za-z0-9._-]")


def relocate(inst_dir: Path, port: int, driver: Wsl2Driver | None = None) -> str:
    """Where this instance's sshd answers now, kept in its record: the host agent's question (AgentPlan.relocate).

    A running agent whose logins keep failing asks it: after Windows sleeps,
    WSL's localhost forwarding is dead and SSH must go to the distro's own
    address; once the forwarding answers again, back to 127.0.0.1. Every
    later command reads the record (endpoint()). "" when neither answers (the
    distro is stopping, say): the agent keeps trying where it was.
    """
    record = _read_record(inst_dir)
    distro = record.get("distro")
    if not isinstance(distro, str) or not distro:
        return ""
    found, _ = (driver or Wsl2Driver())._answering(distro, port)
    if found and found != record.get("ssh_host"):
        _store_record(inst_dir, {**record, "ssh_host": found})
    return found


def _read_record(inst_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((inst_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store_record(inst_dir: Path, data: dict[str, Any]) -> None:
    from devenv.atomicfile import write_atomic

    write_atomic(inst_dir / RECORD, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), 0o600)


def distro_name(instance: str) -> str:
    """devenv-NAME; WSL takes letters, digits, '.', '_' and '-' in a name, so anything else becomes '-'."""
    return PREFIX + _NAME_OK.sub("-", instance)


def owner_line(inst_name: str, inst_dir: Path, token: str) -> str:
    """What the marker holds: which instance, which folder, and a token only this folder's record knows."""
    return json.dumps({"instance": inst_name, "dir": str(inst_dir.absolute()), "token": token}, sort_keys=True)


def linux_path(windows_path: str) -> str:
    """A Windows path as the distro sees it through WSL's automount: C:\\src\\app -> /mnt/c/src/app.

    UNC paths (\\\\server\\share, \\\\wsl$\\...) are refused: the distro does
    not see them under /mnt. `\\\\?\\` and `\\\\.\\` prefixes of ordinary drive
    paths are dropped, as Podman does (pkg/specgen/winpath.go).
    """
    p = windows_path
    for prefix in ("\\\\?\\", "//?/", "\\\\.\\", "//./"):
        if p.startswith(prefix) and len(p) > len(prefix) + 1 and p[len(prefix) + 1] == ":":
            p = p[len(prefix) :]
    if p.startswith(("\\\\", "//")):
        raise NotSupported(
            "wsl2",
            f"the working directory {windows_path}",
            "run it from a folder on a drive letter (C:\\...), or pass the folder in the distro with -w",
            why="a network (UNC) path is not under /mnt in the distro",
        )
    if len(p) >= 2 and p[1] == ":" and p[0].isalpha():
        rest = p[2:].replace("\\", "/").strip("/")
        return f"/mnt/{p[0].lower()}" + (f"/{rest}" if rest else "")
    if p.startswith("/"):
        return p  # already a Linux path (a user's -w)
    raise NotSupported("wsl2", f"the working directory {windows_path}", "use an absolute path", why="not absolute")


def guest_cwd(host_cwd: str | None) -> str | None:
    """The distro's folder for the host's working directory (Windows only: elsewhere the guest home, None)."""
    if not host_cwd or os.name != "nt":
        return None
    return linux_path(host_cwd)


class Wsl2Driver:
    name = "wsl2"
    # Windows' drives are the distro's own /mnt/*: nothing to mount. No fast port path (every
    # forward goes through SSH), no snapshots, no suspend: WSL has none of them for one distro.
    features = DriverFeatures(mounts=(), guest_paths="devenv.backends.drivers.wsl2:guest_cwd")
    host_address = HOST_LOOPBACK  # the distro reaches the host's loopback only in mirrored mode; proxies stay as given

    def __init__(self, wsl: Wsl | None = None) -> None:
        self.wsl = wsl or Wsl()

    # -- what the VM backend asks ---------------------------------------------

    def check(self, inst: InstanceRef) -> None:
        """WSL can run a WSL2 distro here (the listing raises the setup fix when it cannot), for this image."""
        self.wsl.distros()
        arch = self._record(inst).get("arch")
        if arch:
            from devenv.hostos import current

            here = current().arch
            if arch != here:
                raise ConfigError(
                    [f"image architecture {arch} cannot run under WSL2 on this {here} PC"],
                    'WSL2 runs the PC\'s own architecture only; use an image for it, or backend = "qemu" to emulate',
                )

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        """The image's rootfs tarball (exported once per image); the import waits for the first launch.

        The instance folder is renamed into place after create, and WSL keeps
        the folder it imported into: importing here would leave the distro's
        disk under a name that is gone.
        """
        from devenv.images import catalog, wslexport
        from devenv.progress import DownloadProgress

        self._refuse_foreign(distro_name(inst.name))
        step(f"find image {inst.config.image}")
        record = catalog.resolve(inst.config.image, None, progress=DownloadProgress(f"pulling {inst.config.image}"))
        step(f"export {record.name} as a rootfs tarball for WSL")
        tarball = wslexport.export(record.disk, step=step)
        self._write_record(inst, {"image": record.name, "arch": record.arch, "tarball": str(tarball)})

    def _import(self, inst: InstanceRef, step: StepReporter) -> None:
        """Import the tarball as devenv-NAME into the instance folder and mark it as this instance's."""
        record = self._record(inst)
        distro = distro_name(inst.name)
        self._refuse_foreign(distro)
        tarball = str(record.get("tarball") or "")
        if not tarball or not Path(tarball).is_file():
            raise StateError(
                f"the rootfs tarball of `{inst.name}` is gone ({tarball or 'never made'})",
                f"`devenv delete -n {inst.name}` and `devenv start` export it again",
            )
        folder = inst.dir / DISTRO_DIR
        folder.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        self._write_record(inst, {**record, "distro": distro, "token": token})  # before: a distro it made is ours
        step(f"import the WSL2 distro {distro} (wsl.exe --import)")
        try:
            self.wsl.import_distro(distro, str(folder.absolute()), tarball)
        except DevenvError:
            # nothing registered (WSL2 cannot run here, say): the next start imports again, not "it is gone"
            with contextlib.suppress(DevenvError):
                if not any(d.name == distro for d in self.wsl.distros()):
                    self._write_record(inst, record)
            raise
        step(f"mark {distro} as this instance's")
        from devenv.provision import assets

        setup = assets.read_text("wsl/setup.sh").encode()
        self._root(distro, ["/bin/sh", "-s", "--", owner_line(inst.name, inst.dir, token)], setup, "set the distro up")
        self.wsl.terminate(distro)  # its next start reads the wsl.conf setup.sh wrote (systemd on)

    def delete(self, inst: InstanceRef) -> None:
        """Unregister the distro (its disk goes with it) once its marker says it is this instance's."""
        distro = self._ours(inst)
        if distro is None:
            return
        if not self._marker_matches(inst, distro.name):
            return  # a distro of that name that is not this instance's: the user's, left alone
        self._stop_keepalive(inst)
        self.wsl.unregister(distro.name)

    def launch(self, inst: InstanceRef, step: StepReporter) -> Boot:
        if "distro" not in self._record(inst):
            self._import(inst, step)
        distro = self._ours(inst)
        if distro is None:
            raise StateError(
                f"the WSL distro of `{inst.name}` ({distro_name(inst.name)}) is gone (unregistered outside devenv?)",
                f"`devenv delete -n {inst.name}` and `devenv start` make it again",
            )
        from devenv.backends.drivers.qemuproc import ssh_port_for

        port = ssh_port_for(inst.dir)
        (inst.dir / paths.SSH_PORT).write_text(f"{port}\n")
        step(f"copy the first-boot seed into {distro.name}")
        self._copy_in(inst, distro.name)
        step(f"start {distro.name} (systemd, then sshd on port {port})")
        self._start_keepalive(inst, distro.name, port)
        self._choose_address(inst, distro.name, port, step)
        return Boot(emulated=False, watch=self._alive_check(inst))

    def attach(self, inst: InstanceRef, step: StepReporter) -> Boot:
        vm = self.state(inst)
        if vm.state == "paused":
            raise StateError(vm.reason, "wait until WSL is done with it, then `devenv start` again")
        distro = distro_name(inst.name)
        step(f"{distro} is already running")
        port = self._port(inst)
        if self._keepalive_pid(inst) is None and port is not None:
            step(f"hold {distro} running again (its keep-alive wsl.exe was gone)")
            self._start_keepalive(inst, distro, port)
        if port is not None:
            self._choose_address(inst, distro, port, step)
        return Boot(emulated=False, watch=self._alive_check(inst))

    def power_down(self, inst: InstanceRef, step: StepReporter, timeout: float) -> bool:
        """Stop the engine cleanly (its containers with it), then `wsl.exe --terminate` the distro."""
        distro = self._ours(inst)
        if distro is None or distro.state != "Running":
            self._stop_keepalive(inst)
            return True
        if not self._marker_matches(inst, distro.name):
            raise self._foreign(distro.name)
        from devenv.provision.engines import engine

        units = " ".join(engine(inst.config.runtime).units)
        step(f"stop the engine ({units}) and sync the disk")
        with contextlib.suppress(DevenvError):
            self._root(distro.name, ["/bin/sh", "-c", f"systemctl stop {units} 2>/dev/null; sync"], None, "")
        step(f"terminate {distro.name} (wsl.exe --terminate)")
        self.wsl.terminate(distro.name)
        self._stop_keepalive(inst)
        return True

    def force_off(self, inst: InstanceRef, step: StepReporter) -> None:
        distro = self._ours(inst)
        if distro is not None and distro.state == "Running":
            if not self._marker_matches(inst, distro.name):
                raise self._foreign(distro.name)
            step(f"terminate {distro.name} (wsl.exe --terminate)")
            self.wsl.terminate(distro.name)
        self._stop_keepalive(inst)

    def state(self, inst: InstanceRef) -> VmState:
        """From `wsl.exe --list --verbose`: Running, Stopped, or busy with something of WSL's own."""
        distro = self._ours(inst)
        if distro is None:
            return VmState("off")
        details: dict[str, object] = {"distro": distro.name, "wsl_state": distro.state}
        pid = self._keepalive_pid(inst)
        if pid is not None:
            details["keepalive_pid"] = pid
        if distro.state == "Running":
            return VmState("running", word=distro.state, details=details)
        if distro.state in BUSY_STATES:
            why = f"WSL is busy with {distro.name} ({distro.state.lower()})"
            return VmState("paused", why, distro.state, details)
        return VmState("off", word=distro.state, details=details)

    def endpoint(self, inst: InstanceRef) -> Endpoint | None:
        port = self._port(inst)
        if port is None:
            return None
        return Endpoint(str(self._record(inst).get("ssh_host") or HOST_LOOPBACK), port)

    def console_log(self, inst: InstanceRef) -> Path | None:
        """None: a distro has no console; readiness is read over SSH from the guest's provisioning record."""
        return None

    def agent_plan(self, inst: InstanceRef) -> AgentPlan:
        return AgentPlan(vm_pid_file=inst.dir / KEEPALIVE_PID, relocate="devenv.backends.drivers.wsl2:relocate")

    def log_files(self, inst: InstanceRef) -> list[Path]:
        return [inst.dir / BOOT_LOG]

    def failure(
        self, inst: InstanceRef, message: str, hint: str, cls: type[DevenvError] = Timeout, *, exited: bool = False
    ) -> DevenvError:
        said = tail(inst.dir / BOOT_LOG, 12)
        parts = [message, f"the distro's boot ({inst.dir / BOOT_LOG}) said:\n{said}"] if said else [message]
        return cls("\n".join(parts), hint)

    # -- this instance's distro ----------------------------------------------------

    def _record(self, inst: InstanceRef) -> dict[str, Any]:
        return _read_record(inst.dir)

    def _write_record(self, inst: InstanceRef, data: dict[str, Any]) -> None:
        _store_record(inst.dir, data)

    def _ours(self, inst: InstanceRef) -> Distro | None:
        """This instance's distro as WSL lists it; None before the import, or when WSL has none of its name.

        Only the name devenv imported for this instance (in its record) is
        looked at; the marker is read before anything is done to it.
        """
        name = self._record(inst).get("distro")
        if not isinstance(name, str) or not name.startswith(PREFIX):
            return None
        return next((d for d in self.wsl.distros() if d.name == name), None)

    def _marker_matches(self, inst: InstanceRef, distro: str) -> bool:
        """The distro's marker names this instance, its folder and its token (reading it starts a stopped distro)."""
        token = self._record(inst).get("token")
        if not isinstance(token, str):
            return False
        try:
            result = self.wsl.run_in(distro, ["cat", MARKER])
        except wslexe.DistroMissing:
            return False
        return result.returncode == 0 and result.stdout.strip() == owner_line(inst.name, inst.dir, token)

    def _refuse_foreign(self, distro: str) -> None:
        if any(d.name.lower() == distro.lower() for d in self.wsl.distros()):  # WSL's names ignore case
            raise self._foreign(distro)

    @staticmethod
    def _foreign(distro: str) -> StateError:
        return StateError(
            f"a WSL distro named {distro} exists that devenv did not make for this instance; devenv leaves it alone",
            f"rename or remove it yourself (`wsl.exe --unregister {distro}` deletes its files), or use another"
            " instance name",
        )

    def _root(self, distro: str, argv: list[str], stdin: bytes | None, doing: str) -> None:
        result = self.wsl.run_in(distro, argv, input=stdin)
        if result.returncode != 0 and doing:
            from devenv.errors import CommandFailed

            said = (result.stderr.strip() or result.stdout.strip()).split("\n")[-8:]
            raise CommandFailed(
                f"could not {doing} in {distro}: `{wslexe.display(result.argv)}` exited with"
                f" {wslexe.exit_text(result.returncode)}" + ("\n" + "\n".join(said) if said[0] else ""),
                "the distro may not be a devenv image; `devenv delete` and start again",
            )

    def _copy_in(self, inst: InstanceRef, distro: str) -> None:
        """The seed the VM backend just wrote (the same files a VM's cidata ISO carries) and boot.sh."""
        from devenv.provision import assets
        from devenv.provision.seed import read_seed_iso

        files = read_seed_iso(inst.dir / paths.CIDATA).files
        for name in ("devenv-seed.json", "devenv-earlyboot.py"):
            target = f"{GUEST_DIR}/{name}"
            # /var/lib/devenv keeps its usual mode: the guest user reads its provisioning record there
            script = (
                f'mkdir -p "$(dirname {GUEST_DIR})" && mkdir -p -m 0700 {GUEST_DIR} && umask 077'
                f' && cat > "{target}.new" && mv "{target}.new" "{target}"'
            )
            self._root(distro, ["/bin/sh", "-c", script], files[name], f"copy {name} in")
        boot = assets.read_text("wsl/boot.sh").encode()
        script = f'mkdir -p "$(dirname {BOOT_SCRIPT})" && cat > {BOOT_SCRIPT} && chmod 0755 {BOOT_SCRIPT}'
        self._root(distro, ["/bin/sh", "-c", script], boot, "copy boot.sh in")

    def _start_keepalive(self, inst: InstanceRef, distro: str, port: int) -> None:
        self._stop_keepalive(inst)
        argv = wslexe.run_in(distro, ["/bin/sh", BOOT_SCRIPT, str(port)], exe=self.wsl.exe)
        env = {**os.environ, **wslexe.UTF8_ENV}
        with open(inst.dir / BOOT_LOG, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, **detached())
        (inst.dir / KEEPALIVE_PID).write_text(f"{proc.pid}\n")

    def _keepalive_pid(self, inst: InstanceRef) -> int | None:
        from devenv.pidutil import pid_alive

        try:
            pid = int((inst.dir / KEEPALIVE_PID).read_text().strip())
        except (OSError, ValueError):
            return None
        if sys.platform != "win32":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it: no zombie counts as alive
        return pid if pid_alive(pid) else None

    def _stop_keepalive(self, inst: InstanceRef) -> None:
        """The keep-alive wsl.exe ends (a --terminate ends it too; this is for when the distro is gone)."""
        pid = self._keepalive_pid(inst)
        if pid is not None:
            if sys.platform == "win32":
                from devenv.runner import run

                run(["taskkill", "/PID", str(pid), "/T", "/F"], timeout=30)
            else:
                import signal

                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
        (inst.dir / KEEPALIVE_PID).unlink(missing_ok=True)

    def _port(self, inst: InstanceRef) -> int | None:
        try:
            return int((inst.dir / paths.SSH_PORT).read_text().strip())
        except (OSError, ValueError):
            return None

    def _distro_address(self, distro: str) -> str:
        """The distro's own IPv4 address (the first of `hostname -I`), "" when it has none yet."""
        with contextlib.suppress(DevenvError):
            result = self.wsl.run_in(distro, ["hostname", "-I"])
            if result.returncode == 0:
                return next((w for w in result.stdout.split() if w.count(".") == 3), "")
        return ""

    def _choose_address(self, inst: InstanceRef, distro: str, port: int, step: StepReporter) -> None:
        """127.0.0.1 when WSL's localhost forwarding reaches sshd, else the distro's address when that does.

        Waits up to REACH_WAIT for either; neither answering leaves 127.0.0.1
        to the readiness wait, whose error then says what the boot printed.
        """
        step(f"find where sshd answers: {HOST_LOOPBACK}:{port}, else the distro's own address")
        deadline = time.monotonic() + REACH_WAIT
        address = ""
        chosen = HOST_LOOPBACK
        while time.monotonic() < deadline and self._keepalive_pid(inst) is not None:
            found, address = self._answering(distro, port, address)
            if found:
                chosen = found
                break
            time.sleep(0.5)
        record = self._record(inst)
        record["ssh_host"] = chosen
        self._write_record(inst, record)
        if chosen != HOST_LOOPBACK:
            step(f"WSL's localhost forwarding does not answer: SSH goes to the distro at {chosen}:{port}")

    def _answering(self, distro: str, port: int, address: str = "") -> tuple[str, str]:
        """(where sshd answers: 127.0.0.1 first, else the distro's own address, else ""; that address as learnt)."""
        from devenv.provision.readiness import ssh_banner

        if ssh_banner(port, host=HOST_LOOPBACK, timeout=1.0):
            return HOST_LOOPBACK, address
        address = address or self._distro_address(distro)
        if address and ssh_banner(port, host=address, timeout=1.0):
            return address, address
        return "", address

    def _alive_check(self, inst: InstanceRef) -> Any:
        """The keep-alive still runs (asked at most every 2 s): without it WSL stops the distro."""
        next_ask = time.monotonic() + 2.0

        def check() -> None:
            nonlocal next_ask
            if time.monotonic() < next_ask:
                return
            next_ask = time.monotonic() + 2.0
            if self._keepalive_pid(inst) is None:
                raise self.failure(
                    inst,
                    "the wsl.exe holding the distro exited while it was starting",
                    f"`devenv start -n {inst.name}` starts it again; the lines above may say why it stopped",
                    StateError,
                    exited=True,
                )

        return check
