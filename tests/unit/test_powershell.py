"""The PowerShell runner: CLIXML decoding against recorded stderr, and the local transport run for real.

The local transport runs a stand-in `pwsh` (tests/powershell_stand_in.py) put
first on PATH: a real process, called with the real argv, that decodes the
-EncodedCommand as PowerShell would and answers from recordings
(tests/hyperv_recordings.py says where each comes from). No Windows host
was used: these check devenv against recordings, not against PowerShell.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from devenv import config
from devenv.backends.drivers import powershell, psclixml
from devenv.backends.drivers.powershell import (
    LocalTransport,
    PowerShell,
    PowerShellFailed,
    WinRMTarget,
    WinRMTransport,
    encode,
    password_for,
    quote,
    wrap,
)
from devenv.errors import BackendUnavailable, CommandFailed, UsageError
from tests import hyperv_recordings as rec

STAND_IN = Path(__file__).resolve().parents[1] / "powershell_stand_in.py"
REPO = Path(__file__).resolve().parents[2]


# -- CLIXML, against recorded stderr ----------------------------------------------


def test_an_unknown_command_recorded_over_winrm_decodes_to_its_console_text_without_progress() -> None:
    """Recorded (pywinrm's tests): progress records first, then the error's <S S="Error"> strings."""
    d = psclixml.decode(rec.CLIXML_UNKNOWN_COMMAND)
    assert d.errors == (
        "fake : The term 'fake' is not recognized as the name of a cmdlet, function, script file, or operable"
        " program. Check\n"
        "the spelling of the name, or if a path was included, verify that the path is correct and try again.\n"
        "At line:1 char:1\n"
        "+ fake cmdlet\n"
        "+ ~~~~\n"
        "    + CategoryInfo          : ObjectNotFound: (fake:String) [], CommandNotFoundException\n"
        "    + FullyQualifiedErrorId : CommandNotFoundException"
    )
    assert d.warnings == "" and d.other == ""
    assert psclixml.parse_error(d.errors) == psclixml.PsError(
        "The term 'fake' is not recognized as the name of a cmdlet, function, script file, or operable program."
        " Check the spelling of the name, or if a path was included, verify that the path is correct and try again.",
        "fake",
        "ObjectNotFound",
        "CommandNotFoundException",
        "CommandNotFoundException",
    )


def test_progress_alone_decodes_to_nothing() -> None:
    """Recorded (pywinrm's tests): a run that succeeded writes progress CLIXML to stderr all the same."""
    assert psclixml.decode(rec.CLIXML_PROGRESS_ONLY) == psclixml.Decoded()


def test_a_write_error_whose_lines_the_console_wrapped_mid_word() -> None:
    """Recorded (pywinrm's tests): CategoryInfo and the error id wrapped onto a second, indented line."""
    err = psclixml.parse_error(psclixml.decode(rec.CLIXML_WRITE_ERROR).errors)
    assert err == psclixml.PsError(
        "Error",
        "Write-Error",
        "NotSpecified",
        "Microsoft.PowerShell.Commands.WriteErrorException",
        "WriteErrorException",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            rec.GET_VM_NOT_FOUND,
            psclixml.PsError(
                'Hyper-V was unable to find a virtual machine with name "minikube".',
                "Get-VM",
                "InvalidArgument",
                "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM",
                "VirtualizationException",
            ),
        ),
        (
            rec.SET_VMFIRMWARE_NOT_FOUND,
            psclixml.PsError(
                'Hyper-V was unable to find a virtual machine with name "N1".',
                "Set-VMFirmware",
                "ObjectNotFound",
                "ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.SetVMFirmware",
                "VirtualizationException",
            ),
        ),
        (
            rec.GET_VM_NOT_A_COMMAND,
            psclixml.PsError(
                "Term 'Get-VM' not recognized as a cmdlet, function, executable program, or script file name."
                " Check the spelling of the name or verify that the path is included and correct, then try again.",
                "Get-VM",
                "ObjectNotFound",
                "CommandNotFoundException",
                "ParentContainsErrorRecordException",
            ),
        ),
        ("", None),
    ],
    ids=["get-vm-not-found", "set-vmfirmware-not-found", "no-hyper-v-module", "empty"],
)
def test_console_error_text_recorded_in_issues_parses_into_its_parts(
    text: str, expected: psclixml.PsError | None
) -> None:
    """Recorded: stderr as text (no CLIXML), as users pasted it into issues (tests/hyperv_recordings.py)."""
    assert psclixml.decode(text).other == text.strip()
    assert psclixml.parse_error(text) == expected


def test_escapes_and_text_around_the_clixml_are_kept() -> None:
    """Built: a line written straight to stderr before the CLIXML, and a warning record."""
    stderr = (
        "before\r\n#< CLIXML\r\n"
        '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        '<S S="warning">tab_x0009_end_x000D__x000A_</S></Objs>after\r\n'
    )
    assert psclixml.decode(stderr) == psclixml.Decoded("", "tab\tend", "before\nafter")


# -- the script as it travels -----------------------------------------------------


def test_the_script_travels_as_base64_of_utf16le() -> None:
    assert encode("Get-VM 'ä'") == "RwBlAHQALQBWAE0AIAAnAOQAJwA="
    assert wrap("Get-VM").startswith(powershell.PRELUDE)
    assert wrap("Get-VM\n\n").endswith("Get-VM\n" + powershell.EPILOGUE)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("plain", "'plain'"), ("it's", "'it''s'"), ("$(rm x) `n", "'$(rm x) `n'"), ("a\u2019b", "'a\u2019\u2019b'")],
)
def test_quote_makes_a_literal_powershell_never_expands(value: str, expected: str) -> None:
    assert quote(value) == expected


# -- the local transport, run for real against the stand-in -----------------------


class StandIn:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        pwsh = self.bin / "pwsh"
        pwsh.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} {STAND_IN} "$@"\n')
        pwsh.chmod(0o755)
        self.log = tmp / "scripts.jsonl"
        self.replays = tmp / "replays.json"
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin")
        monkeypatch.setenv("STANDIN_LOG", str(self.log))
        monkeypatch.setenv("STANDIN_REPLAYS", str(self.replays))

    def answer(self, *replays: dict[str, object]) -> None:
        self.replays.write_text(json.dumps(list(replays)))

    def scripts(self) -> list[str]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    return StandIn(tmp_path, monkeypatch)


def test_local_json_answer_with_progress_on_stderr_is_a_success(stand_in: StandIn) -> None:
    """Replays a built answer with the recorded progress-only CLIXML (pywinrm's) on stderr."""
    stand_in.answer(
        {"match": "Get-VM", "stdout": '{"Name":"a","State":"Running"}\r\n', "stderr": rec.CLIXML_PROGRESS_ONLY}
    )
    ps = PowerShell(LocalTransport())
    result = ps.run("Hyper-V\\Get-VM -Name 'a' | ConvertTo-Json", "Get-VM a")
    assert result.ok and result.stderr == "" and result.error is None
    assert result.json() == {"Name": "a", "State": "Running"}
    assert result.argv == (
        str(stand_in.bin / "pwsh"),
        "-NoProfile",
        "-NonInteractive",
        "-EncodedCommand",
        result.argv[-1],
    )
    assert result.argv[-1].startswith("<") and result.argv[-1].endswith(" characters>")
    assert stand_in.scripts() == ["Hyper-V\\Get-VM -Name 'a' | ConvertTo-Json\n"]


def test_local_error_from_the_catch_names_cmdlet_category_and_host(stand_in: StandIn) -> None:
    """Built: the catch's JSON line after recorded progress CLIXML; the message is minikube#8970's."""
    line = json.dumps(
        {
            "message": 'Hyper-V was unable to find a virtual machine with name "x".',
            "cmdlet": "Get-VM",
            "category": "InvalidArgument",
            "error_id": "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM",
            "exception": "Microsoft.HyperV.PowerShell.VirtualizationException",
        }
    )
    stand_in.answer(
        {"match": "Get-VM", "stderr": rec.CLIXML_PROGRESS_ONLY + "DEVENV-PS-ERROR " + line + "\r\n", "code": 1}
    )
    result = PowerShell(LocalTransport()).run("Hyper-V\\Get-VM -Name 'x'", "look up the VM x")
    assert not result.ok
    assert result.error == psclixml.PsError(
        'Hyper-V was unable to find a virtual machine with name "x".',
        "Get-VM",
        "InvalidArgument",
        "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM",
        "Microsoft.HyperV.PowerShell.VirtualizationException",
    )
    with pytest.raises(PowerShellFailed) as caught:
        result.check("the hint")
    assert caught.value.message == (
        "PowerShell on this host: `Get-VM` (look up the VM x) failed (exit 1):"
        ' Hyper-V was unable to find a virtual machine with name "x".'
    )
    assert caught.value.hint == "the hint"
    assert caught.value.error is result.error


def test_local_error_outside_the_catch_comes_from_clixml(stand_in: StandIn) -> None:
    """Recorded CLIXML (pywinrm's): an error PowerShell raised before devenv's catch could see it."""
    stand_in.answer({"match": "fake", "stderr": rec.CLIXML_UNKNOWN_COMMAND, "code": 1})
    with pytest.raises(PowerShellFailed) as caught:
        PowerShell(LocalTransport()).json("fake cmdlet", "fake cmdlet")
    assert caught.value.message.startswith(
        "PowerShell on this host: `fake` failed (exit 1): The term 'fake' is not recognized as the name of a cmdlet,"
    )
    assert caught.value.error is not None and caught.value.error.category == "ObjectNotFound"


def test_output_that_is_not_json_says_so(stand_in: StandIn) -> None:
    stand_in.answer({"match": "Get-VM", "stdout": "Loading personal profile...\r\n"})
    with pytest.raises(CommandFailed) as caught:
        PowerShell(LocalTransport()).json("Get-VM", "Get-VM")
    assert caught.value.message == (
        "PowerShell on this host: `Get-VM` printed something that is not JSON:\nLoading personal profile..."
    )


def test_no_output_is_none(stand_in: StandIn) -> None:
    stand_in.answer({"match": "Stop-VM", "stdout": ""})
    assert PowerShell(LocalTransport()).json("Stop-VM -Name 'a'", "Stop-VM") is None


def test_no_powershell_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable) as caught:
        PowerShell(LocalTransport()).run("Get-VM", "Get-VM")
    assert caught.value.message == "neither powershell.exe nor pwsh is on PATH"


# -- choosing the transport, the target and the password --------------------------


@pytest.mark.parametrize(
    ("host", "endpoint"),
    [
        ("box", "https://box:5986/wsman"),
        ("box.corp.example:443", "https://box.corp.example:443/wsman"),
        ("https://10.0.0.5/wsman", "https://10.0.0.5:5986/wsman"),
        ("http://lab:5985", "http://lab:5985/wsman"),
    ],
)
def test_winrm_endpoint_is_https_5986_unless_written(host: str, endpoint: str) -> None:
    assert WinRMTarget(host).endpoint == endpoint


def test_config_picks_the_transport() -> None:
    assert isinstance(powershell.for_config(config.Config()).transport, LocalTransport)
    remote = powershell.for_config(
        config.Config(hyperv_host="box", hyperv_user="ann", hyperv_auth="kerberos", hyperv_ca_file="/ca.pem")
    )
    assert isinstance(remote.transport, WinRMTransport)
    assert remote.transport.target == WinRMTarget("box", "ann", "kerberos", "/ca.pem")
    assert remote.host == "box"


def test_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_HYPERV_PASSWORD", "s3cret")
    assert password_for(WinRMTarget("box", "ann")) == "s3cret"


def test_password_from_the_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVENV_HYPERV_PASSWORD", raising=False)
    asked: list[tuple[str, str]] = []
    fake = types.ModuleType("keyring")
    fake.get_password = lambda service, account: asked.append((service, account)) or "from-keyring"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "keyring", fake)
    assert password_for(WinRMTarget("https://box:5986/wsman", "ann")) == "from-keyring"
    assert asked == [("devenv-hyperv", "ann@box")]


def test_no_password_anywhere_says_where_to_put_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVENV_HYPERV_PASSWORD", raising=False)
    monkeypatch.setitem(sys.modules, "keyring", None)  # not installed
    with pytest.raises(UsageError) as caught:
        password_for(WinRMTarget("box", "ann"))
    assert caught.value.message == "no password for ann@box (WinRM, ntlm)"
    assert caught.value.hint == (
        "set DEVENV_HYPERV_PASSWORD, or store it in the OS keyring with `pip install keyring` and"
        " `keyring set devenv-hyperv ann@box`; devenv.toml never holds it"
    )


def test_a_password_in_devenv_toml_is_refused() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.from_dict({"hyperv_password": "x"})
    assert caught.value.problems == [
        "devenv.toml: field `hyperv_password` is never read from a file: set DEVENV_HYPERV_PASSWORD or store it"
        " in the OS keyring"
    ]


def test_basic_auth_over_plain_http_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("winrm")
    monkeypatch.setenv("DEVENV_HYPERV_PASSWORD", "x")
    t = WinRMTransport(WinRMTarget("http://lab:5985", "ann", "basic"))
    with pytest.raises(UsageError) as caught:
        t.run("", 5)
    assert caught.value.message == "hyperv_auth = 'basic' sends the password itself: devenv uses it over HTTPS only"


def test_without_pywinrm_the_error_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "winrm" or m.startswith("winrm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "winrm", None)  # what an environment without pywinrm imports
    with pytest.raises(BackendUnavailable) as caught:
        WinRMTransport(WinRMTarget("box", "ann")).run("", 5)
    assert caught.value.message == (
        "reaching the Hyper-V host box over WinRM needs the Python package pywinrm, which is not installed"
    )
    assert caught.value.hint == "pip install 'devenv[winrm]'"
