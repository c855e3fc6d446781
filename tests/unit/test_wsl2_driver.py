"""The WSL2 driver's decisions, against recorded wsl.exe outputs (tests/fixtures/wsl, sources in index.json).

No Windows and no wsl.exe here: the driver's wsl.exe is tests/wslrecorded.py's
replay, so what is proven is which exact command lines the driver runs for
each state WSL reports, and that it never touches a distro that is not the
instance's own. tests/integration/test_wsl2_stand_in.py runs the same driver
through a stand-in wsl.exe program with a real Linux root filesystem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devenv import paths
from devenv.backends.base import InstanceRef
from devenv.backends.drivers import wsl2, wslexe
from devenv.backends.drivers.wsl2 import Wsl2Driver, distro_name, linux_path, owner_line
from devenv.backends.drivers.wslexe import Wsl
from devenv.config import Config
from devenv.errors import NotSupported, StateError
from tests.steprecorder import StepRecorder
from tests.wslrecorded import Replay, data

LIST = ("--list", "--verbose")
TOKEN = "0123456789abcdef0123456789abcdef"


def _inst(tmp_path: Path, name: str = "app") -> InstanceRef:
    d = tmp_path / name
    d.mkdir()
    return InstanceRef(name, d, Config(name=name))


def _ours(inst: InstanceRef, distro: str = "devenv-app") -> None:
    (inst.dir / wsl2.RECORD).write_text(f'{{"distro": "{distro}", "token": "{TOKEN}"}}')


def _marker(inst: InstanceRef, distro: str = "devenv-app") -> tuple[str, ...]:
    return ("--distribution", distro, "--user", "root", "--exec", "cat", wsl2.MARKER)


def _driver(answers: dict[tuple[str, ...], Any]) -> tuple[Wsl2Driver, Replay]:
    replay = Replay(answers)
    return Wsl2Driver(Wsl(run=replay, environ={})), replay


def _owner(inst: InstanceRef) -> bytes:
    return (owner_line(inst.name, inst.dir, TOKEN) + "\n").encode()


# -- names and paths ----------------------------------------------------------------------


def test_distro_names() -> None:
    assert distro_name("app") == "devenv-app"
    assert distro_name("my.app_2") == "devenv-my.app_2"
    assert distro_name("a b/c") == "devenv-a-b-c"


@pytest.mark.parametrize(
    ("windows", "linux"),
    [
        (r"C:\src\app", "/mnt/c/src/app"),
        ("C:\\", "/mnt/c"),
        (r"D:\Work\My Project\sub", "/mnt/d/Work/My Project/sub"),
        ("c:/src/app/", "/mnt/c/src/app"),
        (r"\\?\C:\very\long\path", "/mnt/c/very/long/path"),
        ("/home/devenv/src", "/home/devenv/src"),
    ],
)
def test_working_directories_map_to_mnt(windows: str, linux: str) -> None:
    assert linux_path(windows) == linux


@pytest.mark.parametrize("unc", [r"\\server\share\src", r"\\wsl$\Ubuntu\home", "//server/share"])
def test_unc_paths_are_refused_with_the_reason(unc: str) -> None:
    with pytest.raises(NotSupported) as e:
        linux_path(unc)
    assert e.value.message == (
        f"backend `wsl2` does not support the working directory {unc}: "
        "a network (UNC) path is not under /mnt in the distro"
    )
    assert e.value.hint == "run it from a folder on a drive letter (C:\\...), or pass the folder in the distro with -w"


def test_guest_cwd_maps_only_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off Windows the host's folder is no Windows path: the guest home, as for any VM without mounts."""
    assert wsl2.guest_cwd("/home/me/src") is None
    assert wsl2.guest_cwd(None) is None


def test_features_say_what_it_cannot_do() -> None:
    f = Wsl2Driver.features
    assert f.mounts == () and not f.suspend and not f.snapshots and f.fast_ports == ""
    assert f.guest_paths == "devenv.backends.drivers.wsl2:guest_cwd"


# -- state ----------------------------------------------------------------------------------


def test_state_from_the_recorded_listing(tmp_path: Path) -> None:
    """Recorded listing (UTF-16LE): devenv-app Running, devenv-old Stopped."""
    driver, replay = _driver({LIST: "list-verbose-devenv.utf16"})
    app = _inst(tmp_path, "app")
    _ours(app)
    vm = driver.state(app)
    assert (vm.state, vm.word, vm.details["distro"]) == ("running", "Running", "devenv-app")
    old = _inst(tmp_path, "old")
    _ours(old, "devenv-old")
    assert driver.state(old).state == "off"
    assert replay.argvs == [("wsl.exe", "--list", "--verbose")] * 2


def test_a_same_named_distro_without_devenvs_record_is_not_the_instances(tmp_path: Path) -> None:
    """devenv-mine is in the recorded listing, but this instance never imported it: off, nothing asked of it."""
    driver, replay = _driver({LIST: "list-verbose-devenv.utf16"})
    mine = _inst(tmp_path, "mine")
    assert driver.state(mine).state == "off"
    assert driver.endpoint(mine) is None
    assert replay.calls == []  # not even a listing


def test_no_distros_at_all(tmp_path: Path) -> None:
    """Recorded (rancher-desktop#1655): the no-distro failure, then the empty quiet list."""
    driver, _ = _driver({LIST: "list-verbose-none.utf16", ("--list", "--quiet"): "list-quiet-none.utf16"})
    inst = _inst(tmp_path)
    _ours(inst)
    assert driver.state(inst).state == "off"


def test_busy_distros_are_paused_and_a_start_waits(tmp_path: Path) -> None:
    busy = "  NAME          STATE           VERSION\r\n  devenv-app    Converting      2\r\n".encode("utf-16-le")
    driver, _ = _driver({LIST: (busy, 0)})
    inst = _inst(tmp_path)
    _ours(inst)
    vm = driver.state(inst)
    assert (vm.state, vm.reason) == ("paused", "WSL is busy with devenv-app (converting)")
    with pytest.raises(StateError):
        driver.attach(inst, StepRecorder())


def test_check_raises_the_setup_fix(tmp_path: Path) -> None:
    """Recorded (podman wutil_test.go): WSL not installed."""
    driver, _ = _driver({LIST: "not-installed.utf16"})
    with pytest.raises(wslexe.WslNotInstalled):
        driver.check(_inst(tmp_path))


# -- what it does to a distro ----------------------------------------------------------------


def test_create_refuses_a_distro_of_the_same_name_it_did_not_make(tmp_path: Path) -> None:
    """devenv-mine exists in the recorded listing: create stops before anything is imported."""
    driver, replay = _driver({LIST: "list-verbose-devenv.utf8"})
    with pytest.raises(StateError) as e:
        driver.create(_inst(tmp_path, "mine"), StepRecorder())
    assert e.value.message == (
        "a WSL distro named devenv-mine exists that devenv did not make for this instance; devenv leaves it alone"
    )
    assert replay.argvs == [("wsl.exe", "--list", "--verbose")]


def test_create_exports_and_the_first_launch_imports_marks_and_terminates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import waits for the launch: the instance folder is renamed into place after create, and WSL keeps
    the folder it imported into (the stand-in's integration test found the distro's disk under the old name)."""
    import json

    from devenv.images import catalog, wslexport
    from devenv.images.cache import ImageRecord

    inst = _inst(tmp_path, "fresh")
    disk = tmp_path / "disk.qcow2"
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"")
    record = ImageRecord(name="debian-12", arch="x86_64", source="built", disk=disk, size=1, digest="", origin="")
    monkeypatch.setattr(catalog, "resolve", lambda *a, **k: record)
    monkeypatch.setattr(wslexport, "export", lambda d, **k: tarball)
    monkeypatch.setattr(wsl2.secrets, "token_hex", lambda n: TOKEN)
    driver, replay = _driver({LIST: "list-verbose-devenv.utf16"})
    driver.create(inst, StepRecorder())
    assert replay.argvs == [("wsl.exe", "--list", "--verbose")]
    assert json.loads((inst.dir / wsl2.RECORD).read_text()) == {
        "arch": "x86_64", "image": "debian-12", "tarball": str(tarball),
    }  # fmt: skip
    assert driver.state(inst).state == "off"  # not imported: nothing of WSL's is this instance's yet

    folder = str((inst.dir / "wsl").absolute())
    owner = owner_line("fresh", inst.dir, TOKEN)
    replay.answers.update(
        {
            ("--import", "devenv-fresh", folder, str(tarball), "--version", "2"): "import-ok.utf16",
            ("--distribution", "devenv-fresh", "--user", "root", "--exec", "/bin/sh", "-s", "--", owner): (b"", 0),
            ("--terminate", "devenv-fresh"): "terminate-ok.utf8",
        }
    )
    replay.calls.clear()
    steps = StepRecorder()
    driver._import(inst, steps)
    assert [a[1:3] for a in replay.argvs] == [
        ("--list", "--verbose"),
        ("--import", "devenv-fresh"),
        ("--distribution", "devenv-fresh"),
        ("--terminate", "devenv-fresh"),
    ]
    setup = replay.calls[2].input or b""
    assert setup.startswith(b"#!/bin/sh\n# devenv: run once in a WSL distro right after `wsl.exe --import`")
    assert b"systemd=true" in setup and b"/etc/devenv/wsl-owner" in setup
    assert json.loads((inst.dir / wsl2.RECORD).read_text()) == {
        "arch": "x86_64", "distro": "devenv-fresh", "image": "debian-12", "tarball": str(tarball), "token": TOKEN,
    }  # fmt: skip
    assert steps.seen == [
        "import the WSL2 distro devenv-fresh (wsl.exe --import)",
        "mark devenv-fresh as this instance's",
    ]


def test_delete_unregisters_only_a_distro_whose_marker_names_this_instance(tmp_path: Path) -> None:
    inst = _inst(tmp_path)
    _ours(inst)
    driver, replay = _driver(
        {
            LIST: "list-verbose-devenv.utf16",
            _marker(inst): (_owner(inst), 0),
            ("--unregister", "devenv-app"): "unregister-ok.utf8",
        }
    )
    driver.delete(inst)
    assert replay.argvs[1:] == [
        ("wsl.exe", "--distribution", "devenv-app", "--user", "root", "--exec", "cat", "/etc/devenv/wsl-owner"),
        ("wsl.exe", "--unregister", "devenv-app"),
    ]


@pytest.mark.parametrize(
    "marker",
    [
        (b"", 1),  # no marker file: a distro of the user's own with devenv's name
        (b'{"dir": "/elsewhere", "instance": "app", "token": "0123456789abcdef0123456789abcdef"}\n', 0),
        (
            "There is no distribution with the supplied name.\r\nError code: Wsl/Service/WSL_E_DISTRO_NOT_FOUND\r\n".encode(
                "utf-16-le"
            ),
            4294967295,
        ),
    ],
)
def test_delete_leaves_any_other_distro_alone(tmp_path: Path, marker: tuple[bytes, int]) -> None:
    inst = _inst(tmp_path)
    _ours(inst)
    driver, replay = _driver({LIST: "list-verbose-devenv.utf16", _marker(inst): marker})
    driver.delete(inst)
    assert ("wsl.exe", "--unregister", "devenv-app") not in replay.argvs
    assert len(replay.calls) == 2


def test_stop_shuts_the_engine_down_then_terminates(tmp_path: Path) -> None:
    inst = _inst(tmp_path)
    _ours(inst)
    stop_engine = ("/bin/sh", "-c", "systemctl stop docker.service 2>/dev/null; sync")
    driver, replay = _driver(
        {
            LIST: "list-verbose-devenv.utf16",
            _marker(inst): (_owner(inst), 0),
            ("--distribution", "devenv-app", "--user", "root", "--exec", *stop_engine): (b"", 0),
            ("--terminate", "devenv-app"): "terminate-ok.utf8",
        }
    )
    steps = StepRecorder()
    assert driver.power_down(inst, steps, 90.0) is True
    assert [a[-1] for a in replay.argvs] == ["--verbose", wsl2.MARKER, stop_engine[-1], "devenv-app"]
    assert steps.seen == [
        "stop the engine (docker.service) and sync the disk",
        "terminate devenv-app (wsl.exe --terminate)",
    ]


def test_stop_refuses_a_running_distro_that_is_not_the_instances(tmp_path: Path) -> None:
    inst = _inst(tmp_path)
    _ours(inst)
    driver, replay = _driver({LIST: "list-verbose-devenv.utf16", _marker(inst): (b"someone else's\n", 0)})
    with pytest.raises(StateError):
        driver.force_off(inst, StepRecorder())
    assert ("wsl.exe", "--terminate", "devenv-app") not in replay.argvs


def test_a_stopped_distro_needs_no_terminate(tmp_path: Path) -> None:
    inst = _inst(tmp_path, "old")
    _ours(inst, "devenv-old")
    driver, replay = _driver({LIST: "list-verbose-devenv.utf16"})
    assert driver.power_down(inst, StepRecorder(), 90.0) is True
    driver.force_off(inst, StepRecorder())
    assert replay.argvs == [("wsl.exe", "--list", "--verbose")] * 2


def test_launch_of_a_distro_gone_from_wsl_says_so(tmp_path: Path) -> None:
    inst = _inst(tmp_path, "gone")
    _ours(inst, "devenv-gone")
    driver, _ = _driver({LIST: "list-verbose-devenv.utf16"})
    with pytest.raises(StateError) as e:
        driver.launch(inst, StepRecorder())
    assert e.value.message == ("the WSL distro of `gone` (devenv-gone) is gone (unregistered outside devenv?)")


# -- where sshd answers ---------------------------------------------------------------------


def _answering(monkeypatch: pytest.MonkeyPatch, hosts: set[str]) -> None:
    from devenv.provision import readiness

    monkeypatch.setattr(readiness, "ssh_banner", lambda port, host="127.0.0.1", **k: host in hosts)
    monkeypatch.setattr(Wsl2Driver, "_keepalive_pid", lambda self, inst: 4242)


def test_localhost_forwarding_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = _inst(tmp_path)
    _ours(inst)
    (inst.dir / paths.SSH_PORT).write_text("2222\n")
    _answering(monkeypatch, {"127.0.0.1"})
    driver, replay = _driver({})
    driver._choose_address(inst, "devenv-app", 2222, StepRecorder())
    assert driver.endpoint(inst) == wsl2.Endpoint("127.0.0.1", 2222)
    assert replay.calls == []


def test_the_distros_own_address_when_localhost_forwarding_is_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After host sleep or in mirrored mode 127.0.0.1 stays silent: the address from `hostname -I` answers."""
    inst = _inst(tmp_path)
    _ours(inst)
    (inst.dir / paths.SSH_PORT).write_text("2222\n")
    _answering(monkeypatch, {"172.29.118.5"})
    hostname = ("--distribution", "devenv-app", "--user", "root", "--exec", "hostname", "-I")
    driver, _ = _driver({hostname: (b"172.29.118.5 fe80::215:5dff:fe4a:1 \n", 0)})
    steps = StepRecorder()
    driver._choose_address(inst, "devenv-app", 2222, steps)
    assert driver.endpoint(inst) == wsl2.Endpoint("172.29.118.5", 2222)
    assert steps.seen[-1] == "WSL's localhost forwarding does not answer: SSH goes to the distro at 172.29.118.5:2222"


def test_a_running_agent_is_told_where_sshd_answers_now(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wsl2.relocate, the host agent's question once its logins fail: to the distro's address and back again."""
    import json

    inst = _inst(tmp_path)
    _ours(inst)
    _answering(monkeypatch, {"172.29.118.5"})  # after Windows slept: localhost forwarding dead
    hostname = ("--distribution", "devenv-app", "--user", "root", "--exec", "hostname", "-I")
    driver, _ = _driver({hostname: (b"172.29.118.5 fe80::215:5dff:fe4a:1 \n", 0)})
    assert wsl2.relocate(inst.dir, 2222, driver) == "172.29.118.5"
    assert json.loads((inst.dir / wsl2.RECORD).read_text())["ssh_host"] == "172.29.118.5"  # what later commands read
    (inst.dir / paths.SSH_PORT).write_text("2222\n")
    assert driver.endpoint(inst) == wsl2.Endpoint("172.29.118.5", 2222)

    _answering(monkeypatch, {"127.0.0.1", "172.29.118.5"})  # the forwarding answers again: it comes first
    assert wsl2.relocate(inst.dir, 2222, driver) == "127.0.0.1"
    assert driver.endpoint(inst) == wsl2.Endpoint("127.0.0.1", 2222)

    _answering(monkeypatch, set())  # neither (the distro stopping): nothing changes, the agent keeps trying
    before = (inst.dir / wsl2.RECORD).read_text()
    assert wsl2.relocate(inst.dir, 2222, driver) == ""
    assert (inst.dir / wsl2.RECORD).read_text() == before
    assert wsl2.relocate(tmp_path / "no-such-instance", 2222, driver) == ""


def test_the_agent_of_a_distro_is_given_the_question(tmp_path: Path) -> None:
    from devenv.backends.vm.agent import agent_args

    inst = _inst(tmp_path)
    _ours(inst)
    (inst.dir / paths.SSH_PORT).write_text("2222\n")
    driver, _ = _driver({})
    _, args = agent_args(driver, inst)
    assert args[args.index("--relocate") + 1] == "devenv.backends.drivers.wsl2:relocate"
    from devenv.hostagent.__main__ import parse

    assert parse([str(inst.dir), *args]).relocate == "devenv.backends.drivers.wsl2:relocate"


def test_recorded_outputs_used_here_exist() -> None:
    assert data("list-verbose-devenv.utf16").startswith("  NAME".encode("utf-16-le"))


def test_an_import_that_fails_is_tried_again_at_the_next_start(tmp_path: Path) -> None:
    """Recorded (the import's HCS_E_SERVICE_NOT_AVAILABLE): the fix is raised, and the record does not claim a distro."""
    import json

    inst = _inst(tmp_path, "app")
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"")
    (inst.dir / wsl2.RECORD).write_text(json.dumps({"image": "debian-12", "tarball": str(tarball)}))
    folder = str((inst.dir / "wsl").absolute())
    driver, _ = _driver(
        {
            LIST: "list-verbose-none.utf16",
            ("--list", "--quiet"): "list-quiet-none.utf16",
            ("--import", "devenv-app", folder, str(tarball), "--version", "2"): "import-vmp-off.utf8",
        }
    )
    with pytest.raises(wslexe.VirtualMachinePlatformOff):
        driver.launch(inst, StepRecorder())
    assert json.loads((inst.dir / wsl2.RECORD).read_text()) == {"image": "debian-12", "tarball": str(tarball)}


def test_launch_copies_the_seed_in_and_starts_the_keepalive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact command lines of a launch of an imported distro (the listing is a recording)."""
    from devenv.provision import seed

    inst = _inst(tmp_path, "old")
    _ours(inst, "devenv-old")
    monkeypatch.setattr(
        seed,
        "read_seed_iso",
        lambda p: seed.SeedImage("cidata", {"devenv-seed.json": b"{}", "devenv-earlyboot.py": b"#"}, ()),
    )
    started: list[list[str]] = []

    class Proc:
        pid = 4242

    monkeypatch.setattr(wsl2.subprocess, "Popen", lambda argv, **kw: started.append(argv) or Proc())
    monkeypatch.setattr(Wsl2Driver, "_choose_address", lambda self, *a: None)
    monkeypatch.setattr("devenv.backends.drivers.qemuproc.ssh_port_for", lambda d: 40022)
    copy = (
        'mkdir -p "$(dirname /var/lib/devenv/wsl)" && mkdir -p -m 0700 /var/lib/devenv/wsl && umask 077'
        ' && cat > "/var/lib/devenv/wsl/{0}.new" && mv "/var/lib/devenv/wsl/{0}.new" "/var/lib/devenv/wsl/{0}"'
    )
    boot = (
        'mkdir -p "$(dirname /usr/local/lib/devenv/wsl-boot.sh)" && cat > /usr/local/lib/devenv/wsl-boot.sh'
        " && chmod 0755 /usr/local/lib/devenv/wsl-boot.sh"
    )
    root = ("--distribution", "devenv-old", "--user", "root", "--exec", "/bin/sh", "-c")
    driver, replay = _driver(
        {
            LIST: "list-verbose-devenv.utf16",
            (*root, copy.format("devenv-seed.json")): (b"", 0),
            (*root, copy.format("devenv-earlyboot.py")): (b"", 0),
            (*root, boot): (b"", 0),
        }
    )
    driver.launch(inst, StepRecorder())
    assert [c.input for c in replay.calls[1:]][:2] == [b"{}", b"#"]
    assert (replay.calls[3].input or b"").startswith(b"#!/bin/sh\n# devenv: each start of a WSL distro")
    assert started == [
        ["wsl.exe", "--distribution", "devenv-old", "--user", "root", "--exec", "/bin/sh", wsl2.BOOT_SCRIPT, "40022"]
    ]
    assert (inst.dir / wsl2.KEEPALIVE_PID).read_text() == "4242\n"
    assert (inst.dir / paths.SSH_PORT).read_text() == "40022\n"
