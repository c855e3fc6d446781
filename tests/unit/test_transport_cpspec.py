"""`devenv cp` argument parsing: which side is the guest, and the exact errors."""

from __future__ import annotations

import pytest

from devenv.errors import UsageError
from devenv.transport.cpspec import CopyEndpoint, CopyPlan, parse_copy_args, parse_endpoint


@pytest.mark.parametrize(
    ("arg", "instance", "path"),
    [
        ("default:/tmp/x", "default", "/tmp/x"),
        ("vm-1.dev_2:rel/path", "vm-1.dev_2", "rel/path"),
        ("vm:", "vm", "."),
        ("vm:~/x", "vm", "~/x"),
        ("vm:/a:b", "vm", "/a:b"),
        ("9:/x", "9", "/x"),  # digits cannot be a drive letter
        ("/abs/path", None, "/abs/path"),
        ("/abs/with:colon", None, "/abs/with:colon"),
        ("./vm:x", None, "./vm:x"),
        ("../vm:x", None, "../vm:x"),
        ("~/vm:x", None, "~/vm:x"),
        ("relative/file", None, "relative/file"),
        ("file.txt", None, "file.txt"),
        (".", None, "."),
        ("C:\\Users\\me", None, "C:\\Users\\me"),
        ("c:/Users/me", None, "c:/Users/me"),
        ("C:", None, "C:"),
        ("\\\\server\\share", None, "\\\\server\\share"),
        ("-bad:x", None, "-bad:x"),  # not a valid instance name
        ("has space:x", None, "has space:x"),
    ],
)
def test_parse_endpoint(arg: str, instance: str | None, path: str) -> None:
    assert parse_endpoint(arg) == CopyEndpoint(instance, path)


def test_endpoint_str_roundtrips() -> None:
    assert str(parse_endpoint("vm:/x")) == "vm:/x"
    assert str(parse_endpoint("/x")) == "/x"


def test_plans() -> None:
    assert parse_copy_args("./src", "vm:/dst") == CopyPlan("vm", "to_guest", "./src", "/dst")
    assert parse_copy_args("vm:/etc/os-release", ".") == CopyPlan("vm", "from_guest", ".", "/etc/os-release")
    assert parse_copy_args("C:\\data", "vm:/data") == CopyPlan("vm", "to_guest", "C:\\data", "/data")


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ("vm1:/x", "vm2:/y", "both `vm1:/x` and `vm2:/y` are paths inside an instance"),
        ("a:/x", "/y", "neither `a:/x` nor `/y` is a path inside an instance"),
        ("/x", "./y", "neither `/x` nor `./y` is a path inside an instance"),
        ("C:\\x", "/y", "neither `C:\\x` nor `/y` is a path inside an instance"),
        ("", "vm:/y", "an empty path was given"),
    ],
)
def test_errors(src: str, dst: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_copy_args(src, dst)
    assert err.value.message == message
    assert err.value.hint
