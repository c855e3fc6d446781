"""One JSON object per line, encoded and decoded the way the json package does it, minus its import.

Both ends of devenv's JSON-lines protocols use it: the host agent's control
socket (hostagent/wire.py, on `devenv exec`'s fast path) and the host's side
of the guest agent protocol (guestagent/protocol.py). It sits below both so
neither imports the other. Stdlib only and cheap to import.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Json = dict[str, Any]

__all__ = ["decode", "encode", "loads"]


class _ScanContext:
    """What _json.make_scanner reads from a JSONDecoder: strict JSON, plain dicts and numbers."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    array_hook = None  # read from Python 3.15 on
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads reads them


def _codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    """json.dumps(compact) and json.loads as the json package does them, minus its import.

    `import json` costs `devenv exec` ~18 ms on a fresh interpreter because
    json.decoder imports re (and re enum); the wire format needs neither. The
    C accelerator _json is what json itself runs; the json package stays the
    fallback where _json is missing or has another signature.
    """
    try:
        import _json

        make = _json.make_encoder(None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, True)
        scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # duck-typed context, as in json.scanner
    except (ImportError, TypeError, AttributeError):
        import json

        return (lambda msg: json.dumps(msg, separators=(",", ":"))), json.loads

    def dumps(msg: Any) -> str:
        return "".join(make(msg, 0))

    def loads(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except Exception:  # StopIteration, or (3.11, json.decoder not loaded) a SystemError instead of its error
            end = -1
        if end < 0 or text[end:].strip(" \t\n\r"):
            import json  # the slow path: the json package raises the proper JSONDecodeError (a ValueError)

            return json.loads(text)
        return value

    return dumps, loads


def _unencodable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_dumps, loads = _codec()


def encode(msg: Json) -> bytes:
    return (_dumps(msg) + "\n").encode()


def decode(line: bytes) -> Json:
    msg = loads(line.decode())
    if not isinstance(msg, dict):
        raise ValueError("a control message must be a JSON object")
    return msg
