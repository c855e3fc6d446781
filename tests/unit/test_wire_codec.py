"""The control wire's JSON codec (json's C half, without importing json) reads and writes what json does."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from devenv.hostagent import wire

SAMPLES = [
    {},
    {"op": "exec", "argv": ["sh", "-c", 'echo "$X" \\ done'], "env": {"K": "v a l"}, "cwd": None, "stdin": True},
    {"unicode": "grüße ✓ 𝄞", "ctrl": "\x00\x1f\t\n", "surrogate": "bad\udcffbyte"},
    {"n": [0, -1, 2**70, 1.5, -0.0, 1e300], "b": [True, False, None], "nested": {"a": [{"b": []}]}},
]


@pytest.mark.parametrize("msg", SAMPLES)
def test_encode_matches_json_dumps_and_round_trips(msg: dict[str, object]) -> None:
    line = wire.encode(msg)
    assert line == (json.dumps(msg, separators=(",", ":")) + "\n").encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert wire.decode(line) == msg


def test_decode_reads_what_json_writes_in_any_spacing() -> None:
    msg = {"exit_code": 3, "final": True, "error": "x\u00e9"}
    assert wire.decode(json.dumps(msg, indent=2).encode()) == msg
    assert wire.decode(b'  {"a": 1}  \n') == {"a": 1}
    assert math.isnan(wire.decode(b'{"x": NaN}')["x"])


@pytest.mark.parametrize("line", [b"[1, 2]\n", b'"s"\n', b"null\n"])
def test_decode_refuses_anything_but_an_object(line: bytes) -> None:
    with pytest.raises(ValueError, match="JSON object"):
        wire.decode(line)


@pytest.mark.parametrize("line", [b"{", b'{"a": 1} trailing', b"", b"{'a': 1}", b"\xff\xfe{}"])
def test_decode_errors_are_value_errors(line: bytes) -> None:
    with pytest.raises(ValueError):
        wire.decode(line)


def test_encode_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError, match="set"):
        wire.encode({"s": {1}})


def test_without_the_c_accelerator_the_json_package_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "_json", None)  # import _json now raises ImportError
    from devenv import jsonlines  # the codec the wire uses (guestagent.protocol uses it too)

    dumps, loads = jsonlines._codec()
    assert dumps(SAMPLES[1]) == json.dumps(SAMPLES[1], separators=(",", ":"))
    assert loads(dumps(SAMPLES[2])) == SAMPLES[2]


def test_a_cut_line_is_a_value_error_where_json_was_never_imported() -> None:
    """The exec client never imports json; _json's own errors need it (3.11 raised SystemError instead)."""
    code = (
        "import sys\n"
        "from devenv.hostagent import wire\n"
        "assert 'json' not in sys.modules and 'json.decoder' not in sys.modules\n"
        'for line in (b\'{"out":"stdout","data":"abc\', b\'{"a":"\\x01"}\', b\'{"a":1}\\x0b\'):\n'
        "    try:\n"
        "        wire.decode(line)\n"
        "    except ValueError:\n"
        "        continue\n"
        "    raise SystemExit(f'accepted {line!r}')\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")
