"""A stand-in `pwsh` for tests: checks how it was called, decodes the script, replays a recorded answer.

Called as `pwsh -NoProfile -NonInteractive -EncodedCommand B64`, as devenv's
local transport calls PowerShell. It decodes B64 as UTF-16LE (what real
PowerShell does), checks the script is devenv's prelude + body + catch,
appends the body to $STANDIN_LOG (one JSON string per line), and answers
from $STANDIN_REPLAYS: a JSON list of {"match", "stdout", "stderr",
"code", "uses"}, the first whose "match" is in the body; one with "uses"
answers that many times, then gives way to the next (a VM Running, then
Off). No match is exit 99 with the body on stderr, so a test sees what it
did not expect. A replay with "stdin_to" writes what the script's stdin
carried, base64 lines decoded, to that file (as hypervps.receive_file does).
"""

from __future__ import annotations

import base64
import json
import os
import sys

from devenv.backends.drivers.powershell import EPILOGUE, PRELUDE


def main(argv: list[str]) -> int:
    if argv[:3] != ["-NoProfile", "-NonInteractive", "-EncodedCommand"] or len(argv) != 4:
        sys.stderr.write(f"stand-in pwsh: unexpected arguments {argv!r}\n")
        return 98
    script = base64.b64decode(argv[3], validate=True).decode("utf-16-le")
    if not (script.startswith(PRELUDE) and script.endswith(EPILOGUE)):
        sys.stderr.write("stand-in pwsh: the script lacks devenv's prelude or catch\n")
        return 97
    body = script[len(PRELUDE) : -len(EPILOGUE)]
    with open(os.environ["STANDIN_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(body) + "\n")
    with open(os.environ["STANDIN_REPLAYS"], encoding="utf-8") as f:
        replays = json.load(f)
    for r in replays:
        if r["match"] in body and r.get("uses", 1) > 0:
            if "uses" in r:
                r["uses"] -= 1
                with open(os.environ["STANDIN_REPLAYS"], "w", encoding="utf-8") as f:
                    json.dump(replays, f)
            if "stdin_to" in r:
                with open(r["stdin_to"], "wb") as out:
                    for line in sys.stdin:
                        if line.strip():
                            out.write(base64.b64decode(line.strip()))
            sys.stdout.buffer.write(r.get("stdout", "").encode())
            sys.stderr.buffer.write(r.get("stderr", "").encode())
            return int(r.get("code", 0))
    sys.stderr.write(f"stand-in pwsh: no recording for:\n{body}\n")
    return 99


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
