"""wsl.exe as devenv runs it: command lines, defensive decoding, the tables it prints, and its failures.

Everything the WSL2 driver asks of Windows goes through here, and through the
one runner (devenv.runner), so an error shows the command and what it said.
What wsl.exe does that a plain runner would get wrong (the sources are in
tests/fixtures/wsl/index.json, one per recorded output):

- It writes UTF-16LE (no BOM) unless WSL_UTF8=1, which Store WSL 0.64+
  honours and an inbox or not-yet-installed wsl.exe ignores. devenv always
  sets it and still decodes by looking: UTF-16 when the bytes say so.
  Old UTF-16 captures end lines with `\\r\\r\\n`; every `\\r` is dropped.
- Its error text goes to stdout, not stderr, and ends with an
  `Error code: Wsl/.../CODE` line, which is not localized and so is what
  failures are told apart by (the prose is, except for its URLs).
- It fails with exit -1, which Windows reports as 4294967295.

A Linux program run with `--exec` writes its own bytes through unchanged;
decode() takes those as UTF-8 unless they look like UTF-16 (an error wsl.exe
printed before the program ran).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from devenv.errors import BackendUnavailable, CommandFailed, DevenvError, InstanceNotFound
from devenv.runner import Result

if TYPE_CHECKING:
    from devenv.hostos import Probe

WSL_EXE = "wsl.exe"
UTF8_ENV = {"WSL_UTF8": "1"}
FAILED_EXIT = 0xFFFFFFFF  # wsl.exe's -1 as Windows (and so Python) reports it
# The states `--list --verbose` prints (ListDistributionsHelper): STATE column, not localized
STATES = ("Stopped", "Running", "Installing", "Uninstalling", "Converting", "Exporting")
# How long each kind of call may take before devenv stops waiting (wsl.exe is known to hang
# when the WSL service does): an import unpacks a rootfs, the rest answer in seconds
TIMEOUTS = {"list": 60.0, "import": 900.0, "terminate": 120.0, "unregister": 300.0, "status": 60.0, "run": 600.0}

INSTALL_HINT = (
    "in an administrator PowerShell run `wsl.exe --install --no-distribution`, then restart Windows"
    " (https://aka.ms/wslinstall)"
)
VMP_HINT = (
    'turn on the "Virtual Machine Platform" Windows feature: in an administrator PowerShell run'
    " `wsl.exe --install --no-distribution` (or `dism.exe /online /enable-feature"
    " /featurename:VirtualMachinePlatform /all /norestart`), then restart Windows"
)
VIRTUALIZATION_HINT = (
    'turn on hardware virtualization (Intel VT-x / AMD-V, "SVM") in the PC\'s firmware (BIOS/UEFI) settings;'
    " if it is on already, run `bcdedit /set hypervisorlaunchtype auto` in an administrator prompt,"
    " make sure the Virtual Machine Platform feature is on (`wsl.exe --install --no-distribution`),"
    " and restart Windows (https://aka.ms/enablevirtualization)"
)


def on_windows() -> bool:
    return os.name == "nt"


def looks_utf16(data: bytes) -> bool:
    """UTF-16LE text: a BOM, or mostly NUL high bytes (ASCII-range text is all wsl.exe prints in English)."""
    if data.startswith(b"\xff\xfe"):
        return True
    if len(data) < 2:
        return False
    highs = data[1::2]
    lows = data[0::2]
    zero_high = highs.count(0)
    # every other byte a NUL, the others not: UTF-8 (even a program's binary output) is rarely so
    return zero_high * 10 >= len(highs) * 6 and lows.count(0) * 10 < len(lows) * 2


def decode(data: bytes) -> str:
    """wsl.exe's bytes as text, whichever encoding it chose; `\\r` dropped (`\\r\\n` and `\\r\\r\\n` alike)."""
    if looks_utf16(data):
        body = data[2:] if data.startswith(b"\xff\xfe") else data
        if len(body) % 2:
            body = body[:-1]  # a torn last code unit: the rest is still the message
        text = body.decode("utf-16-le", errors="replace")
    else:
        text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    return text.replace("\r", "")


def exit_text(code: int) -> str:
    """An exit code as wsl.exe users see it in reports: -1 is shown as both spellings."""
    if code in (-1, FAILED_EXIT):
        return "-1 (4294967295)"
    return str(code)


def failed(code: int) -> bool:
    return code != 0


# -- command lines ----------------------------------------------------------------------


def list_verbose(exe: str = WSL_EXE) -> list[str]:
    return [exe, "--list", "--verbose"]


def list_quiet(exe: str = WSL_EXE, *, running: bool = False) -> list[str]:
    return [exe, "--list", "--quiet", *(["--running"] if running else [])]


def import_distro(distro: str, folder: str, tarball: str, exe: str = WSL_EXE) -> list[str]:
    """WSL2 explicitly: a default version of 1 (an old setting) would import a WSL1 distro."""
    return [exe, "--import", distro, folder, tarball, "--version", "2"]


def terminate(distro: str, exe: str = WSL_EXE) -> list[str]:
    return [exe, "--terminate", distro]


def unregister(distro: str, exe: str = WSL_EXE) -> list[str]:
    return [exe, "--unregister", distro]


def status(exe: str = WSL_EXE) -> list[str]:
    return [exe, "--status"]


def version(exe: str = WSL_EXE) -> list[str]:
    return [exe, "--version"]


def run_in(distro: str, argv: Sequence[str], *, user: str = "root", cwd: str = "", exe: str = WSL_EXE) -> list[str]:
    """A program in the distro, its arguments exactly as given.

    `--exec` runs it without the distro's shell: after `--` wsl.exe joins the
    words and hands them to `$SHELL -c`, which re-splits and expands them.
    """
    if not argv:
        raise ValueError("run_in needs a command")
    where = ["--cd", cwd] if cwd else []
    return [exe, "--distribution", distro, "--user", user, *where, "--exec", *argv]


def display(argv: Sequence[str]) -> str:
    """A command line as a Windows prompt would take it back (errors show it to be run by hand)."""
    return subprocess.list2cmdline(list(argv))


# -- what it prints -----------------------------------------------------------------------


@dataclass(frozen=True)
class Distro:
    name: str
    state: str  # one of STATES (or what a newer wsl.exe prints there)
    version: int  # 1 or 2
    default: bool = False


_ROW = re.compile(r"^(?P<mark>[* ])\s*(?P<name>\S+)\s+(?P<state>\S+)\s+(?P<version>\d+)\s*$")


def parse_list_verbose(text: str) -> list[Distro]:
    """The rows of `--list --verbose`; the header (NAME STATE VERSION, never localized) is skipped.

    Names hold no spaces (WSL refuses them), so whitespace splits a row as
    Lima does; `*` marks the default distro. Lines that are not rows (a
    warning a newer wsl.exe adds) are left out rather than misread.
    """
    out = []
    for line in text.replace("\r", "").split("\n"):
        if not line.strip():
            continue
        words = line.split()
        if words[:3] == ["NAME", "STATE", "VERSION"] or words[1:4] == ["NAME", "STATE", "VERSION"]:
            continue
        m = _ROW.match(line if line[:1] in ("*", " ") else " " + line)
        if m is None:
            continue
        out.append(Distro(m["name"], m["state"], int(m["version"]), m["mark"] == "*"))
    return out


def parse_list_quiet(text: str) -> list[str]:
    """`--list --quiet`: one name a line (blank lines padded in by some builds are dropped)."""
    return [line.strip() for line in text.replace("\r", "").split("\n") if line.strip() and " " not in line.strip()]


@dataclass(frozen=True)
class WslStatus:
    default_distro: str = ""
    default_version: int | None = None
    notes: tuple[str, ...] = ()  # the lines after those two: warnings about optional components


def parse_status(text: str) -> WslStatus:
    """`--status`. Its labels are localized: only the English ones are read; the lines are kept as notes anyway."""
    distro, ver, notes = "", None, []
    for line in text.replace("\r", "").split("\n"):
        line = line.strip()
        if not line:
            continue
        label, sep, value = line.partition(": ")
        if sep and label == "Default Distribution":
            distro = value.strip()
        elif sep and label == "Default Version" and value.strip().isdigit():
            ver = int(value.strip())
        else:
            notes.append(line)
    return WslStatus(distro, ver, tuple(notes))


def parse_version(text: str) -> dict[str, str]:
    """`--version`: "label: value" lines (the labels are localized; the first is WSL's own version)."""
    out: dict[str, str] = {}
    for line in text.replace("\r", "").split("\n"):
        label, sep, value = line.strip().partition(": ")
        if sep and label and value:
            out[label] = value.strip()
    return out


_CODE = re.compile(r"^Error code:\s*(\S+)\s*$", re.MULTILINE)


def error_code(text: str) -> str:
    """The `Error code: Wsl/…/CODE` line's path ("" without one: usage errors and no default distro)."""
    found = _CODE.findall(text.replace("\r", ""))
    return found[-1] if found else ""


def message(text: str) -> str:
    """What wsl.exe said, without the error-code line and blank lines."""
    return "\n".join(ln for ln in text.replace("\r", "").split("\n") if ln.strip() and not _CODE.match(ln))


# -- failures ------------------------------------------------------------------------------


class WslNotInstalled(BackendUnavailable):
    """WSL itself is missing: no wsl.exe, or the inbox one that only offers to install it."""


class VirtualMachinePlatformOff(BackendUnavailable):
    """WSL is there but WSL2's VMs cannot run: the Virtual Machine Platform feature is off (or not active yet)."""


class VirtualizationOff(BackendUnavailable):
    """Hyper-V's layer cannot start: virtualization is off in the firmware (HCS_E_HYPERV_NOT_INSTALLED)."""


class DistroMissing(InstanceNotFound):
    """No distro of that name (WSL_E_DISTRO_NOT_FOUND)."""


# Error codes (the last part of the `Error code:` path, never localized) and, for builds that print
# none, the text that means the same: URLs and hex codes first (not localized), then the English prose
_CODES: dict[str, type[DevenvError]] = {
    "WSL_E_DISTRO_NOT_FOUND": DistroMissing,
    "HCS_E_HYPERV_NOT_INSTALLED": VirtualizationOff,
    "HCS_E_SERVICE_NOT_AVAILABLE": VirtualMachinePlatformOff,
    "WSL_E_WSL_OPTIONAL_COMPONENT_REQUIRED": WslNotInstalled,
}
_TEXTS: tuple[tuple[tuple[str, ...], type[DevenvError]], ...] = (
    (("There is no distribution with the supplied name",), DistroMissing),
    (("0x80370102", "virtualization is not enabled on this machine"), VirtualizationOff),
    (
        (
            '"Virtual Machine Platform" optional component',
            "Virtual Machine Platform Windows feature",
            "aka.ms/enablevirtualization",
        ),
        VirtualMachinePlatformOff,
    ),
    (("aka.ms/wslinstall", "Windows Subsystem for Linux is not installed"), WslNotInstalled),
)


def classify(text: str) -> type[DevenvError] | None:
    """Which of the failures users meet this output is, None for any other.

    The error code decides when there is one. Without one, virtualization
    off is asked before the Virtual Machine Platform: both texts name
    aka.ms/enablevirtualization, and 0x80370102 is the firmware's.
    An HCS ERROR_NOT_SUPPORTED on import is the platform missing too (podman
    reads it so).
    """
    code = error_code(text)
    leaf = code.rsplit("/", 1)[-1]
    if leaf in _CODES:
        return _CODES[leaf]
    if leaf == "ERROR_NOT_SUPPORTED" and "/HCS/" in code:
        return VirtualMachinePlatformOff
    for needles, cls in _TEXTS:
        if any(n in text for n in needles):
            return cls
    return None


def failure(result: Result, doing: str, *, distro: str = "", hint: str = "") -> DevenvError:
    """The devenv error for a failed wsl.exe call: what failed, the command, what wsl.exe said, and the fix."""
    said = result.stdout.strip() or result.stderr.strip()
    code = error_code(said)
    shown = message(said)
    lines = shown.split("\n")[-8:] if shown else []
    detail = "\n".join(lines) + (f"\n(Error code: {code})" if code else "")
    command = f"`{display(result.argv)}` exited with {exit_text(result.returncode)}"
    text = f"{command}:\n{detail}" if detail else command
    cls = classify(said)
    if cls is DistroMissing:
        name = distro or "the distro"
        return DistroMissing(
            f"WSL has no distro named {name} (it was unregistered outside devenv?): could not {doing}\n{text}",
            hint or "`devenv delete NAME` forgets the instance; `devenv start` then makes it again",
        )
    if cls is VirtualizationOff:
        return VirtualizationOff(
            f"WSL2 cannot start a VM on this PC: virtualization is not enabled (could not {doing})\n{text}",
            VIRTUALIZATION_HINT,
        )
    if cls is VirtualMachinePlatformOff:
        return VirtualMachinePlatformOff(
            f"WSL2 cannot start a VM: the Virtual Machine Platform feature is off (could not {doing})\n{text}",
            VMP_HINT,
        )
    if cls is WslNotInstalled:
        return WslNotInstalled(f"WSL is not installed on this PC (could not {doing})\n{text}", INSTALL_HINT)
    return CommandFailed(
        f"could not {doing}: {text}",
        hint or f"run `{display(result.argv)}` by hand to see all it says",
    )


# -- running it ----------------------------------------------------------------------------


class RunFn(Protocol):
    """devenv.runner.run's shape, so tests hand in recorded answers instead of a wsl.exe."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = ...,
        env: Mapping[str, str] | None = ...,
        timeout: float | None = ...,
        decode: Callable[[bytes], str] | None = ...,
    ) -> Result: ...


def _default_run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    decode: Callable[[bytes], str] | None = None,
) -> Result:
    from devenv import runner

    return runner.run(argv, input=input, env=env, timeout=timeout, decode=decode)


@dataclass
class Wsl:
    """One wsl.exe, every call with WSL_UTF8=1 and the defensive decode; failures become devenv errors."""

    exe: str = WSL_EXE
    run: RunFn = field(default=_default_run)
    environ: Mapping[str, str] | None = None  # None: this process's

    def call(self, argv: Sequence[str], kind: str, *, input: bytes | None = None) -> Result:
        """The Result whatever the exit code; a wsl.exe that is not there is WslNotInstalled."""
        env = {**(os.environ if self.environ is None else self.environ), **UTF8_ENV}
        try:
            return self.run(argv, input=input, env=env, timeout=TIMEOUTS[kind], decode=decode)
        except BackendUnavailable as e:
            if type(e) is not BackendUnavailable:
                raise
            if not on_windows():
                raise BackendUnavailable(
                    f"the wsl2 backend runs on Windows: `{self.exe}` is not on PATH here",
                    'on this host use backend = "qemu" (or "native" on Linux with an engine)',
                ) from None
            raise WslNotInstalled(
                f"`{self.exe}` was not found: WSL is not installed on this PC ({e.message})", INSTALL_HINT
            ) from None

    def checked(self, argv: Sequence[str], kind: str, doing: str, *, distro: str = "") -> Result:
        result = self.call(argv, kind)
        if failed(result.returncode):
            raise failure(result, doing, distro=distro)
        return result

    def distros(self) -> list[Distro]:
        """Every registered distro with its state; [] when there is none.

        With none, `--list --verbose` fails (exit -1, a localized sentence, on
        newer builds WSL_E_DEFAULT_DISTRO_NOT_FOUND) while `--list --quiet`
        succeeds with nothing: the quiet one decides what such a failure meant.
        """
        result = self.call(list_verbose(self.exe), "list")
        if not failed(result.returncode):
            return parse_list_verbose(result.stdout)
        said = result.stdout + result.stderr
        if error_code(said).endswith("/WSL_E_DEFAULT_DISTRO_NOT_FOUND"):
            return []
        if classify(said) is None:
            quiet = self.call(list_quiet(self.exe), "list")
            if not failed(quiet.returncode) and not parse_list_quiet(quiet.stdout):
                return []
        raise failure(result, "list the WSL distros")

    def import_distro(self, distro: str, folder: str, tarball: str) -> None:
        self.checked(import_distro(distro, folder, tarball, self.exe), "import", f"import {distro}", distro=distro)

    def terminate(self, distro: str) -> None:
        self.checked(terminate(distro, self.exe), "terminate", f"terminate {distro}", distro=distro)

    def unregister(self, distro: str) -> None:
        self.checked(unregister(distro, self.exe), "unregister", f"unregister {distro}", distro=distro)

    def status(self) -> WslStatus:
        return parse_status(self.checked(status(self.exe), "status", "read WSL's status").stdout)

    def version(self) -> dict[str, str]:
        """{} from an inbox wsl.exe, which has no --version (it prints its usage and fails)."""
        result = self.call(version(self.exe), "status")
        return parse_version(result.stdout) if not failed(result.returncode) else {}

    def run_in(
        self, distro: str, argv: Sequence[str], *, user: str = "root", cwd: str = "", input: bytes | None = None
    ) -> Result:
        """A program in the distro; its Result as is (its own exit code), except wsl.exe's own failures.

        Those come before the program runs and carry an error code (the
        distro is gone, WSL2 cannot start): they raise, so a program's exit
        code is never mistaken for one of them or the other way round.
        """
        result = self.call(run_in(distro, argv, user=user, cwd=cwd, exe=self.exe), "run", input=input)
        if result.returncode in (-1, FAILED_EXIT) and error_code(result.stdout + result.stderr):
            raise failure(result, f"run {argv[0]} in {distro}", distro=distro)
        return result


def probe(wsl: Wsl) -> Probe:
    """doctor's row: WSL's version and default version, or the failure (with its fix) that keeps WSL2 off.

    `--status` succeeds with the Virtual Machine Platform off and says so in
    its notes: those are read as the failure they announce.
    """
    from devenv.hostos import Probe

    try:
        st = wsl.status()
    except DevenvError as e:
        return Probe(False, e.message.split("\n")[0], e.hint)
    off = classify("\n".join(st.notes))
    if off in (VirtualMachinePlatformOff, VirtualizationOff, WslNotInstalled):
        fix = {VirtualMachinePlatformOff: VMP_HINT, VirtualizationOff: VIRTUALIZATION_HINT}.get(off, INSTALL_HINT)
        return Probe(False, f"{wsl.exe}: {st.notes[0] if st.notes else 'WSL2 cannot run'}", fix)
    ver = wsl.version().get("WSL version", "inbox (no --version: update with `wsl.exe --update`)")
    default = f"default version {st.default_version}" if st.default_version else "default version unknown"
    note = " (devenv imports its distros as WSL2 all the same)" if st.default_version == 1 else ""
    return Probe(True, f"{wsl.exe}; WSL {ver}, {default}{note}")
