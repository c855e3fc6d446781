"""The host agent of a VM, whatever runs it: launched early, then checked through to the engine and the mounts.

The host agent (devenv/hostagent) holds the one SSH connection: engine
socket, port forwards, mounts, fast exec. It learns what differs per
hypervisor from its command line, which this module makes from the driver's
answers (agent_args): the VM process it exits with, the console it reads
for readiness, the fast port path it may use instead of SSH.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from devenv import paths
from devenv.errors import StateError, Timeout
from devenv.provision.engines import engine
from devenv.provision.keys import GUEST_USER

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef, StepReporter
    from devenv.backends.vm.driver import Driver

MOUNT_WAIT = 90.0  # start waits this long for the mounts, then warns and leaves them to the host agent
AGENT_WAIT = 90.0  # for the host agent's first login and guest agent


def agent_args(driver: Driver, inst: InstanceRef, *, resumed: bool = False) -> tuple[str, list[str]]:
    """The guest user to log in as and the host agent's options for this instance's VM.

    `resumed`: the guest was restored, not booted: the agent logs in at once
    and sets the guest's clock first.
    """
    endpoint = driver.endpoint(inst)
    plan = driver.agent_plan(inst)
    args: list[str] = []
    if endpoint is not None:
        args += ["--ssh-host", endpoint.host, "--ssh-port", str(endpoint.port)]
        if endpoint.proxy:
            args += ["--ssh-proxy", json.dumps(list(endpoint.proxy))]
    # absolute: the agent runs in the instance dir, which may itself be given relative (DEVENV_HOME)
    pid_file = plan.vm_pid_file
    args += ["--watch-pid-file", str(pid_file.absolute())] if pid_file is not None else ["--no-watch"]
    console = driver.console_log(inst)
    if console is not None:
        args += ["--console", str(console.absolute())]
    if driver.features.fast_ports:
        args += ["--fast-ports", driver.features.fast_ports]
    if not driver.features.mounts:
        args.append("--no-mounts")
    if plan.guest_agent_command:
        args += ["--agent-command", plan.guest_agent_command]
    if plan.bind_host:
        args += ["--bind-host", plan.bind_host]
    if plan.relay_socket is not None:
        args += ["--relay", str(plan.relay_socket.absolute())]
    if plan.memory_file is not None:
        args += ["--keep-allocated", str(plan.memory_file.absolute())]
    if plan.relocate:
        args += ["--relocate", plan.relocate]
    if resumed:
        args.append("--resumed")
    return (endpoint.user if endpoint is not None else GUEST_USER), args


def launch_early(driver: Driver, inst: InstanceRef) -> None:
    """Start the host agent while the guest boots: its login and guest agent overlap the wait.

    The agent retries SSH until the guest answers, so by the time the guest
    reports ready it is usually connected. A failure here is not final:
    start() launches it again and reports what went wrong. Never on the first
    boot: cloud-init (pulled images) may still be creating the user and its groups then, and a
    session logged in before that would lack the engine's socket group for as
    long as it lives.
    """
    from devenv import hostagent

    user, args = agent_args(driver, inst)
    with contextlib.suppress(hostagent.AgentStartError, OSError):
        hostagent.launch(inst.dir, user=user, wait=0, extra_args=args)


def quiesce(inst: InstanceRef, step: StepReporter) -> bool:
    """Before a save: the host agent keeps its session (True), or is stopped and a new one logs in after."""
    from devenv import hostagent

    step("quiesce the host agent's SSH session")
    why = hostagent.suspend(inst.dir)
    if why is None:
        return True
    step.fail()
    step(f"stop the host agent ({why})")
    hostagent.shutdown(inst.dir)
    return False


def start(driver: Driver, inst: InstanceRef, step: StepReporter, *, resumed: bool = False) -> None:
    """The host agent connected, the engine answering through it, the mounts in place, the docker context.

    `resumed`: the agent kept from before the suspend goes on with its session
    when it can; else a new agent logs in.
    """
    from devenv import hostagent

    st: dict[str, Any] | None = None
    if resumed:
        step("resume the host agent's SSH session")
        why = hostagent.resume(inst.dir)
        if why is None:
            st = hostagent.state(inst.dir, timeout=5.0)
        else:
            step.fail()
            hostagent.shutdown(inst.dir)
    if st is None:
        st = _launch(driver, inst, step, resumed=resumed)
    step(f"{inst.config.runtime} engine answers")
    check_engine(inst)
    if inst.config.mounts and driver.features.mounts:
        step(f"mount {', '.join(m.location for m in inst.config.mounts)}")
        st = _wait_mounts(inst, st, len(inst.config.mounts))
    for m in st.get("mounts", []):
        if m.get("state") == "failed":
            sys.stderr.write(f"devenv: warning: mount {m.get('guest')} failed: {m.get('reason', '')}\n")
        elif m.get("state") != "mounted":  # _wait_mounts gave up waiting: the agent goes on trying
            sys.stderr.write(
                f"devenv: warning: mount {m.get('guest')} is still {m.get('state')} after {MOUNT_WAIT:.0f} s;"
                f" `devenv status -n {inst.name}` shows when it is there\n"
            )
    if engine(inst.config.runtime).docker_api:
        step(f"docker context devenv-{inst.name}")
        hostagent.ensure_docker_context(inst.name, inst.dir)
    if inst.config.runtime == "podman" and shutil.which("podman"):
        step(f"podman connection devenv-{inst.name}")
        hostagent.ensure_podman_connection(inst.name, inst.dir)


def _launch(driver: Driver, inst: InstanceRef, step: StepReporter, *, resumed: bool) -> dict[str, Any]:
    """A new host agent, logged in: its state."""
    from devenv import hostagent

    step("log in with the pinned host key; host agent and guest agent")
    user, args = agent_args(driver, inst, resumed=resumed)
    try:
        st = hostagent.launch(inst.dir, user=user, wait=AGENT_WAIT, extra_args=args)
    except hostagent.AgentStartError as e:
        raise StateError(str(e), f"see {inst.dir / paths.HOSTAGENT_LOG}") from None
    if st.get("state") != "connected":
        raise Timeout(
            f"the host agent did not connect to the guest: {st.get('last_error') or st.get('state')}",
            f"see {inst.dir / paths.HOSTAGENT_LOG}",
        )
    return st


def check_engine(inst: InstanceRef) -> None:
    """Through the forwarded socket when the engine speaks the Docker API: proves the whole path."""
    from devenv import hostagent
    from devenv.hostos import ping_unix

    eng = engine(inst.config.runtime)
    hint = f"`devenv exec -n {inst.name} -- systemctl status {' '.join(eng.units)}` shows why"
    if eng.docker_api:
        sock = hostagent.docker_env(inst.dir)["DOCKER_HOST"].removeprefix("unix://")
        if not ping_unix(sock, timeout=60.0):
            raise StateError(f"the {eng.name} engine does not answer at {sock} (guest {eng.socket})", hint)
        return
    from devenv.hostagent import client

    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        code = client.exec(
            inst.dir, ["test", "-S", eng.socket], {}, None,
            stdin_fd=null_in.fileno(), stdout_fd=null_out.fileno(), stderr_fd=null_out.fileno(),
        )  # fmt: skip
    if code != 0:
        raise StateError(f"the {eng.name} socket {eng.socket} does not exist in the guest", hint)


def _wait_mounts(inst: InstanceRef, st: dict[str, Any], want: int) -> dict[str, Any]:
    """Start returns once every mount is in place (or has failed): the project folder is there."""
    from devenv import hostagent

    deadline = time.monotonic() + MOUNT_WAIT
    while time.monotonic() < deadline:
        done = [m for m in st.get("mounts", []) if m.get("state") in ("mounted", "failed")]
        if len(done) >= want:
            break
        time.sleep(0.2)
        st = hostagent.state(inst.dir)
    return st


# Before a guest is saved: what it wrote reaches its disk (a saved guest that later cannot be
# restored boots cold from that disk), and its 9p shares are unmounted (a hypervisor may refuse
# to save a guest with one mounted). The host agent mounts them again after the restore.
SUSPEND_PREP = "sync; if grep -qs ' 9p ' /proc/mounts; then sudo -n umount -a -t 9p; fi"


def prepare_suspend(inst: InstanceRef, run: Callable[[list[str]], tuple[int, str]]) -> None:
    """Sync the guest's disk and unmount its 9p shares; SuspendRefused (nothing saved) when that fails.

    `run` runs a command in the guest and returns its exit code and stderr.
    """
    from devenv.errors import SuspendRefused

    code, err = run(["sh", "-c", SUSPEND_PREP])
    if code != 0:
        raise SuspendRefused(
            f"the guest of `{inst.name}` could not unmount its shared folders: {err.strip()[-300:] or code}",
            "a program in the guest still uses one: leave it, or `devenv stop --shutdown`",
        )
