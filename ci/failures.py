"""Print the failed and errored tests of a JUnit XML report, a short line each.

CI keeps only the tail of a run's output, and pytest under CI=true never shortens an
assertion's diff: one failing comparison of a large bytes object can fill that whole tail.
ci/test.sh prints this list last, so the names of what failed are always what is seen.
"""

import sys
import xml.etree.ElementTree as ET

LIMIT = 300  # characters of each message: enough to tell the failures apart


def main(path: str) -> int:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"failures.py: no report to read at {path}: {e}")
        return 0
    lines = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            for what in case.findall(kind):
                message = " ".join((what.get("message") or "").split())
                if len(message) > LIMIT:
                    message = message[:LIMIT] + " [...]"
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                lines.append(f"{'FAILED' if kind == 'failure' else 'ERROR '} {name}: {message}")
    print(f"==> {len(lines)} failed or errored (from {path}):")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
