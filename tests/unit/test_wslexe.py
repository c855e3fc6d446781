"""wsl.exe's command lines, its decoding, its tables and its failures (devenv/backends/drivers/wslexe.py).

No Windows here: every output below is a recording (tests/fixtures/wsl/, each
file's source in index.json), replayed through tests/wslrecorded.py. What
these prove is that devenv reads those recordings right and builds these
exact command lines, not that a real wsl.exe answers so on every build.
"""

from __future__ import annotations

import pytest

from devenv.backends.drivers import wslexe
from devenv.backends.drivers.wslexe import Distro, Wsl, WslStatus
from devenv.errors import BackendUnavailable, CommandFailed, ExitCode, InstanceNotFound
from devenv.runner import Result
from tests.wslrecorded import FIXTURES, INDEX, Replay, data

DEVENV_ROWS = [
    Distro("Ubuntu", "Running", 2, True),
    Distro("devenv-app", "Running", 2),
    Distro("devenv-old", "Stopped", 2),
    Distro("devenv-mine", "Stopped", 2),
    Distro("legacy", "Stopped", 1),
]


def test_every_fixture_has_its_source_noted() -> None:
    """Each recording names where it comes from and how its bytes were made."""
    files = {p.name for p in FIXTURES.iterdir() if p.name != "index.json"}
    assert files == set(INDEX)
    for name, meta in INDEX.items():
        assert meta["source"] and meta["how"], name
        assert isinstance(meta["exit"], int) and isinstance(meta["argv"], list), name


# -- command lines --------------------------------------------------------------------------


def test_command_lines() -> None:
    assert wslexe.list_verbose() == ["wsl.exe", "--list", "--verbose"]
    assert wslexe.list_quiet() == ["wsl.exe", "--list", "--quiet"]
    assert wslexe.list_quiet(running=True) == ["wsl.exe", "--list", "--quiet", "--running"]
    assert wslexe.import_distro("devenv-app", r"C:\d\app\wsl", r"C:\d\app.tar") == [
        "wsl.exe", "--import", "devenv-app", r"C:\d\app\wsl", r"C:\d\app.tar", "--version", "2",
    ]  # fmt: skip
    assert wslexe.terminate("devenv-app") == ["wsl.exe", "--terminate", "devenv-app"]
    assert wslexe.unregister("devenv-app") == ["wsl.exe", "--unregister", "devenv-app"]
    assert wslexe.status() == ["wsl.exe", "--status"]
    assert wslexe.version(r"C:\Windows\System32\wsl.exe") == [r"C:\Windows\System32\wsl.exe", "--version"]


def test_run_in_passes_the_words_unchanged_without_a_shell() -> None:
    argv = wslexe.run_in("devenv-app", ["sh", "-c", 'echo "$HOME" && ls *'], user="devenv", cwd="/mnt/c/src/app")
    assert argv == [
        "wsl.exe", "--distribution", "devenv-app", "--user", "devenv", "--cd", "/mnt/c/src/app",
        "--exec", "sh", "-c", 'echo "$HOME" && ls *',
    ]  # fmt: skip
    assert wslexe.run_in("d", ["true"]) == ["wsl.exe", "--distribution", "d", "--user", "root", "--exec", "true"]
    with pytest.raises(ValueError):
        wslexe.run_in("d", [])


def test_display_is_a_windows_command_line() -> None:
    assert wslexe.display(["wsl.exe", "--import", "devenv-a", r"C:\Users\A B\x", "t.tar"]) == (
        r'wsl.exe --import devenv-a "C:\Users\A B\x" t.tar'
    )


# -- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "list-verbose-devenv.utf16",
        "list-verbose-devenv.utf8",
        "list-verbose-devenv-crcrlf.utf16",
        "list-verbose-devenv-bom.utf16",
    ],
)
def test_one_table_whatever_the_encoding_and_line_ends(name: str) -> None:
    """Recorded: UTF-16LE with and without BOM, UTF-8 (WSL_UTF8=1), `\\r\\r\\n` endings: the same rows."""
    text = wslexe.decode(data(name))
    assert "\r" not in text and "\x00" not in text
    assert wslexe.parse_list_verbose(text) == DEVENV_ROWS


def test_decode_exact_text() -> None:
    """Recorded (rancher-desktop#1655): the no-distro message, `\\r\\r\\n` and all, in UTF-16LE."""
    assert wslexe.decode(data("list-verbose-none.utf16")) == (
        "Windows Subsystem for Linux has no installed distributions.\n"
        "Distributions can be installed by visiting the Microsoft Store:\n"
        "https://aka.ms/wslstore\n"
    )


def test_decode_keeps_utf8_of_a_linux_program_and_odd_bytes() -> None:
    assert wslexe.decode("grüße\r\n".encode()) == "grüße\n"
    assert wslexe.decode(b"") == ""
    assert wslexe.decode(b"a") == "a"
    assert wslexe.decode("é".encode("utf-16-le") * 3 + b"x") == "ééé"  # a torn last unit is dropped
    assert wslexe.decode(b"\x00\x01\x02\x03binary\x00") == "\x00\x01\x02\x03binary\x00"  # not UTF-16 shaped


def test_exit_codes() -> None:
    assert wslexe.exit_text(4294967295) == "-1 (4294967295)"
    assert wslexe.exit_text(-1) == "-1 (4294967295)"
    assert wslexe.exit_text(1) == "1"


# -- parsers --------------------------------------------------------------------------------


def test_list_verbose_of_microsoft_wsl_5317() -> None:
    """Recorded (microsoft/WSL#5317), both encodings."""
    for name in ("list-verbose-issue5317.utf16", "list-verbose-issue5317.utf8"):
        assert wslexe.parse_list_verbose(wslexe.decode(data(name))) == [
            Distro("Ubuntu-20.04", "Running", 2, True),
            Distro("docker-desktop", "Running", 2),
        ]


def test_list_verbose_leaves_out_what_is_not_a_row() -> None:
    text = "  NAME   STATE   VERSION\n* a   Running   2\nsome warning: a newer wsl.exe says so\n  b  Stopped 1\n"
    assert wslexe.parse_list_verbose(text) == [Distro("a", "Running", 2, True), Distro("b", "Stopped", 1)]
    assert wslexe.parse_list_verbose("") == []


def test_list_quiet() -> None:
    """Recorded names (UTF-16LE), and a builds' blank padding."""
    assert wslexe.parse_list_quiet(wslexe.decode(data("list-quiet-devenv.utf16"))) == [
        "Ubuntu", "devenv-app", "devenv-old", "devenv-mine", "legacy",
    ]  # fmt: skip
    assert wslexe.parse_list_quiet("Ubuntu\n\n\n") == ["Ubuntu"]
    assert wslexe.parse_list_quiet(wslexe.decode(data("list-running-none.utf16"))) == []


def test_status() -> None:
    """Recorded (podman wutil_test.go): a healthy status, and one with the Virtual Machine Platform off."""
    assert wslexe.parse_status(wslexe.decode(data("status-ok.utf16"))) == WslStatus("Ubuntu", 2, ())
    off = wslexe.parse_status(wslexe.decode(data("status-vmp-off.utf16")))
    assert off.default_distro == "" and off.default_version == 2
    assert off.notes[0] == "WSL2 is not supported with your current machine configuration."
    assert len(off.notes) == 4


def test_version() -> None:
    """Recorded (microsoft/WSL#9748)."""
    v = wslexe.parse_version(wslexe.decode(data("version.utf16")))
    assert v["WSL version"] == "1.1.3.0"
    assert v["Kernel version"] == "5.15.90.1"
    assert len(v) == 7


def test_error_code_and_message() -> None:
    text = wslexe.decode(data("distro-missing.utf16"))
    assert wslexe.error_code(text) == "Wsl/Service/WSL_E_DISTRO_NOT_FOUND"
    assert wslexe.message(text) == "There is no distribution with the supplied name."
    assert wslexe.error_code("no code here\n") == ""


# -- failures -------------------------------------------------------------------------------


def _failed(name: str, argv: tuple[str, ...] = ("wsl.exe", "--import", "devenv-app", "C:\\w", "C:\\t.tar")) -> Result:
    from tests.wslrecorded import exit_of

    return Result(argv, exit_of(name), wslexe.decode(data(name)), "")


def test_virtualization_off_is_unavailable_with_the_firmware_fix() -> None:
    """Recorded: the current wording with its error code (UTF-8), and the 0x80370102 one (UTF-16)."""
    for name in ("import-virtualization-off.utf8", "import-virtualization-off-old.utf16"):
        err = wslexe.failure(_failed(name), "import devenv-app")
        assert type(err) is wslexe.VirtualizationOff and isinstance(err, BackendUnavailable)
        assert err.exit_code == ExitCode.UNAVAILABLE
        assert err.hint == wslexe.VIRTUALIZATION_HINT
        assert err.message.startswith(
            "WSL2 cannot start a VM on this PC: virtualization is not enabled (could not import devenv-app)\n"
            "`wsl.exe --import devenv-app C:\\w C:\\t.tar` exited with -1 (4294967295):\n"
        )
    err = wslexe.failure(_failed("import-virtualization-off.utf8"), "import devenv-app")
    assert err.message.endswith(
        "in your computer's firmware settings.\n"
        "(Error code: Wsl/Service/RegisterDistro/CreateVm/HCS/HCS_E_HYPERV_NOT_INSTALLED)"
    )


def test_virtual_machine_platform_off() -> None:
    """Recorded: the HCS_E_SERVICE_NOT_AVAILABLE import failure, and `--status` text that says so."""
    err = wslexe.failure(_failed("import-vmp-off.utf8"), "import devenv-app")
    assert type(err) is wslexe.VirtualMachinePlatformOff
    assert err.exit_code == ExitCode.UNAVAILABLE
    assert "`wsl.exe --install --no-distribution`" in err.hint and "restart Windows" in err.hint
    assert wslexe.classify(wslexe.decode(data("status-vmp-off.utf16"))) is wslexe.VirtualMachinePlatformOff
    hcs = "x\nError code: Wsl/Service/RegisterDistro/CreateVm/HCS/ERROR_NOT_SUPPORTED\n"
    assert wslexe.classify(hcs) is wslexe.VirtualMachinePlatformOff


def test_wsl_not_installed() -> None:
    """Recorded (podman wutil_test.go): the inbox wsl.exe's answer, UTF-16 although WSL_UTF8 was set."""
    err = wslexe.failure(_failed("not-installed.utf16", ("wsl.exe", "--list", "--verbose")), "list the WSL distros")
    assert type(err) is wslexe.WslNotInstalled
    assert err.exit_code == ExitCode.UNAVAILABLE
    assert err.hint == wslexe.INSTALL_HINT
    assert err.message == (
        "WSL is not installed on this PC (could not list the WSL distros)\n"
        "`wsl.exe --list --verbose` exited with 1:\n"
        "The Windows Subsystem for Linux is not installed. You can install by running 'wsl.exe --install'.\n"
        "For more information please visit https://aka.ms/wslinstall"
    )


def test_distro_missing_is_not_found() -> None:
    """Recorded in both encodings."""
    for name in ("distro-missing.utf8", "distro-missing.utf16"):
        err = wslexe.failure(_failed(name, ("wsl.exe", "--terminate", "devenv-gone")), "x", distro="devenv-gone")
        assert type(err) is wslexe.DistroMissing and isinstance(err, InstanceNotFound)
        assert err.exit_code == ExitCode.NOT_FOUND
        assert err.message.startswith("WSL has no distro named devenv-gone")
        assert err.message.endswith("(Error code: Wsl/Service/WSL_E_DISTRO_NOT_FOUND)")


def test_any_other_failure_shows_the_command_and_what_it_said() -> None:
    result = Result(
        ("wsl.exe", "--unregister", "devenv-a"), 4294967295, "Something else.\nError code: Wsl/E_FAIL\n", ""
    )
    err = wslexe.failure(result, "unregister devenv-a")
    assert type(err) is CommandFailed and err.exit_code == ExitCode.COMMAND_FAILED
    assert err.message == (
        "could not unregister devenv-a: `wsl.exe --unregister devenv-a` exited with -1 (4294967295):\n"
        "Something else.\n(Error code: Wsl/E_FAIL)"
    )
    assert err.hint == "run `wsl.exe --unregister devenv-a` by hand to see all it says"


def test_exit_codes_are_distinct_from_each_other_where_the_fix_differs_in_kind() -> None:
    """Host setup (69: enable something on Windows) is told apart from a distro gone (66) and a failure (72)."""
    codes = {cls.exit_code for cls in (wslexe.DistroMissing, wslexe.VirtualizationOff, CommandFailed)}
    assert codes == {ExitCode.NOT_FOUND, ExitCode.UNAVAILABLE, ExitCode.COMMAND_FAILED}


# -- the Wsl object against recordings ------------------------------------------------------


def test_every_call_sets_wsl_utf8_and_a_timeout() -> None:
    replay = Replay({("--list", "--verbose"): "list-verbose-devenv.utf16"})
    assert Wsl(run=replay, environ={"PATH": "x", "WSL_UTF8": "0"}).distros() == DEVENV_ROWS
    (call,) = replay.calls
    assert call.argv == ("wsl.exe", "--list", "--verbose")
    assert call.env == {"PATH": "x", "WSL_UTF8": "1"}
    assert call.timeout == wslexe.TIMEOUTS["list"]


def test_no_distros_in_either_wording_is_an_empty_list() -> None:
    """Recorded: the old no-distro failure (then `--list --quiet` answers empty) and the newer coded one."""
    replay = Replay(
        {("--list", "--verbose"): "list-verbose-none.utf16", ("--list", "--quiet"): "list-quiet-none.utf16"}
    )
    assert Wsl(run=replay, environ={}).distros() == []
    assert replay.argvs == [("wsl.exe", "--list", "--verbose"), ("wsl.exe", "--list", "--quiet")]
    replay = Replay({("--list", "--verbose"): "list-verbose-none-code.utf8"})
    assert Wsl(run=replay, environ={}).distros() == []
    assert len(replay.calls) == 1


def test_listing_when_wsl_is_not_installed_raises_the_install_fix() -> None:
    replay = Replay({("--list", "--verbose"): "not-installed.utf16"})
    with pytest.raises(wslexe.WslNotInstalled):
        Wsl(run=replay, environ={}).distros()


def test_a_missing_wsl_exe_is_wsl_not_installed_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(*a: object, **k: object) -> Result:
        raise BackendUnavailable("`wsl.exe` is not installed or not on PATH")

    monkeypatch.setattr(wslexe, "on_windows", lambda: True)
    with pytest.raises(wslexe.WslNotInstalled) as e:
        Wsl(run=absent, environ={}).distros()
    assert e.value.hint == wslexe.INSTALL_HINT
    monkeypatch.setattr(wslexe, "on_windows", lambda: False)
    with pytest.raises(BackendUnavailable) as other:
        Wsl(run=absent, environ={}).distros()
    assert type(other.value) is BackendUnavailable
    assert other.value.message == "the wsl2 backend runs on Windows: `wsl.exe` is not on PATH here"


def test_import_terminate_unregister_against_recordings() -> None:
    folder = "C:\\Users\\dev\\AppData\\Local\\devenv\\instances\\app\\wsl"
    tar = "C:\\Users\\dev\\AppData\\Local\\devenv\\instances\\app\\rootfs.tar"
    replay = Replay(
        {
            ("--import", "devenv-app", folder, tar, "--version", "2"): "import-ok.utf16",
            ("--terminate", "devenv-app"): "terminate-ok.utf8",
            ("--unregister", "devenv-app"): "unregister-ok.utf8",
            ("--terminate", "devenv-gone"): "distro-missing.utf16",
        }
    )
    wsl = Wsl(run=replay, environ={})
    wsl.import_distro("devenv-app", folder, tar)
    wsl.terminate("devenv-app")
    wsl.unregister("devenv-app")
    with pytest.raises(wslexe.DistroMissing):
        wsl.terminate("devenv-gone")
    assert [c.timeout for c in replay.calls] == [900.0, 120.0, 300.0, 120.0]


def test_import_failures_are_the_users_fixes() -> None:
    replay = Replay(
        {("--import", "devenv-app", "C:\\wsl\\app", "C:\\wsl\\app.tar", "--version", "2"): "import-vmp-off.utf8"}
    )
    with pytest.raises(wslexe.VirtualMachinePlatformOff):
        Wsl(run=replay, environ={}).import_distro("devenv-app", "C:\\wsl\\app", "C:\\wsl\\app.tar")


def test_run_in_returns_the_programs_own_exit_code_and_raises_wsls_own_failures() -> None:
    replay = Replay(
        {
            (
                "--distribution",
                "devenv-app",
                "--user",
                "root",
                "--exec",
                "echo",
                "hello from devenv-app",
            ): "exec-hello.utf8",
            ("--distribution", "devenv-app", "--user", "root", "--exec", "false"): (b"", 1),
            ("--distribution", "devenv-app", "--user", "root", "--exec", "sh", "-c", "exit 255"): (b"", 255),
            ("--distribution", "devenv-gone", "--user", "root", "--exec", "true"): "distro-missing.utf8",
        }
    )
    wsl = Wsl(run=replay, environ={})
    ok = wsl.run_in("devenv-app", ["echo", "hello from devenv-app"])
    assert (ok.returncode, ok.stdout) == (0, "hello from devenv-app\n")
    assert wsl.run_in("devenv-app", ["false"]).returncode == 1
    assert wsl.run_in("devenv-app", ["sh", "-c", "exit 255"]).returncode == 255
    with pytest.raises(wslexe.DistroMissing):
        wsl.run_in("devenv-gone", ["true"])


def test_status_and_version_calls() -> None:
    replay = Replay({("--status",): "status-ok.utf16", ("--version",): "version.utf16"})
    wsl = Wsl(run=replay, environ={})
    assert wsl.status() == WslStatus("Ubuntu", 2, ())
    assert wsl.version()["WSL version"] == "1.1.3.0"
    inbox = Replay(
        {("--version",): (b"Invalid command line argument: --version\r\n".decode().encode("utf-16-le"), 4294967295)}
    )
    assert Wsl(run=inbox, environ={}).version() == {}


def test_doctors_row_names_wsl_and_its_default_version() -> None:
    """Recorded `--status` (UTF-16LE) and `--version` (microsoft/WSL#9748)."""
    from devenv.hostos import Probe

    wsl = Wsl(
        exe="C:\\Windows\\system32\\wsl.exe",
        run=Replay({("--status",): "status-ok.utf16", ("--version",): "version.utf16"}),
        environ={},
    )
    assert wslexe.probe(wsl) == Probe(True, "C:\\Windows\\system32\\wsl.exe; WSL 1.1.3.0, default version 2")


def test_doctors_row_reads_the_virtual_machine_platform_off_from_status() -> None:
    """Recorded (podman wutil_test.go): `--status` succeeds, but its notes say WSL2 cannot run."""
    from devenv.hostos import Probe

    wsl = Wsl(run=Replay({("--status",): "status-vmp-off.utf16"}), environ={})
    assert wslexe.probe(wsl) == Probe(
        False, "wsl.exe: WSL2 is not supported with your current machine configuration.", wslexe.VMP_HINT
    )
    wsl = Wsl(run=Replay({("--status",): "not-installed.utf16"}), environ={})
    got = wslexe.probe(wsl)
    assert (got.ok, got.detail, got.fix) == (
        False,
        "WSL is not installed on this PC (could not read WSL's status)",
        wslexe.INSTALL_HINT,
    )
