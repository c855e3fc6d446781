"""PowerShell's stderr as a person reads it: CLIXML decoded, progress dropped, an error's parts named.

A powershell.exe whose streams are redirected (and every one run over
WinRM) writes its error, warning and progress records to stderr as CLIXML:
a `#< CLIXML` line, then one or more <Objs> documents. Progress records
("Preparing modules for first use.") arrive even from a script that
succeeds, so stderr says nothing about success; the exit status does.
An error record is a run of <S S="Error"> strings with CR LF written as
_x000D__x000A_, which together are the error as the console would show it:

    Hyper-V\\Get-VM : Hyper-V was unable to find a virtual machine with name "x".
    At line:1 char:3
    ...
        + CategoryInfo          : InvalidArgument: (x:String) [Get-VM], VirtualizationException
        + FullyQualifiedErrorId : InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM

From that we keep the message, the cmdlet (from CategoryInfo's brackets,
which name it without the module prefix), the category and the error id:
a caller tells "no such VM" from "access denied" by them, not by the
message, which is localized. pywinrm's Session._clean_error_msg only joins
the strings; its test data (recorded on Windows) are among ours.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

HEADER = "#< CLIXML"
_NS = "{http://schemas.microsoft.com/powershell/2004/04}"
_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
_OBJS = re.compile(r"<Objs\b.*?</Objs>", re.DOTALL)
_CATEGORY = re.compile(r"^\s*\+\s*CategoryInfo\s*:\s*(\w+):.*?\[([^\]]*)\],\s*([\w.]+)\s*$")
_ERROR_ID = re.compile(r"^\s*\+\s*FullyQualifiedErrorId\s*:\s*(.+?)\s*$")
# "At line:1 char:3", "At C:\\path\\x.psm1:451 char:21" (localized: "In C:\\...", "Bei Zeile:1"), "+ code"
_POSITION = re.compile(r"^(\S+ \S*(line|Zeile|ligne|l\u00ednea):\d+|\S+ ([A-Za-z]:\\|\\\\)|\+ )")


@dataclass(frozen=True)
class Decoded:
    """stderr split by what it is: errors (as the console shows them), warnings, and text outside CLIXML."""

    errors: str = ""
    warnings: str = ""
    other: str = ""  # plain text: a stderr that was not CLIXML, or written around it ([Console]::Error)

    @property
    def text(self) -> str:
        return "\n".join(part for part in (self.errors, self.warnings, self.other) if part)


@dataclass(frozen=True)
class PsError:
    """One PowerShell error: what it says and which cmdlet said it, with the category and id to act on."""

    message: str
    cmdlet: str = ""  # "Get-VM"; "" when the error names none (a parse error, a `throw`)
    category: str = ""  # ErrorCategory: ObjectNotFound, PermissionDenied, InvalidArgument...
    error_id: str = ""  # FullyQualifiedErrorId: "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"
    exception: str = ""  # the exception's type name


def unescape(text: str) -> str:
    """CLIXML's _xHHHH_ escapes (CR, LF, tab and any character XML cannot hold) back to characters."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def decode(stderr: str) -> Decoded:
    """stderr of a PowerShell run, CLIXML or not; progress records are dropped."""
    start = stderr.find(HEADER)
    if start < 0:
        return Decoded(other=stderr.strip())
    before, body = stderr[:start], stderr[start + len(HEADER) :]
    errors: list[str] = []
    warnings: list[str] = []
    outside: list[str] = [before]
    at = 0
    for m in _OBJS.finditer(body):
        outside.append(body[at : m.start()])
        at = m.end()
        try:
            root = ET.fromstring(m.group(0))
        except ET.ParseError:
            outside.append(m.group(0))
            continue
        for node in root:
            if node.tag.removeprefix(_NS) != "S" or node.text is None:
                continue
            stream = (node.get("S") or "").lower()
            if stream == "error":
                errors.append(unescape(node.text))
            elif stream == "warning":
                warnings.append(unescape(node.text))
    outside.append(body[at:])
    other = "\n".join(s.strip() for s in outside if s.strip())
    return Decoded(_clean("".join(errors)), _clean("".join(warnings)), other)


def _clean(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").strip().splitlines())


def parse_error(text: str) -> PsError | None:
    """The first error in console-formatted error text; None for empty text.

    The message is what follows "Cmdlet : " on the first line, with the lines
    the console wrapped it onto, up to the position lines ("At line:1 char:3",
    "+ ...") that PowerShell adds after it.
    """
    lines: list[str] = []
    for line in text.replace("\r", "").split("\n"):
        # the console wraps "+ CategoryInfo : ..." lines mid-word, the rest indented by three spaces
        if lines and lines[-1].lstrip().startswith("+ ") and re.match(r"^ {3}\S", line) and " : " in lines[-1]:
            lines[-1] = lines[-1].rstrip() + line.strip()
        else:
            lines.append(line)
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return None
    message_lines: list[str] = []
    cmdlet = category = error_id = exception = ""
    in_message = True
    for line in lines:
        cat = _CATEGORY.match(line)
        if cat:
            category, cmdlet, exception = cat.group(1), cat.group(2), cat.group(3)
            continue
        eid = _ERROR_ID.match(line)
        if eid:
            error_id = eid.group(1)
            break  # the end of the first error record
        if in_message and (_POSITION.match(line.strip()) or not line.strip()):
            in_message = False
        if in_message:
            message_lines.append(line.strip())
    first = message_lines[0] if message_lines else lines[0].strip()
    said_by, sep, rest = first.partition(" : ")
    # "Hyper-V\Get-VM : message" (or `Write-Error "x" : message`): who said it, then the message
    if message_lines and sep and (" " not in said_by.strip() or (cmdlet and said_by.startswith(cmdlet))):
        message_lines[0] = rest
        cmdlet = cmdlet or said_by.rpartition("\\")[2]
    message = " ".join(part for part in message_lines if part)
    return PsError(message or first, cmdlet, category, error_id, exception)
