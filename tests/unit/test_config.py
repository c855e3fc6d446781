"""devenv.toml: every bad input is located by file and line, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv import config
from devenv.errors import ConfigError, UsageError


def load(tmp_path: Path, text: str) -> config.Config:
    f = tmp_path / "devenv.toml"
    f.write_text(text)
    return config.load_file(f)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    prefix = str(tmp_path / "devenv.toml")
    return [p.replace(prefix, "F") for p in e.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('cpus = "two"', "F:1: field `cpus` must be a whole number from 1 to 256, not 'two'"),
        ("cpus = 0", "F:1: field `cpus` must be a whole number from 1 to 256, not 0"),
        ("cpus = true", "F:1: field `cpus` must be a whole number from 1 to 256, not True"),
        ('aslr = "no"', "F:1: field `aslr` must be true or false, not 'no'"),
        ("aslr = 0", "F:1: field `aslr` must be true or false, not 0"),
        ('machine = "pc"', "F:1: field `machine` must be one of auto, q35, microvm, virt, not 'pc'"),
        ('memory = "-2GiB"', 'F:1: field `memory` must be a positive size, not "-2GiB"'),
        ('memory = "2 parsecs"', 'F:1: field `memory` must be a size such as "2GiB" or "2048MiB", not "2 parsecs"'),
        ("memory = 2048", 'F:1: field `memory` must be a size string such as "2GiB" or "2048MiB"'),
        ('memory = "1MiB"', "F:1: field `memory` must be at least 256MiB, not '1MiB'"),
        ('disk = "0GiB"', 'F:1: field `disk` must be a positive size, not "0GiB"'),
        (
            'backend = "qemuu"',
            "F:1: field `backend` must be one of auto, native, qemu, libvirt, wsl2, hyperv, not 'qemuu'",
        ),
        ('runtime = "rkt"', "F:1: field `runtime` must be one of docker, podman, containerd, not 'rkt'"),
        (
            'name = "a/b"',
            "F:1: field `name` `a/b` may only contain letters, digits, '.', '_' and '-', and must start with a letter or digit",
        ),
        ("cpu = 2", "F:1: field `cpu` is not a known field; did you mean `cpus`?"),
        (
            "zzz = 2",
            "F:1: field `zzz` is not a known field; known fields: accelerator, arch, aslr, backend, cpus, disk, env, hyperv_auth, hyperv_ca_file, hyperv_host, hyperv_switch, hyperv_user, image, libvirt_uri, machine, memory, mounts, name, ports, provision, runtime, stop, tcg_cache",
        ),
        ('env = { "1X" = "a" }', "F:1: field `env` has invalid variable names: 1X"),
        (
            'arch = "riscv64"',
            "F:1: field `arch` must be one of auto, x86_64, aarch64 (or amd64, arm64), not 'riscv64'",
        ),
        (
            "\n\n[[ports]]\nguest = 70000\n",
            "F:4: field `ports[0].guest` must be a port number from 1 to 65535, not 70000",
        ),
        (
            '[[mounts]]\nlocation = "~"\nwritabel = true\n',
            "F:3: field `mounts[0].writabel` is not a known field; did you mean `writable`?",
        ),
        (
            '[[provision]]\nmode = "root"\nscript = "true"\n',
            'F:2: field `provision[0].mode` must be "system" or "user", not \'root\'',
        ),
    ],
)
def test_one_problem_is_located(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(tmp_path, text) == [expected]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    got = problems(tmp_path, 'name = "ok"\ncpus = -1\nmemry = "2GiB"\ndisk = "-3GiB"\n')
    assert got == [
        "F:2: field `cpus` must be a whole number from 1 to 256, not -1",
        "F:3: field `memry` is not a known field; did you mean `memory`?",
        'F:4: field `disk` must be a positive size, not "-3GiB"',
    ]


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    got = problems(tmp_path, 'name = "x"\ncpus = = 2\n')
    assert len(got) == 1
    assert got[0].startswith("F:2: not valid TOML: ")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GiB", 2 * 1024**3),
        ("2048MiB", 2 * 1024**3),
        ("2G", 2 * 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1TB", 10**12),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert config.parse_size(text) == size


def test_full_config_round_trips_through_the_instance_copy(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """
name = "proj"
backend = "native"
cpus = 4
memory = "3GiB"
disk = "40GiB"
runtime = "podman"
machine = "microvm"
arch = "arm64"
aslr = false
env = { EDITOR = "vim", QUOTE = "a \\"b\\"" }

[[mounts]]
location = "~/src"
writable = true

[[ports]]
guest = 8080
host = 18080

[[provision]]
mode = "user"
script = "echo hi\\nexit 0"
""",
    )
    assert cfg.cpus == 4 and cfg.memory == 3 * 1024**3 and cfg.runtime == "podman" and cfg.aslr is False
    assert cfg.machine == "microvm" and cfg.arch == "aarch64"  # stored by its one name
    assert cfg.mounts == (config.Mount("~/src", "", True),)
    assert cfg.ports == (config.PortForward(8080, 18080),)
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml())
    assert config.load_file(again) == cfg


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x" * 64, "a b", "ä"])
def test_bad_names(name: str) -> None:
    with pytest.raises(UsageError):
        config.validate_name(name)


@pytest.mark.parametrize("name", ["default", "a", "my-proj_1.2", "x" * 63])
def test_good_names(name: str) -> None:
    assert config.validate_name(name) == name


def test_name_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVENV_INSTANCE", raising=False)
    assert config.resolve_name(None, None) == "default"
    monkeypatch.setenv("DEVENV_INSTANCE", "fromenv")
    assert config.resolve_name(None, None) == "fromenv"
    proj = tmp_path / "devenv.toml"
    proj.write_text('name = "fromfile"\n')
    assert config.resolve_name(None, proj) == "fromfile"
    assert config.resolve_name("flag", proj) == "flag"


def test_project_file_is_found_in_a_parent(tmp_path: Path) -> None:
    (tmp_path / "devenv.toml").write_text("")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert config.find_project_config(deep) == tmp_path / "devenv.toml"


def test_line_of_names_a_top_level_key_for_errors_found_after_loading(tmp_path: Path) -> None:
    copy = tmp_path / "devenv.toml"
    copy.write_text('name = "x"\nmachine = "microvm"\n\n[[provision]]\nscript = "true"\n')
    assert config.line_of(copy, "machine") == f"{copy}:2"
    assert config.line_of(copy, "script") == str(copy)  # only top-level keys
    assert config.line_of(copy, "aslr") == str(copy)
    assert config.line_of(tmp_path / "gone.toml", "machine") == str(tmp_path / "gone.toml")


def test_stop_is_suspend_unless_set_and_only_suspend_or_shutdown(tmp_path: Path) -> None:
    from devenv.config import Config, load_file

    assert Config().stop == "suspend"
    f = tmp_path / "devenv.toml"
    f.write_text('stop = "shutdown"\n')
    cfg = load_file(f)
    assert cfg.stop == "shutdown" and 'stop = "shutdown"' in cfg.to_toml()
    assert problems(tmp_path, 'stop = "hibernate"') == [
        "F:1: field `stop` must be one of suspend, shutdown, not 'hibernate'"
    ]


def test_tcg_cache_is_64_mib_unless_set_and_kept_in_whole_mib(tmp_path: Path) -> None:
    from devenv.config import Config, load_file

    assert Config().tcg_cache == 64 * 1024**2 and "tcg_cache" not in Config().to_toml()
    f = tmp_path / "devenv.toml"
    f.write_text('tcg_cache = "256MiB"\n')
    cfg = load_file(f)
    assert cfg.tcg_cache == 256 * 1024**2 and 'tcg_cache = "256MiB"' in cfg.to_toml()
    assert load_file(f).to_toml() == cfg.to_toml()
    for bad in ('"8MiB"', '"3GiB"', '"100.5MiB"', "64"):
        (said,) = problems(tmp_path, f"tcg_cache = {bad}")
        assert said.startswith("F:1: field `tcg_cache` must"), said
