"""The cidata seed ISO and the user-data inside it, read back and checked line by line."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devenv import paths
from devenv.config import Config, Provision
from devenv.errors import ConfigError
from devenv.guestagent import protocol
from devenv.provision import assets, seed, userdata
from devenv.provision import keys as keys_mod

SYSTEM_SCRIPT = "apt-get install -y jq\necho 'done: \"$HOME\"' > /root/x\n"
USER_SCRIPT = "#!/bin/sh\necho \\\\ tab\there ünïcödé\n"


def make_config(**kw: Any) -> Config:
    base: dict[str, Any] = {
        "name": "demo",
        "runtime": "docker",
        "env": {"EDITOR": "vim", "GREETING": "hello $USER world"},
        "provision": (Provision(SYSTEM_SCRIPT, "system"), Provision(USER_SCRIPT, "user")),
    }
    base.update(kw)
    return Config(**base)


@pytest.fixture
def tz_root(tmp_path: Path) -> Path:
    root = tmp_path / "hostroot"
    (root / "etc").mkdir(parents=True)
    (root / "etc/timezone").write_text("Europe/Berlin\n")
    return root


@pytest.fixture
def built(tmp_path: Path, tz_root: Path) -> tuple[seed.SeedResult, seed.SeedImage]:
    result = seed.prepare_seed(
        tmp_path / "inst",
        make_config(),
        environ={"https_proxy": "http://user:pw@127.0.0.1:3128", "NO_PROXY": "corp.example"},
        host_address="10.0.2.2",
        root=tz_root,
    )
    return result, seed.read_seed_iso(result.iso)


def test_iso_label_names_and_mode(built: tuple[seed.SeedResult, seed.SeedImage], tmp_path: Path) -> None:
    result, image = built
    assert result.iso == tmp_path / "inst" / paths.CIDATA
    assert image.label == "cidata"
    names = ["devenv-earlyboot.py", "devenv-seed.json", "meta-data", "user-data"]
    assert sorted(image.files) == names
    assert image.joliet_names == tuple(names)
    if os.name == "posix":
        assert stat.S_IMODE(result.iso.stat().st_mode) == 0o600  # it holds the host's private key


def test_meta_data_exact(built: tuple[seed.SeedResult, seed.SeedImage]) -> None:
    result, image = built
    meta = image.files["meta-data"].decode()
    assert result.instance_id.startswith("devenv-demo-") and len(result.instance_id) == len("devenv-demo-") + 12
    assert meta.endswith(f'instance-id: "{result.instance_id}"\nlocal-hostname: "demo"\n')


def test_user_data_exact_security_lines(built: tuple[seed.SeedResult, seed.SeedImage], tmp_path: Path) -> None:
    result, image = built
    text = image.files["user-data"].decode()
    lines = text.splitlines()
    assert lines[0] == "#cloud-config"
    k = result.keys
    host_private = (tmp_path / "inst" / paths.SSH_HOST_KEY).read_text()
    for expected in [
        "  - name: devenv",
        f"    uid: {userdata.guest_uid()}",
        "    shell: /bin/bash",
        "    lock_passwd: true",
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"',
        f'      - "{k.client_public}"',
        "ssh_pwauth: false",
        "disable_root: true",
        "ssh_deletekeys: true",
        "ssh_genkeytypes: [ed25519]",
        "  ed25519_private: " + json.dumps(host_private),
        f'  ed25519_public: "{k.host_public}"',
        'timezone: "Europe/Berlin"',
        "  - [/bin/sh, /usr/local/lib/devenv/firstboot.sh]",
    ]:
        assert expected in lines, expected
    assert host_private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_user_data_carries_the_provision_scripts_in_order(built: tuple[seed.SeedResult, seed.SeedImage]) -> None:
    text = built[1].files["user-data"].decode()
    lines = text.splitlines()
    i_sys = lines.index('  - path: "/usr/local/lib/devenv/provision/01-system.sh"')
    i_user = lines.index('  - path: "/usr/local/lib/devenv/provision/02-user.sh"')
    assert i_sys < i_user
    assert lines[i_sys + 2] == '    permissions: "0755"'
    assert lines[i_sys + 3] == "    content: " + json.dumps(SYSTEM_SCRIPT)
    assert lines[i_user + 3] == "    content: " + json.dumps(USER_SCRIPT, ensure_ascii=False)


def test_user_data_env_proxy_and_engine(built: tuple[seed.SeedResult, seed.SeedImage]) -> None:
    text = built[1].files["user-data"].decode()
    environment = (
        'HTTPS_PROXY="http://user:pw@10.0.2.2:3128"\n'
        'https_proxy="http://user:pw@10.0.2.2:3128"\n'
        'NO_PROXY="corp.example,localhost,127.0.0.1,::1"\n'
        'no_proxy="corp.example,localhost,127.0.0.1,::1"\n'
        'EDITOR="vim"\n'
        'GREETING="hello $USER world"\n'
    )
    assert '  - path: "/etc/environment"\n    owner: root:root\n    permissions: "0600"\n    append: true\n' in text
    assert "    content: " + json.dumps(environment) in text
    env_sh = "export HTTPS_PROXY=http://user:pw@10.0.2.2:3128\n"
    assert json.dumps(env_sh)[1:-1] in text
    assert json.dumps("export GREETING='hello $USER world'\n")[1:-1] in text
    dropin = (
        "[Service]\n"
        'Environment="HTTPS_PROXY=http://user:pw@10.0.2.2:3128"\n'
        'Environment="NO_PROXY=corp.example,localhost,127.0.0.1,::1"\n'
    )
    assert (
        '  - path: "/etc/systemd/system/docker.service.d/10-devenv-proxy.conf"\n    owner: root:root\n    permissions: "0600"'
        in text
    )
    assert "    content: " + json.dumps(dropin) in text
    # a proxy's password is nobody's but the guest user's: every file holding one arrives 0600
    for path in (userdata.ENV_SH, userdata.APT_PROXY):
        assert f'  - path: "{path}"\n    owner: root:root\n    permissions: "0600"' in text, path
    assert '  - path: "/etc/devenv/engine"' in text and '    content: "docker\\n"' in text
    assert '  - path: "/usr/local/lib/devenv/engines/docker.sh"' in text
    assert "/usr/local/lib/devenv/engines/podman.sh" not in text
    assert "    content: " + json.dumps(protocol.agent_source().decode(), ensure_ascii=False) in text


def _yaml_python() -> str | None:
    """A python that has PyYAML (Debian's python3-yaml): the venv deliberately does not."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and subprocess.run([candidate, "-c", "import yaml"], capture_output=True).returncode == 0:
            return candidate
    return None


def test_user_data_parses_as_yaml_to_exact_values(built: tuple[seed.SeedResult, seed.SeedImage]) -> None:
    """The strongest check: a real YAML parser reads back every value byte for byte."""
    python = _yaml_python()
    if python is None:
        pytest.skip("no python3 with PyYAML (apt-get install python3-yaml) to parse user-data")
    result, image = built
    out = subprocess.run(
        [python, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.buffer)))"],
        input=image.files["user-data"],
        capture_output=True,
        check=True,
    ).stdout
    doc = json.loads(out)
    assert doc["ssh_pwauth"] is False and doc["disable_root"] is True
    assert doc["ssh_genkeytypes"] == ["ed25519"] and doc["ssh_deletekeys"] is True
    assert doc["users"] == [
        {
            "name": "devenv",
            "uid": userdata.guest_uid(),
            "gecos": "devenv",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": [result.keys.client_public],
        }
    ]
    assert doc["ssh_keys"] == {
        "ed25519_private": result.keys.host_key.read_text(),
        "ed25519_public": result.keys.host_public,
    }
    files = {f["path"]: f for f in doc["write_files"]}
    assert files["/usr/local/lib/devenv/provision/01-system.sh"]["content"] == SYSTEM_SCRIPT
    assert files["/usr/local/lib/devenv/provision/02-user.sh"]["content"] == USER_SCRIPT
    assert files[protocol.GUEST_PATH]["content"].encode() == protocol.agent_source()
    assert doc["runcmd"] == [["/bin/sh", "/usr/local/lib/devenv/firstboot.sh"]]
    assert doc["timezone"] == "Europe/Berlin"


def test_prepare_seed_is_idempotent(tmp_path: Path, tz_root: Path) -> None:
    cfg = make_config()
    first = seed.prepare_seed(tmp_path / "inst", cfg, environ={}, root=tz_root)
    ud1 = seed.read_seed_iso(first.iso).files["user-data"]
    second = seed.prepare_seed(tmp_path / "inst", cfg, environ={}, root=tz_root)
    assert second.keys == first.keys
    assert second.instance_id == first.instance_id
    assert seed.read_seed_iso(second.iso).files["user-data"] == ud1


def test_recreated_instance_gets_a_new_instance_id(tmp_path: Path) -> None:
    a = seed.prepare_seed(tmp_path / "a", make_config(), environ={})
    shutil.rmtree(tmp_path / "a")
    b = seed.prepare_seed(tmp_path / "a", make_config(), environ={})
    assert a.instance_id != b.instance_id


def test_no_proxy_no_env_no_timezone(tmp_path: Path) -> None:
    keys = keys_mod.ensure_keys(tmp_path, "bare")
    inputs = userdata.SeedInputs(
        name="bare",
        runtime="podman",
        authorized_key=keys.client_public,
        host_private_key=keys.host_key.read_text(),
        host_public_key=keys.host_public,
    )
    text = userdata.render_user_data(inputs)
    assert "# timezone: unknown on the host; the guest keeps UTC" in text.splitlines()
    assert 'path: "/etc/environment"' not in text
    assert "10-devenv-proxy.conf" not in text
    assert "/usr/local/lib/devenv/provision/" not in text
    assert '  - path: "/usr/local/lib/devenv/engines/podman.sh"' in text


def test_proxy_dropin_goes_to_the_runtime_units(tmp_path: Path) -> None:
    keys = keys_mod.ensure_keys(tmp_path, "p")
    for runtime, unit in (("podman", "podman.service"), ("containerd", "containerd.service")):
        inputs = userdata.SeedInputs(
            name="p",
            runtime=runtime,
            authorized_key=keys.client_public,
            host_private_key=keys.host_key.read_text(),
            host_public_key=keys.host_public,
            proxies={"HTTP_PROXY": "http://proxy:8080%x"},
        )
        text = userdata.render_user_data(inputs)
        assert f'  - path: "/etc/systemd/system/{unit}.d/10-devenv-proxy.conf"' in text
        assert json.dumps('Environment="HTTP_PROXY=http://proxy:8080%%x"\n')[1:-1] in text  # % escaped for systemd


def test_env_value_that_etc_environment_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        seed.prepare_seed(tmp_path / "i", make_config(env={"BAD": 'say "hi"'}), environ={})
    assert str(err.value) == (
        "field `env`: variable `BAD` must not contain a double quote, backslash, newline or NUL "
        "(/etc/environment cannot hold it)"
    )


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain", '"plain"'),
        ('q"b\\', '"q\\"b\\\\"'),
        ("a\nb\tc\r", '"a\\nb\\tc\\r"'),
        ("\x00\x1b\x7f\x85\u2028\ufeff", '"\\u0000\\u001b\\u007f\\u0085\\u2028\\ufeff"'),
        ("ünï 😀", '"ünï 😀"'),
        ("# not a comment: [x] {y} *z &a !b |c >d %e @f `g", '"# not a comment: [x] {y} *z &a !b |c >d %e @f `g"'),
    ],
)
def test_yaml_str(value: str, encoded: str) -> None:
    assert userdata.yaml_str(value) == encoded


def test_yaml_str_rejects_lone_surrogates() -> None:
    with pytest.raises(ValueError):
        userdata.yaml_str("\ud800")


@pytest.mark.parametrize(
    ("name", "hostname"),
    [("demo", "demo"), ("my_proj.v2", "my-proj-v2"), ("_x_", "x"), ("a" * 63, "a" * 63), ("___", "devenv")],
)
def test_guest_hostname(name: str, hostname: str) -> None:
    assert userdata.guest_hostname(name) == hostname


def test_build_seed_with_network_config_and_unknown_file(tmp_path: Path) -> None:
    iso = tmp_path / "s.iso"
    seed.build_seed_iso(
        iso, {"user-data": "#cloud-config\n", "meta-data": "instance-id: x\n", "network-config": b"version: 2\n"}
    )
    image = seed.read_seed_iso(iso)
    assert image.files == {
        "user-data": b"#cloud-config\n",
        "meta-data": b"instance-id: x\n",
        "network-config": b"version: 2\n",
    }
    assert image.joliet_names == ("meta-data", "network-config", "user-data")
    with pytest.raises(ValueError):
        seed.build_seed_iso(iso, {"userdata": ""})


def _cloudinit_python() -> tuple[str, dict[str, str]] | None:
    """Debian's cloud-init (22.4 in Debian 12, what the guest runs), installed or unpacked.

    CI unpacks it without installing (installing would run it on the next host boot):
    apt-get download cloud-init && dpkg-deb -x cloud-init_*.deb DIR, then
    DEVENV_CLOUDINIT_PYTHONPATH=DIR/usr/lib/python3/dist-packages.
    """
    env = dict(os.environ)
    extra = os.environ.get("DEVENV_CLOUDINIT_PYTHONPATH")
    if extra:
        env["PYTHONPATH"] = extra
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import yaml, cloudinit.config.schema"], capture_output=True, env=env, timeout=60
        )
        if probe.returncode == 0:
            return candidate, env
    return None


def test_user_data_passes_cloud_init_schema(built: tuple[seed.SeedResult, seed.SeedImage]) -> None:
    found = _cloudinit_python()
    if found is None:
        pytest.skip("cloud-init's python package is not available (see _cloudinit_python for the CI setup)")
    python, env = found
    check = (
        "import sys, yaml\n"
        "from cloudinit.config.schema import get_schema, validate_cloudconfig_schema\n"
        "validate_cloudconfig_schema(yaml.safe_load(sys.stdin.buffer), get_schema(), strict=True)\n"
    )
    res = subprocess.run(
        [python, "-c", check], input=built[1].files["user-data"], capture_output=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr.decode()[-2000:]


@pytest.mark.parametrize(("host", "guest"), [(0, 1000), (501, 501), (1001, 1001), (65534, 1000), (1000, 1000)])
def test_guest_uid_follows_the_host_user(host: int, guest: int) -> None:
    from devenv.provision.userdata import guest_uid

    assert guest_uid(host) == guest


def test_text_that_is_not_utf8_is_a_config_error_and_no_seed_is_written(tmp_path: Path) -> None:
    """A host value read with surrogateescape (undecodable bytes) cannot go into user-data: said, with a hint."""
    from devenv.errors import ConfigError, ExitCode

    cfg = make_config(env={"NAME": "caf\udce9"})
    with pytest.raises(ConfigError) as info:
        seed.prepare_seed(tmp_path / "inst", cfg, environ={})
    assert info.value.exit_code == ExitCode.CONFIG
    assert str(info.value).startswith("cannot write the first-boot seed for `demo`: ")
    assert "not valid UTF-8" in info.value.hint
    assert not (tmp_path / "inst" / "cidata.iso").exists()


def test_firstboot_hands_each_secret_file_to_the_guest_user_alone() -> None:
    script = assets.read_text("cloud-init/firstboot.sh")
    loop = next(line.strip() for line in script.splitlines() if line.strip().startswith("for secret in "))
    listed = loop.removeprefix("for secret in ").removesuffix("; do").replace('"$LIB', userdata.LIB).replace('"', "")
    assert listed.split() == list(userdata.GUEST_USER_READABLE)
    assert 'chgrp "$GUEST_USER" "$secret" && chmod 0640 "$secret"' in script
