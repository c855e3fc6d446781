"""One PowerShell runner with two transports: this Windows host's powershell, or a Windows host's over WinRM.

Every script goes the same way whichever transport carries it: the prelude
(stop at the first error, no progress, UTF-8 out), the body, and a catch that
writes the error as one JSON line to stderr, so the message, the cmdlet and
its category arrive intact rather than as console text to pick apart. The
body answers through ConvertTo-Json on stdout. The script travels as
-EncodedCommand (base64 of UTF-16LE): no quoting rule of cmd.exe, WinRM or
the shell in between touches it.

Success is the exit status alone. stderr is not an error: PowerShell writes
progress records there as CLIXML even when all went well. A failure comes
back as PowerShellFailed naming the cmdlet, the host and the error's text,
decoded from CLIXML (psclixml.py) when it did not come through the catch
(a script PowerShell could not parse, a module that would not load).

Local: `powershell.exe` (Windows PowerShell 5.1, on every Windows), else
`pwsh`. Remote: pywinrm, an optional dependency imported only here, over
HTTPS (5986) with the server's certificate checked against the system's
CAs or the CA file given; NTLM by default, Kerberos or CredSSP when asked;
the password from DEVENV_HYPERV_PASSWORD or the OS keyring, never from a
file in the project. The remote shell runs with code page 65001 (UTF-8).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from devenv.backends.drivers.psclixml import PsError, decode, parse_error
from devenv.config import HYPERV_AUTHS as AUTHS
from devenv.errors import BackendUnavailable, CommandFailed, ConnectionFailed, Timeout, UsageError

if TYPE_CHECKING:
    from devenv.config import Config

LOCAL_PROGRAMS = ("powershell.exe", "powershell", "pwsh.exe", "pwsh")  # in this order: 5.1 is on every Windows
FLAGS = ("-NoProfile", "-NonInteractive", "-EncodedCommand")
PASSWORD_ENV = "DEVENV_HYPERV_PASSWORD"
KEYRING_SERVICE = "devenv-hyperv"  # keyring entry: this service, user "USER@HOST"
HTTPS_PORT = 5986
UTF8_CODEPAGE = 65001
ERROR_MARK = "DEVENV-PS-ERROR "  # the catch's line on stderr: this mark, then the error as JSON
DEFAULT_TIMEOUT = 120.0
MAX_ENCODED = 32_000  # CreateProcess takes a command line of up to 32767 characters
WINRM_HINT = "pip install 'devenv[winrm]'"

PRELUDE = """\
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false
try {
"""

# ${} names the variable so that nothing the body defines can shadow it
EPILOGUE = """
} catch {
  $e = $_
  $r = [ordered]@{
    message = $e.Exception.Message
    cmdlet = "$($e.InvocationInfo.MyCommand.Name)"
    category = "$($e.CategoryInfo.Category)"
    error_id = "$($e.FullyQualifiedErrorId)"
    exception = $e.Exception.GetType().FullName
  }
  [Console]::Error.WriteLine('DEVENV-PS-ERROR ' + (ConvertTo-Json -InputObject $r -Compress))
  exit 1
}
"""


def wrap(body: str) -> str:
    """The script as it runs: prelude, body, the catch that reports its error as JSON."""
    return PRELUDE + body.rstrip() + "\n" + EPILOGUE


def encode(script: str) -> str:
    """-EncodedCommand's argument: base64 of the script's UTF-16LE bytes (what powershell decodes)."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def quote(value: str) -> str:
    """A PowerShell single-quoted string literal: nothing inside is expanded; a quote is doubled."""
    return "'" + re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", value) + "'"


@dataclass(frozen=True)
class PsResult:
    """One script's run: the shape of devenv.runner.Result, plus the host and the decoded error.

    `stderr` is decoded (CLIXML errors and warnings as text, progress
    dropped); `error` is the first error, from the catch's JSON or CLIXML.
    """

    argv: tuple[str, ...]  # the command line that ran it (here, or on the host over WinRM)
    host: str  # "this host" or the WinRM host
    label: str  # what the script does, for messages: "Hyper-V\\Get-VM -Name 'x'"
    returncode: int
    stdout: str
    stderr: str
    error: PsError | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 12) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])

    def check(self, hint: str = "") -> PsResult:
        """Self when the script succeeded, else PowerShellFailed with its error's text."""
        if self.ok:
            return self
        raise PowerShellFailed(self, hint)

    def json(self) -> Any:
        """stdout as ConvertTo-Json wrote it; None for no output (the body returned nothing)."""
        text = self.stdout.strip().lstrip("\ufeff")
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise CommandFailed(
                f"PowerShell on {self.host}: `{self.label}` printed something that is not JSON:\n{text[:400]}",
                "a profile or module may print on load; devenv runs powershell with -NoProfile",
            ) from None


class PowerShellFailed(CommandFailed):
    """A script exited non-zero; `error` says which cmdlet failed and how (its category is not localized)."""

    def __init__(self, result: PsResult, hint: str = "") -> None:
        err = result.error
        said = err.message if err is not None else (result.tail() or "(no output)")
        who = f"`{err.cmdlet}`" if err is not None and err.cmdlet else f"`{result.label}`"
        where = f" ({result.label})" if err is not None and err.cmdlet and err.cmdlet not in result.label else ""
        super().__init__(
            f"PowerShell on {result.host}: {who}{where} failed (exit {result.returncode}): {said}",
            hint or "run the command in PowerShell by hand to see the whole output",
        )
        self.result = result
        self.error = err


class Transport(Protocol):
    """Carries one encoded script to a PowerShell and back: (argv, exit status, stdout, stderr)."""

    host: str

    def run(self, encoded: str, timeout: float, stdin: Iterable[str] = ()) -> tuple[tuple[str, ...], int, str, str]: ...


class LocalTransport:
    """powershell.exe (or pwsh) on this host, through devenv's one runner for external programs."""

    host = "this host"

    def __init__(self, program: str | None = None) -> None:
        self.program = program

    def _program(self) -> str:
        if self.program:
            return self.program
        for name in LOCAL_PROGRAMS:
            found = shutil.which(name)
            if found:
                return found
        raise BackendUnavailable(
            "neither powershell.exe nor pwsh is on PATH",
            "Hyper-V is managed through PowerShell: run devenv on the Windows host, or set hyperv_host in devenv.toml",
        )

    def run(self, encoded: str, timeout: float, stdin: Iterable[str] = ()) -> tuple[tuple[str, ...], int, str, str]:
        from devenv.runner import run

        argv = (self._program(), *FLAGS, encoded)
        data = "".join(stdin) or None
        r = run(argv, input=data, timeout=timeout, hint="PowerShell did not answer; is the Hyper-V host busy?")
        return r.argv, r.returncode, r.stdout, r.stderr


@dataclass(frozen=True)
class WinRMTarget:
    """Where and how to reach a Windows host's WinRM service (devenv.toml's hyperv_* keys)."""

    host: str  # "box", "box:5986" or "https://box:5986/wsman"
    user: str = ""
    auth: str = "ntlm"
    ca_file: str = ""  # a PEM CA bundle the host's certificate must chain to; "": the system's CAs

    @property
    def endpoint(self) -> str:
        """HTTPS on 5986 unless the host names a scheme or port itself."""
        m = re.match(
            r"^(?:(?P<scheme>https?)://)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?(?P<path>/.*)?$", self.host
        )
        if m is None:
            raise UsageError(
                f"hyperv_host = {self.host!r} is not a host name",
                'write it as "box", "box:5986" or "https://box/wsman"',
            )
        scheme = m.group("scheme") or "https"
        port = m.group("port") or (HTTPS_PORT if scheme == "https" else 5985)
        return f"{scheme}://{m.group('host')}:{port}{m.group('path') or '/wsman'}"

    @property
    def name(self) -> str:
        m = re.match(r"^(?:https?://)?(\[[^\]]+\]|[^:/]+)", self.host)
        return m.group(1) if m else self.host


def password_for(target: WinRMTarget) -> str:
    """DEVENV_HYPERV_PASSWORD, else the OS keyring's entry for USER@HOST; Kerberos needs none (its ticket)."""
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return value
    account = f"{target.user}@{target.name}"
    try:
        import keyring  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        keyring = None
    if keyring is not None:
        try:
            stored = keyring.get_password(KEYRING_SERVICE, account)
        except Exception:  # any backend's failure (no keyring daemon, locked): said below like a missing entry
            stored = None
        if stored:
            return str(stored)
    where = (
        f"`keyring set {KEYRING_SERVICE} {account}`"
        if keyring is not None
        else f"`pip install keyring` and `keyring set {KEYRING_SERVICE} {account}`"
    )
    raise UsageError(
        f"no password for {account} (WinRM, {target.auth})",
        f"set {PASSWORD_ENV}, or store it in the OS keyring with {where}; devenv.toml never holds it",
    )


class WinRMTransport:
    """powershell.exe on a Windows host, over WinRM with pywinrm (imported on first use)."""

    def __init__(self, target: WinRMTarget, read_timeout: int = 30) -> None:
        if target.auth not in AUTHS:
            raise UsageError(f"hyperv_auth = {target.auth!r} is not one of {', '.join(AUTHS)}")
        self.target = target
        self.host = target.name
        self.read_timeout = read_timeout
        self._proto: Any = None

    def _protocol(self) -> Any:
        if self._proto is not None:
            return self._proto
        try:
            from winrm.protocol import Protocol as WinRMProtocol
        except ModuleNotFoundError:
            raise BackendUnavailable(
                f"reaching the Hyper-V host {self.host} over WinRM needs the Python package pywinrm,"
                " which is not installed",
                WINRM_HINT,
            ) from None
        t = self.target
        if t.auth in ("credssp", "basic") and not t.endpoint.startswith("https://"):
            raise UsageError(
                f"hyperv_auth = {t.auth!r} sends the password itself: devenv uses it over HTTPS only",
                f'write hyperv_host as "{t.name}" (HTTPS on {HTTPS_PORT})',
            )
        password = None if t.auth == "kerberos" else password_for(t)
        options: dict[str, Any] = {
            "transport": t.auth,  # ntlm, kerberos, credssp or basic: pywinrm's names
            "username": t.user or None,
            "password": password,
            "server_cert_validation": "validate",
            "ca_trust_path": t.ca_file
            or "legacy_requests",  # legacy_requests: the system's CAs (or REQUESTS_CA_BUNDLE)
            "read_timeout_sec": self.read_timeout,
            "operation_timeout_sec": self.read_timeout - 10,
        }
        self._proto = WinRMProtocol(t.endpoint, **options)
        return self._proto

    def run(self, encoded: str, timeout: float, stdin: Iterable[str] = ()) -> tuple[tuple[str, ...], int, str, str]:
        """One shell per script: open it, run powershell.exe (no cmd.exe: its 8191-character line limit), close it.

        `stdin` goes in one WS-Man Send per piece, before the output is read.
        """
        argv = ("powershell.exe", *FLAGS, encoded)
        try:
            proto = self._protocol()
            shell = proto.open_shell(codepage=UTF8_CODEPAGE, noprofile=True)
            try:
                command = proto.run_command(shell, argv[0], list(argv[1:]), skip_cmd_shell=True)
                last: str | None = None
                for piece in stdin:
                    if last is not None:
                        proto.send_command_input(shell, command, last.encode(), end=False)
                    last = piece
                if last is not None:
                    proto.send_command_input(shell, command, last.encode(), end=True)
                out, err, code = self._output(proto, shell, command, timeout)
                proto.cleanup_command(shell, command)
            finally:
                proto.close_shell(shell)
        except Exception as e:
            if type(e).__module__.split(".")[0] in _WINRM_MODULES:
                raise translate_winrm(e, self.target) from None
            raise
        return argv, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _output(self, proto: Any, shell: str, command: str, timeout: float) -> tuple[bytes, bytes, int]:
        """Receive until the command is done; each Receive waits up to WinRM's operation timeout."""
        from winrm.exceptions import WinRMOperationTimeoutError

        out: list[bytes] = []
        err: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                o, e, code, done = proto.get_command_output_raw(shell, command)
            except WinRMOperationTimeoutError:
                o, e, code, done = b"", b"", -1, False
            out.append(o)
            err.append(e)
            if done:
                return b"".join(out), b"".join(err), code
            if time.monotonic() > deadline:
                raise Timeout(f"PowerShell on {self.host} did not finish within {timeout:g} s", "is the host busy?")


_WINRM_MODULES = ("winrm", "requests", "urllib3", "requests_ntlm", "spnego", "requests_credssp")


def translate_winrm(exc: BaseException, target: WinRMTarget) -> Exception:
    """One exception from pywinrm or requests as ConnectionFailed/BackendUnavailable with the fix."""
    import requests
    from winrm.exceptions import InvalidCredentialsError, WinRMError, WSManFaultError

    where = f"WinRM at {target.endpoint}"
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return ConnectionFailed(
                f"{where}: the host's certificate is not trusted ({_short(text)})",
                "give its CA (or the self-signed certificate itself, as PEM) with hyperv_ca_file in devenv.toml;"
                " devenv does not turn certificate checks off",
            )
        return ConnectionFailed(f"{where}: TLS failed ({_short(text)})", "is that port WinRM over HTTPS?")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ConnectionFailed(
            f"{where}: the connection was refused or did not get through ({_short(text)})",
            "on the Windows host, as administrator: `winrm quickconfig -transport:https` (it needs a certificate"
            f" for the host's name), and let TCP {HTTPS_PORT} through its firewall",
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return ConnectionFailed(f"{where} did not answer ({_short(text)})", "is the host up and the port open?")
    refusal = text if isinstance(exc, InvalidCredentialsError) else _credssp_refusal(exc)
    if refusal is not None:
        return ConnectionFailed(
            f"{where}: {target.user or 'the user'} was refused ({refusal})",
            f"check hyperv_user and the password ({PASSWORD_ENV} or the keyring entry"
            f" {KEYRING_SERVICE} {target.user}@{target.name}); a local account is written as .\\NAME or HOST\\NAME",
        )
    if isinstance(exc, WSManFaultError):
        return CommandFailed(f"{where}: the WS-Man service refused the request: {exc.reason}", "see the message")
    if isinstance(exc, WinRMError) and "is not installed" in text:
        extra = {"kerberos": "kerberos", "credssp": "credssp"}.get(target.auth, "")
        return BackendUnavailable(
            f"{where}: {text}", f"pip install 'pywinrm[{extra}]'" if extra else "pip install --upgrade pywinrm"
        )
    return ConnectionFailed(f"{where}: {text}", "see the message")


# What a CredSSP host answers inside the handshake (a TSRequest's errorCode, MS-CSSP 2.2.1) when it refuses
# the user: requests-credssp raises it as NTStatusException, where NTLM and Basic get an HTTP 401.
_CREDSSP_REFUSALS = {
    0x8009030C: "SEC_E_LOGON_DENIED: the logon was denied",
    0xC000006D: "STATUS_LOGON_FAILURE: unknown user name or bad password",
    0xC0000071: "STATUS_PASSWORD_EXPIRED: the password has expired",
    0xC0000072: "STATUS_ACCOUNT_DISABLED: the account is disabled",
}


def _credssp_refusal(exc: BaseException) -> str | None:
    """The reason a CredSSP host gave for refusing the user, or None when exc is not such a refusal."""
    if type(exc).__name__ != "NTStatusException":
        return None
    status = getattr(exc, "status", None)
    if not isinstance(status, int):
        return None
    reason = _CREDSSP_REFUSALS.get(status & 0xFFFFFFFF)
    return f"CredSSP, {reason}" if reason else None


def _short(text: str) -> str:
    """The reason inside requests' nested exception text, not its whole repr."""
    m = re.search(r"\[SSL: [A-Z_]+\][^'\"()]*|Connection refused|Name or service not known|timed out", text)
    return m.group(0).strip() if m else text[:200]


class PowerShell:
    """The runner: a transport, and every script wrapped, encoded and judged the same way."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def host(self) -> str:
        return self.transport.host

    def run(self, body: str, label: str, timeout: float = DEFAULT_TIMEOUT, stdin: Iterable[str] = ()) -> PsResult:
        """Run a script body (`stdin`: text its [Console]::In reads); a PsResult whatever its exit status."""
        encoded = encode(wrap(body))
        if len(encoded) > MAX_ENCODED:
            raise AssertionError(f"a PowerShell script of {len(encoded)} encoded characters is too long for Windows")
        argv, code, out, err = self.transport.run(encoded, timeout, stdin)
        error, shown = _error_of(err) if code != 0 else (None, decode(err).text)
        shown_argv = (*argv[:-1], f"<{len(argv[-1])} characters>")  # the base64 says nothing to a reader
        return PsResult(shown_argv, self.transport.host, label, code, out, shown, error)

    def json(self, body: str, label: str, hint: str = "", timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run, check, and parse what the body wrote through ConvertTo-Json."""
        return self.run(body, label, timeout).check(hint).json()


def _error_of(stderr: str) -> tuple[PsError | None, str]:
    """The error of a failed run (the catch's JSON line, else CLIXML's first error), and stderr as text."""
    lines = stderr.replace("\r", "").split("\n")
    for i, line in enumerate(lines):
        at = line.find(ERROR_MARK)
        if at < 0:
            continue
        try:
            data = json.loads(line[at + len(ERROR_MARK) :])
        except ValueError:
            continue
        rest = "\n".join([*lines[:i], line[:at], *lines[i + 1 :]])
        error = PsError(
            str(data.get("message") or "").strip(),
            str(data.get("cmdlet") or ""),
            str(data.get("category") or ""),
            str(data.get("error_id") or ""),
            str(data.get("exception") or ""),
        )
        return error, "\n".join(p for p in (error.message, decode(rest).text) if p)
    decoded = decode(stderr)
    return parse_error(decoded.errors or decoded.other), decoded.text


def for_config(cfg: Config) -> PowerShell:
    """This host's PowerShell, or the hyperv_host's over WinRM."""
    if not cfg.hyperv_host:
        return PowerShell(LocalTransport())
    target = WinRMTarget(cfg.hyperv_host, cfg.hyperv_user, cfg.hyperv_auth, cfg.hyperv_ca_file)
    return PowerShell(WinRMTransport(target))
