"""The WinRM transport: the real pywinrm over a real TLS socket to a local WS-Man server (tests/wsman_server.py).

Nothing of pywinrm is replaced: it opens the shell, runs the command,
receives the base64 streams and the exit code, signals and deletes the
shell, as against a Windows host. The server's envelopes are pywinrm's
recorded ones; behind it the stand-in PowerShell (tests/powershell_stand_in.py)
decodes the -EncodedCommand and replays recorded outputs. Authentication is
Basic, or NTLM (devenv's default) against pyspnego's acceptor with the TLS
channel binding checked. No Windows host was used: this checks devenv and
pywinrm against recordings.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("winrm", reason="pywinrm is not installed (pip install 'devenv[winrm]')")

from devenv.backends.drivers.powershell import PowerShell, PowerShellFailed, WinRMTarget, WinRMTransport
from devenv.errors import ConnectionFailed
from tests import hyperv_recordings as rec
from tests.wsman_server import WsmanServer, self_signed

STAND_IN = Path(__file__).resolve().parents[1] / "powershell_stand_in.py"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path / "scripts.jsonl"))
    monkeypatch.setenv("STANDIN_REPLAYS", str(tmp_path / "replays.json"))
    monkeypatch.setenv("DEVENV_HYPERV_PASSWORD", "pa55 word")
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return tmp_path


def answer(tmp: Path, *replays: dict[str, object]) -> None:
    (tmp / "replays.json").write_text(json.dumps(list(replays)))


def run_stand_in(command: str, args: list[str], stdin: bytes) -> tuple[int, bytes, bytes]:
    """The Windows host's side: what powershell.exe would do with the command WinRM was given."""
    assert command == "powershell.exe"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, str(STAND_IN), *args], input=stdin, capture_output=True, env=env, timeout=30)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def server(stand_in: Path) -> Iterator[tuple[WsmanServer, Path]]:
    tls, ca_file = self_signed(stand_in)
    with WsmanServer(run_stand_in, "ann", "pa55 word", tls) as s:
        yield s, ca_file


def transport(s: WsmanServer, ca_file: Path | str = "", user: str = "ann", auth: str = "basic") -> PowerShell:
    target = WinRMTarget(f"127.0.0.1:{s.port}", user, auth, str(ca_file))
    return PowerShell(WinRMTransport(target))


@pytest.fixture
def windows_account(stand_in: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The account DESK\\ann (password "pa55 word") in the store pyspnego's NTLM acceptor reads."""
    pytest.importorskip("spnego", reason="pyspnego comes with pywinrm's NTLM support (requests_ntlm)")
    store = stand_in / "ntlm-users"
    store.write_text("DESK:ann:pa55 word\n")  # Heimdal's DOMAIN:USER:PASSWORD
    monkeypatch.setenv("NTLM_USER_FILE", str(store))


@pytest.fixture
def ntlm_server(stand_in: Path, windows_account: None) -> Iterator[tuple[WsmanServer, Path]]:
    """The same server asking for NTLM (devenv's default hyperv_auth)."""
    tls, ca_file = self_signed(stand_in)
    with WsmanServer(run_stand_in, "", "", tls, auth="ntlm", server_cert=stand_in / "server.pem") as s:
        yield s, ca_file


def test_a_script_runs_over_https_with_the_ca_given(server: tuple[WsmanServer, Path], stand_in: Path) -> None:
    s, ca_file = server
    answer(
        stand_in, {"match": "Get-VM", "stdout": '{"Name":"dév","State":"Off"}\r\n', "stderr": rec.CLIXML_PROGRESS_ONLY}
    )
    result = transport(s, ca_file).run("Hyper-V\\Get-VM -Name 'dév' | ConvertTo-Json", "Get-VM dév")
    assert result.ok and result.json() == {"Name": "dév", "State": "Off"} and result.stderr == ""
    assert result.host == "127.0.0.1"
    assert s.seen.actions == ["Create", "Command", "Receive", "Receive", "Signal", "Delete"]
    assert s.seen.shell_options == {"WINRS_NOPROFILE": "TRUE", "WINRS_CODEPAGE": "65001"}
    ((command, args),) = s.seen.commands
    assert (command, args[:3]) == ("powershell.exe", ["-NoProfile", "-NonInteractive", "-EncodedCommand"])
    assert s.seen.open_shells == set()  # deleted after the command
    scripts = [json.loads(line) for line in (stand_in / "scripts.jsonl").read_text().splitlines()]
    assert scripts == ["Hyper-V\\Get-VM -Name 'dév' | ConvertTo-Json\n"]


def test_a_failure_over_winrm_names_the_cmdlet_and_the_host(server: tuple[WsmanServer, Path], stand_in: Path) -> None:
    """The recorded Write-Error CLIXML (pywinrm's), exit 1: judged by the exit code, decoded for the message."""
    s, ca_file = server
    answer(stand_in, {"match": "Write-Error", "stderr": rec.CLIXML_WRITE_ERROR, "code": 1})
    with pytest.raises(PowerShellFailed) as caught:
        transport(s, ca_file).json('Write-Error "Error"', "Write-Error")
    assert caught.value.message == "PowerShell on 127.0.0.1: `Write-Error` failed (exit 1): Error"


def test_the_certificate_is_checked_by_default(server: tuple[WsmanServer, Path]) -> None:
    s, _ = server
    with pytest.raises(ConnectionFailed) as caught:
        transport(s).run("Get-VM", "Get-VM")
    assert (
        caught.value.message
        == (
            f"WinRM at https://127.0.0.1:{s.port}/wsman: the host's certificate is not trusted"
            " ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate"
        )
        + ")"
    )
    assert caught.value.hint.startswith(
        "give its CA (or the self-signed certificate itself, as PEM) with hyperv_ca_file"
    )
    assert s.seen.actions == []  # nothing was sent to a host it could not trust


def test_a_wrong_password_is_said_with_where_the_password_comes_from(server: tuple[WsmanServer, Path]) -> None:
    s, ca_file = server
    with pytest.raises(ConnectionFailed) as caught:
        transport(s, ca_file, user="bob").run("Get-VM", "Get-VM")
    assert caught.value.message == (
        f"WinRM at https://127.0.0.1:{s.port}/wsman: bob was refused"
        " (the specified credentials were rejected by the server)"
    )
    assert "DEVENV_HYPERV_PASSWORD" in caught.value.hint and "devenv-hyperv bob@127.0.0.1" in caught.value.hint
    assert s.seen.users == ["bob"]


def test_ntlm_the_default_authenticates_over_https_bound_to_the_certificate(
    ntlm_server: tuple[WsmanServer, Path], stand_in: Path
) -> None:
    """pywinrm's NTLM (requests_ntlm) against pyspnego's acceptor: the handshake, then the script, over TLS.

    The acceptor checks the password and the channel binding the client
    computed from the server's certificate; no Windows host took part.
    """
    s, ca_file = ntlm_server
    answer(stand_in, {"match": "Get-VM", "stdout": '{"Name":"dev","State":"Running"}\r\n'})
    result = transport(s, ca_file, user="DESK\\ann", auth="ntlm").run("Hyper-V\\Get-VM -Name 'dev'", "Get-VM dev")
    assert result.ok and result.json() == {"Name": "dev", "State": "Running"}
    assert s.seen.users == ["DESK\\ann"] and s.seen.auth_failures == []  # one handshake for the whole shell
    assert s.seen.actions == ["Create", "Command", "Receive", "Receive", "Signal", "Delete"]


def test_ntlm_with_a_wrong_password_is_refused_and_said(
    ntlm_server: tuple[WsmanServer, Path], stand_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, ca_file = ntlm_server
    monkeypatch.setenv("DEVENV_HYPERV_PASSWORD", "not it")
    with pytest.raises(ConnectionFailed) as caught:
        transport(s, ca_file, user="DESK\\ann", auth="ntlm").run("Get-VM", "Get-VM")
    assert caught.value.message.startswith(f"WinRM at https://127.0.0.1:{s.port}/wsman: DESK\\ann was refused"), (
        caught.value.message
    )
    assert "DEVENV_HYPERV_PASSWORD" in caught.value.hint
    assert s.seen.auth_failures and s.seen.actions == []  # refused at the AUTHENTICATE: nothing ran


def test_ntlm_bound_to_another_certificate_is_refused(stand_in: Path, windows_account: None) -> None:
    """The binding is checked, not only sent: an acceptor expecting another certificate's hash refuses the client.

    That is what a TLS-intercepting proxy between devenv and a host that
    requires channel binding meets.
    """
    other = stand_in / "other"
    other.mkdir()
    self_signed(other)
    tls, ca_file = self_signed(stand_in)
    server = WsmanServer(run_stand_in, "", "", tls, auth="ntlm", server_cert=other / "server.pem")
    with server as s, pytest.raises(ConnectionFailed) as caught:
        transport(s, ca_file, user="DESK\\ann", auth="ntlm").run("Get-VM", "Get-VM")
    assert "DESK\\ann was refused" in caught.value.message, caught.value.message
    assert s.seen.auth_failures == ["BadBindingsError"], s.seen.auth_failures


def test_credssp_authenticates_over_https_and_hands_the_host_the_password(
    stand_in: Path, windows_account: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pywinrm's CredSSP (requests-credssp) against pyspnego's acceptor: TLS inside HTTP, NTLM inside that.

    The point of CredSSP (a second hop from the Hyper-V host, to a share
    say) is that the host gets the password itself, which is why devenv
    takes it over HTTPS only: the server records what it was given.
    """
    pytest.importorskip("requests_credssp", reason="pywinrm's CredSSP support (pip install 'pywinrm[credssp]')")
    tls, ca_file = self_signed(stand_in)
    answer(stand_in, {"match": "Get-VM", "stdout": '{"Name":"dev","State":"Off"}\r\n'})
    with WsmanServer(run_stand_in, "", "", tls, auth="credssp") as s:
        result = transport(s, ca_file, user="DESK\\ann", auth="credssp").run("Get-VM -Name 'dev'", "Get-VM dev")
        assert result.ok and result.json() == {"Name": "dev", "State": "Off"}
        assert s.seen.users == ["DESK\\ann"] and s.seen.delegated == [("DESK\\ann", "pa55 word")]
        monkeypatch.setenv("DEVENV_HYPERV_PASSWORD", "not it")
        with pytest.raises(ConnectionFailed) as caught:
            transport(s, ca_file, user="DESK\\ann", auth="credssp").run("Get-VM", "Get-VM")
    assert caught.value.message == (  # refused inside the handshake (a TSRequest's error code), not by a 401
        f"WinRM at https://127.0.0.1:{s.port}/wsman: DESK\\ann was refused"
        " (CredSSP, SEC_E_LOGON_DENIED: the logon was denied)"
    )
    assert "DEVENV_HYPERV_PASSWORD" in caught.value.hint
    # the acceptor answered with that code in the handshake, and took no password this time
    assert s.seen.users == ["DESK\\ann"] and s.seen.delegated == [("DESK\\ann", "pa55 word")]


def test_a_closed_port_is_winrm_refused(stand_in: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = WinRMTarget(f"127.0.0.1:{port}", "ann", "basic")
    with pytest.raises(ConnectionFailed) as caught:
        PowerShell(WinRMTransport(target)).run("Get-VM", "Get-VM")
    assert caught.value.message == (
        f"WinRM at https://127.0.0.1:{port}/wsman: the connection was refused or did not get through"
        " (Connection refused)"
    )
    assert caught.value.hint.startswith("on the Windows host, as administrator: `winrm quickconfig -transport:https`")


# -- files to the host, and the driver's remote create ------------------------------------

FACTS = {
    "user": "DESK\\ann",
    "admin": False,
    "in_group": True,
    "listed": True,
    "module": True,
    "vmms": "Running",
    "switch": {"name": "Default Switch", "id": "c08cb7b8-9b3c-408e-8e30-5e16a3aeb444", "type": "Internal"},
    "vhd_path": "C:\\Hyper-V\\Disks",
    "computer": "DESK",
}


def test_a_file_goes_to_the_host_over_the_session_whole_and_checked(
    server: tuple[WsmanServer, Path], stand_in: Path
) -> None:
    from devenv.backends.drivers import hypervcopy, hypervps

    s, ca_file = server
    local = stand_in / "base.vhdx"
    local.write_bytes(os.urandom(200 * 1024))
    received = stand_in / "received"
    answer(stand_in, {"match": "Move-Item", "stdin_to": str(received)})
    hypervcopy.copy(transport(s, ca_file), local, "C:\\Hyper-V\\Disks\\devenv\\bases\\b.vhdx", "hint")
    assert received.read_bytes() == local.read_bytes()
    assert s.seen.sends == 5  # 200 KiB in 48 KiB lines
    scripts = [json.loads(line) for line in (stand_in / "scripts.jsonl").read_text().splitlines()]
    sha = hypervcopy.sha256_of(local)
    assert scripts == [hypervps.receive_file("C:\\Hyper-V\\Disks\\devenv\\bases\\b.vhdx", sha)]
    assert f"if ($sum -ne '{sha}')" in scripts[0]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_remote_create_copies_the_base_once(
    server: tuple[WsmanServer, Path], stand_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver over WinRM (for_config's transport) to the stand-in, its answers built (tests/hyperv_recordings.py)."""
    from devenv import config
    from devenv.backends.base import InstanceRef
    from devenv.backends.drivers import hyperv, hypervimage, hypervps
    from tests.steprecorder import StepRecorder

    s, ca_file = server
    monkeypatch.setenv("DEVENV_CACHE", str(stand_in / "cache"))
    base = stand_in / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    cfg = config.Config(
        image=str(base), hyperv_host=f"127.0.0.1:{s.port}", hyperv_user="ann", hyperv_auth="basic",
        hyperv_ca_file=str(ca_file), disk=8 * 1024**3,
    )  # fmt: skip
    received = stand_in / "received"
    key = hypervimage.image_key("", base)
    remote_base = f"C:\\Hyper-V\\Disks\\devenv\\bases\\base-{key[:32]}.vhdx"

    def create(name: str, base_there: bool) -> list[str]:
        inst = InstanceRef(name, stand_in / name, cfg)
        inst.dir.mkdir()
        answer(
            stand_in,
            {"match": "Get-LocalGroupMember", "stdout": json.dumps(FACTS)},
            {"match": "New-VHD", "stdout": ""},
            {"match": "-InputObject (Test-Path", "stdout": "true" if base_there else "false"},
            {"match": "Move-Item", "stdin_to": str(received)},
            {"match": "fsutil", "stdout": ""},
        )
        steps = StepRecorder()
        hyperv.HypervDriver().create(inst, steps)
        folder = f"C:\\Hyper-V\\Disks\\devenv\\instances\\{hypervps.vm_name(name, inst.dir)}"
        assert json.loads((inst.dir / hyperv.RECORD).read_text()) == {
            "base": remote_base,
            "disk": f"{folder}\\disk.vhdx",
            "seed": f"{folder}\\cidata.iso",
            "folder": folder,
        }
        return steps.seen

    vhdx = hypervimage.vhdx_path(key)
    first = create("one", base_there=False)
    size = vhdx.stat().st_size / 1024**3
    assert first == [
        f"find image {base}",
        "convert img to a VHDX for Hyper-V (once per image)",
        f"copy the base VHDX ({size:.1f} GiB) to 127.0.0.1 over WinRM (once per image)",
        "prepare the base disk (not sparse, read-only)",
        "create a 8 GiB differencing disk on img",
    ]
    assert received.read_bytes() == vhdx.read_bytes()
    assert create("two", base_there=True) == [
        f"find image {base}",
        "prepare the base disk (not sparse, read-only)",
        "create a 8 GiB differencing disk on img",
    ]
