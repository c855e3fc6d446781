"""What the host needs to know about each container engine set up in the guest."""

from __future__ import annotations

from dataclasses import dataclass

from devenv.guestagent.agent import ENGINE_SOCKETS

LOCAL_IMAGE = "devenv/busybox:latest"  # built at first boot from the guest's busybox; needs no registry
GUEST_LIB = "/usr/local/lib/devenv"


@dataclass(frozen=True)
class Engine:
    name: str
    socket: str  # guest path of the API socket the host forwards
    units: tuple[str, ...]  # systemd units that get the proxy drop-in
    docker_api: bool  # the socket speaks the Docker API, so the host's `docker` CLI works against it
    script: str  # provisioning/engines/<script>
    group: str  # whose members may use the socket: GROUP= in the script; the guest user is one

    @property
    def guest_script(self) -> str:
        return f"{GUEST_LIB}/engines/{self.script}"


ENGINES: dict[str, Engine] = {
    "docker": Engine("docker", ENGINE_SOCKETS["docker"], ("docker.service",), True, "docker.sh", "docker"),
    # rootful podman.socket, group `podman` may use it: the same model as docker's group.
    "podman": Engine("podman", ENGINE_SOCKETS["podman"], ("podman.service",), True, "podman.sh", "podman"),
    "containerd": Engine(
        "containerd", ENGINE_SOCKETS["containerd"], ("containerd.service",), False, "containerd.sh", "containerd"
    ),
}


def engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(ENGINES)}") from None
