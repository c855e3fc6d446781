"""Read the guest's readiness line from its console log instead of guessing with timeouts.

The guest prints exactly one of these on the serial console (and on
/dev/virtio-ports/io.devenv.0 when the backend adds that port) at the end of
every boot (provisioning/cloud-init/firstboot.sh):

    DEVENV-READY
    DEVENV-FAILED step=NAME rc=N log=/var/log/devenv-provision.log

The backend truncates (or notes the size of) serial.log before each boot and
calls scan_console() on what was written since.
"""

from __future__ import annotations

from dataclasses import dataclass

from devenv.provision.userdata import FAILED_PREFIX, PROVISION_LOG, READY_LINE


@dataclass(frozen=True)
class Readiness:
    ready: bool
    failed: bool
    detail: dict[str, str]  # step, rc, log when failed

    @property
    def done(self) -> bool:
        return self.ready or self.failed

    def describe(self) -> str:
        if self.ready:
            return "guest is ready"
        if self.failed:
            d = self.detail
            return (
                f"provisioning failed in step `{d.get('step', '?')}` (exit code {d.get('rc', '?')}); "
                f"see {d.get('log', PROVISION_LOG)} in the guest"
            )
        return "guest has not finished booting"


NOT_YET = Readiness(ready=False, failed=False, detail={})


def scan_console(text: str) -> Readiness:
    """The first readiness line in `text` (console output may carry \\r and kernel noise)."""
    for raw in text.splitlines():
        line = raw.strip("\r\x00 ")
        idx = line.find(READY_LINE)
        if idx >= 0 and line[idx:].rstrip() == READY_LINE:
            return Readiness(ready=True, failed=False, detail={})
        idx = line.find(FAILED_PREFIX)
        if idx >= 0:
            fields = dict(p.split("=", 1) for p in line[idx + len(FAILED_PREFIX) :].split() if "=" in p)
            return Readiness(ready=False, failed=True, detail=fields)
    return NOT_YET
