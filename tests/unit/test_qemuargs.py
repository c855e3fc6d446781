"""The QEMU command line as data: each device and choice is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.backends.base import InstanceRef
from devenv.backends.drivers.qemuargs import NeedsDirectKernel, VmSpec, build_argv, kernel_cmdline, resolve_machine
from devenv.config import Config
from devenv.errors import ConfigError
from devenv.hostos import HostFacts

LINUX = HostFacts("linux", "x86_64")


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = dict(
        name="dev",
        arch="x86_64",
        accel="tcg",
        cpus=2,
        memory=2 * 1024**3,
        disk=Path("/i/disk.qcow2"),
        cidata=Path("/i/cidata.iso"),
        ssh_port=40022,
        serial_log=Path("/i/serial.log"),
        qmp_socket=Path("/i/qmp.sock"),
        pid_file=Path("/i/qemu.pid"),
        host=LINUX,  # the argv on other hosts: tests/unit/test_qemu_golden.py
    )
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def pairs(argv: list[str]) -> list[tuple[str, str]]:
    return [(argv[i], argv[i + 1]) for i in range(1, len(argv) - 1) if argv[i].startswith("-")]


def test_x86_64_tcg() -> None:
    argv = build_argv(spec())
    p = pairs(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert ("-machine", "q35") in p
    assert ("-accel", "tcg,tb-size=64") in p and ("-cpu", "max") in p
    assert ("-accel", "tcg,tb-size=256") in pairs(build_argv(spec(tcg_cache_mb=256)))
    assert ("-smp", "2") in p and ("-m", "2048M") in p
    assert ("-drive", "if=virtio,file=/i/disk.qcow2,format=qcow2,discard=unmap,cache=writeback") in p
    assert ("-drive", "if=virtio,file=/i/cidata.iso,format=raw,readonly=on") in p
    assert ("-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22") in p
    assert ("-chardev", "socket,id=qmp,path=/i/qmp.sock,server=on,wait=off") in p
    assert ("-mon", "chardev=qmp,mode=control") in p
    assert ("-pidfile", "/i/qemu.pid") in p
    assert "-nodefaults" in argv and "-kernel" not in argv


def test_kvm_uses_the_host_cpu_and_direct_kernel_boot() -> None:
    argv = build_argv(spec(accel="kvm", kernel=Path("/c/vmlinuz"), initrd=Path("/c/initrd"), cmdline="root=/dev/vda"))
    p = pairs(argv)
    assert ("-accel", "kvm") in p and ("-cpu", "host") in p
    assert ("-kernel", "/c/vmlinuz") in p and ("-initrd", "/c/initrd") in p and ("-append", "root=/dev/vda") in p


def test_forwards_bind_loopback_only() -> None:
    argv = build_argv(spec(extra_hostfwd=((18080, 8080),)))
    netdev = dict(pairs(argv))["-netdev"]
    assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:18080-:8080"


def test_aarch64_under_tcg_signs_pointers_with_the_cheap_algorithm() -> None:
    assert ("-cpu", "max,pauth-impdef=on") in pairs(build_argv(spec(arch="aarch64", accel="tcg")))
    assert ("-machine", "virt") in pairs(build_argv(spec(arch="aarch64", accel="tcg")))  # no highmem under TCG
    assert ("-cpu", "host") in pairs(build_argv(spec(arch="aarch64", accel="hvf")))


def test_aarch64_virt_with_firmware_and_9p_share() -> None:
    argv = build_argv(spec(arch="aarch64", accel="hvf", firmware=Path("/fw.fd"), shares=(("m0", "/src", False),)))
    p = pairs(argv)
    assert argv[0] == "qemu-system-aarch64"
    assert ("-machine", "virt") in p and ("-bios", "/fw.fd") in p  # highmem: QEMU's default, as Lima leaves it
    assert ("-fsdev", "local,id=m0,path=/src,security_model=none,readonly=on") in p
    assert ("-device", "virtio-9p-pci,fsdev=m0,mount_tag=m0") in p


def test_microvm_puts_every_device_on_virtio_mmio() -> None:
    argv = build_argv(spec(machine="microvm", kernel=Path("/c/vmlinuz"), shares=(("m0", "/src", True),)))
    p = pairs(argv)
    assert ("-machine", "microvm,acpi=on") in p
    devices = [v for k, v in p if k == "-device"]
    assert not [d for d in devices if "-pci" in d], devices  # microvm has no PCI bus
    assert devices == [
        "virtio-blk-device,drive=disk0",
        "virtio-blk-device,drive=cidata",
        "virtio-net-device,netdev=net0",
        "virtio-rng-device",
        "virtio-balloon-device,free-page-reporting=on",
        "virtio-9p-device,fsdev=m0,mount_tag=m0",
    ]
    drives = [v for k, v in p if k == "-drive"]
    # the disk is created first (usually /dev/vda; images name root by label, see debian-12.toml)
    assert drives[0] == "if=none,id=disk0,file=/i/disk.qcow2,format=qcow2,discard=unmap,cache=writeback"
    assert drives[1] == "if=none,id=cidata,file=/i/cidata.iso,format=raw,readonly=on"


@pytest.mark.parametrize(
    ("requested", "arch", "kernel", "expected"),
    [
        ("auto", "x86_64", False, "q35"),
        ("auto", "aarch64", False, "virt"),
        ("q35", "x86_64", False, "q35"),
        ("microvm", "x86_64", True, "microvm"),
        ("virt", "aarch64", True, "virt"),
    ],
)
def test_resolve_machine(requested: str, arch: str, kernel: bool, expected: str) -> None:
    assert resolve_machine(requested, arch, direct_kernel=kernel) == expected


@pytest.mark.parametrize(
    ("requested", "arch", "kernel", "reason"),
    [
        ("microvm", "x86_64", False, "needs an image with a kernel and initrd"),
        ("microvm", "aarch64", True, "is for x86_64 guests; this image is aarch64"),
        ("virt", "x86_64", True, "is for aarch64 guests; this image is x86_64"),
        ("pc", "x86_64", True, "unknown machine type 'pc'"),
    ],
)
def test_resolve_machine_refuses_what_cannot_boot(requested: str, arch: str, kernel: bool, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as e:
        resolve_machine(requested, arch, direct_kernel=kernel)
    assert isinstance(e.value, NeedsDirectKernel) == (not kernel)  # the one refusal another image would cure


def test_kernel_cmdline_fills_the_console_and_opts_out_of_aslr_only_when_asked() -> None:
    image = "root=/dev/vda console={console} quiet"
    assert kernel_cmdline(image, "ttyS0", aslr=True, accel="kvm") == "root=/dev/vda console=ttyS0 quiet"
    assert kernel_cmdline(image, "ttyAMA0", aslr=False, accel="hvf") == "root=/dev/vda console=ttyAMA0 quiet norandmaps"
    assert kernel_cmdline("", "ttyS0", aslr=False, accel="whpx") == "norandmaps"


def test_kernel_cmdline_skips_crypto_self_tests_and_kvm_only_under_tcg() -> None:
    image = "root=/dev/vda console={console}"
    tcg = (
        "cryptomgr.notests=1 modprobe.blacklist=kvm,kvm_amd,kvm_intel,powernow_k8,aesni_intel,"
        "sha1_ssse3,sha256_ssse3,sha512_ssse3,pcspkr,psmouse,serio_raw,i2c_i801,lpc_ich,iTCO_wdt,ahci"
    )
    assert kernel_cmdline(image, "ttyS0", aslr=True, accel="tcg") == f"root=/dev/vda console=ttyS0 {tcg}"
    assert kernel_cmdline("", "ttyS0", aslr=False, accel="tcg") == f"norandmaps {tcg}"
    assert "notests" not in kernel_cmdline(image, "ttyS0", aslr=True, accel="kvm")


def test_an_empty_console_at_the_sshd_deadline_points_at_an_early_kernel_hang(tmp_path: Path) -> None:
    from devenv.backends.vm.boot import sshd_timeout_hint

    serial = tmp_path / "serial.log"
    for state in ("missing", "empty"):
        if state == "empty":
            serial.write_text("")
        hint = sshd_timeout_hint(serial, "dev")
        assert "kernel hung early" in hint and "devenv stop --force -n dev" in hint, state
    serial.write_text("Debian GNU/Linux 12 dev ttyS0\n")
    assert "read the console above" in sshd_timeout_hint(serial, "dev")


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
cpu MHz\t\t: 2445.432
flags\t\t: fpu tsc {flags} lm

processor\t: 1
cpu MHz\t\t: 1200.000
"""


@pytest.mark.parametrize(
    ("flags", "cpufreq", "expected"),
    [
        ("constant_tsc nonstop_tsc tsc_known_freq", False, 2445432),
        ("constant_tsc tsc_known_freq", True, None),  # frequency scaling: `cpu MHz` is the current clock
        ("constant_tsc tsc_known_freq aperfmperf", False, None),  # measured effective clock, not the TSC
        ("nonstop_tsc tsc_known_freq", False, None),  # the TSC rate may change
        ("constant_tsc", False, None),  # a measured cpu_khz, which can be off from the TSC
    ],
)
def test_host_tsc_khz_only_when_cpu_mhz_is_the_tsc(
    tmp_path: Path, flags: str, cpufreq: bool, expected: int | None
) -> None:
    from devenv.backends.drivers.qemuproc import host_tsc_khz

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(flags=flags))
    freq = tmp_path / "cpufreq"
    if cpufreq:
        freq.mkdir()
    assert host_tsc_khz(str(cpuinfo), str(freq)) == expected
    assert host_tsc_khz(str(tmp_path / "missing"), str(freq)) is None


def test_the_config_accepts_every_machine_the_command_line_knows(tmp_path: Path) -> None:
    from devenv import config
    from devenv.backends.drivers.qemuargs import MACHINE_ARCH

    for machine in ("auto", *MACHINE_ARCH):
        path = tmp_path / f"{machine}.toml"
        path.write_text(f'machine = "{machine}"\n')
        assert config.load_file(path).machine == machine


def _ref(tmp_path: Path, machine: str) -> InstanceRef:
    (tmp_path / "devenv.toml").write_text(f'name = "m"\nbackend = "qemu"\nmachine = "{machine}"\n')
    return InstanceRef("m", tmp_path, Config(name="m", backend="qemu", machine=machine))


def test_microvm_under_tcg_gets_the_hosts_tsc_rate_on_its_kernel_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devenv.backends.drivers import qemuaccel as qemu

    monkeypatch.setattr(qemu, "host_tsc_khz", lambda: 2445432)
    inst = _ref(tmp_path, "microvm")
    machine = qemu.machine(inst, "x86_64", True, "tcg", creating=False)
    assert machine == ("microvm", "tsc_early_khz=2445432 tsc=reliable")
    assert qemu.machine(inst, "x86_64", True, "kvm", creating=False) == ("microvm", "")  # kvm-clock needs no help
    assert qemu.machine(_ref(tmp_path, "auto"), "x86_64", True, "tcg", creating=True) == ("q35", "")


def test_microvm_is_refused_before_boot_where_it_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from devenv.backends.drivers import qemuaccel as qemu

    monkeypatch.setattr(qemu, "host_tsc_khz", lambda: None)
    inst = _ref(tmp_path, "microvm")
    with pytest.raises(ConfigError) as e:
        qemu.machine(inst, "x86_64", True, "tcg", creating=False)
    assert e.value.message.startswith(f'{tmp_path / "devenv.toml"}:3: field `machine` = "microvm" under TCG')
    assert e.value.hint.startswith("use a hardware accelerator, or delete the instance") and e.value.exit_code == 65
    with pytest.raises(ConfigError) as e:  # at create, under TCG too: refused before any disk exists
        qemu.machine(inst, "x86_64", True, "tcg", creating=True)
    assert e.value.message.startswith('devenv.toml: field `machine` = "microvm" under TCG')
    assert "delete" not in e.value.hint  # nothing was made yet
    with pytest.raises(ConfigError) as e:
        qemu.machine(inst, "x86_64", False, "kvm", creating=True)  # an image without a kernel
    assert e.value.message.startswith('devenv.toml: field `machine` = "microvm": microvm has no firmware')
    assert "devenv image build" in e.value.hint
    with pytest.raises(ConfigError) as e:
        qemu.machine(inst, "aarch64", True, "hvf", creating=True)
    assert "is for x86_64 guests" in e.value.message and "image" not in e.value.hint


def test_a_host_path_with_commas_stays_one_value_and_adds_no_option() -> None:
    evil = Path("/home/u/a,readonly=off,b=c")
    argv = build_argv(
        spec(
            disk=evil / "disk.qcow2",
            cidata=evil / "cidata.iso",
            serial_log=evil / "serial.log",
            qmp_socket=evil / "q.sock",
            ram_file=evil / "memory.ram",
            relay_socket=evil / "relay.sock",
            shares=(("m0", str(evil), False),),
        )
    )
    with_paths = [a for a in argv if "a,,readonly=off,,b=c" in a]
    assert len(with_paths) == 7, argv  # disk, cidata, ram, 9p, relay, serial, qmp
    assert not any("a,readonly=off" in a for a in argv)
    # How QEMU itself reads these strings is tests/integration/test_qemu_paths.py's, against the real QEMU.
    escaped = str(evil).replace(",", ",,")
    for a in with_paths:
        assert a.count(escaped) == 1, a  # the whole path is one value, its commas doubled
        rest = a.replace(escaped, "PATH")
        assert rest.count("readonly") <= 1 and "readonly=off" not in rest, rest  # the cidata's own, never the path's
