"""`python -m devenv.hostagent INSTANCE_DIR [options]`: the agent process (see daemon.py).

`devenv start` passes what differs per hypervisor (backends/vm/agent.py makes
it from the driver's answers): where sshd answers, the VM process to exit
with, the console to read, the fast port path. Everything else comes from the
instance directory: the key and pinned host key in ssh/, the resolved
devenv.toml (runtime, ports, mounts, env). The other options are for tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from devenv import paths
from devenv.hostagent import fastports
from devenv.hostagent.daemon import HostAgent, Options
from devenv.hostagent.mounts import mount_specs
from devenv.hostagent.ports import AUTO_MIN_PORT, config_forwards


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m devenv.hostagent")
    p.add_argument("inst_dir", type=Path)
    p.add_argument("--user", default="devenv", help="guest user to log in as")
    p.add_argument("--agent-command", default=None, help="guest command that serves the guest agent protocol")
    p.add_argument("--engine-socket", default=None, help="guest engine socket (default: from the runtime)")
    p.add_argument("--no-engine", action="store_true", help="do not forward an engine socket")
    p.add_argument("--ssh-host", default="127.0.0.1", help="where the guest's sshd answers")
    p.add_argument("--ssh-port", type=int, default=None, help=f"default: read INSTANCE_DIR/{paths.SSH_PORT}")
    p.add_argument("--ssh-proxy", default="", help="JSON list: a command that reaches sshd (ProxyCommand, %%h %%p)")
    p.add_argument(
        "--relocate",
        default="",
        help="module:function(inst_dir, port) -> host: where sshd answers now, asked when logins keep failing",
    )
    p.add_argument("--watch-pid-file", type=Path, default=None, help="the VM's pid file: exit with that process")
    p.add_argument("--no-watch", action="store_true", help="do not exit with the VM process (the default)")
    p.add_argument("--console", type=Path, default=None, help="the guest's console log, read for its readiness line")
    p.add_argument(
        "--resumed",
        action="store_true",
        help="the guest was restored, not booted: log in at once and set its clock from the host's first",
    )
    p.add_argument("--relay", type=Path, default=None, help="unix socket of the guest's SSH relay port (relay.py)")
    p.add_argument(
        "--keep-allocated",
        type=Path,
        default=None,
        help="the guest's memory file: its given-back pages stay allocated on disk (hostdisk.keep_allocated)",
    )
    p.add_argument("--no-mounts", action="store_true", help="mount nothing (the guest sees the host's files already)")
    p.add_argument("--min-port", type=int, default=AUTO_MIN_PORT, help="lowest guest port forwarded automatically")
    p.add_argument("--ports-interval", type=float, default=0.5)
    p.add_argument("--bind-host", default="127.0.0.1", help="host loopback address for port forwards")
    p.add_argument(
        "--fast-ports",
        default="",
        help=f"the driver's fast port path, module:function (fastports.py; {fastports.ENV}=ssh: none)",
    )
    a = p.parse_args(argv)
    inst_dir = a.inst_dir.absolute()
    opts = Options(
        inst_dir=inst_dir,
        user=a.user,
        min_port=a.min_port,
        ports_interval=a.ports_interval,
        bind_host=a.bind_host,
        ssh_host=a.ssh_host,
        ssh_port=a.ssh_port,
        console=a.console,
        resumed=a.resumed,
        relay=a.relay,
        memory_file=a.keep_allocated,
        ssh_proxy=tuple(json.loads(a.ssh_proxy)) if a.ssh_proxy else (),
        relocate=a.relocate,
    )
    if a.agent_command:
        opts.agent_command = a.agent_command
    opts.watch_pid_file = None if a.no_watch else a.watch_pid_file
    if a.fast_ports and fastports.wanted():
        opts.fast_ports = a.fast_ports
    runtime = "docker"
    cfg_file = inst_dir / paths.INSTANCE_CONFIG
    if cfg_file.is_file():
        from devenv import config

        cfg = config.load_file(cfg_file)
        runtime = cfg.runtime
        opts.env = dict(cfg.env)
        opts.explicit, rejected = config_forwards(cfg.ports)
        opts.rejected_ports = [f"{e.guest}/{e.protocol}: {why}" for e, why in rejected]
        opts.mounts = [] if a.no_mounts else mount_specs(cfg.mounts)
    if not a.no_engine:
        if a.engine_socket:
            opts.engine_socket = a.engine_socket
        else:
            from devenv.provision.engines import engine

            opts.engine_socket = engine(runtime).socket
    return opts


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # paramiko logs every refused handshake of a booting guest as an ERROR with a traceback;
    # the agent reports connection failures itself, with the reason.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    opts = parse(sys.argv[1:] if argv is None else argv)
    return HostAgent(opts).run()


if __name__ == "__main__":
    sys.exit(main())
