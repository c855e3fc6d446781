"""The QEMU command line for one instance, built from plain values.

Kept free of I/O so each choice (machine, accelerator, devices) is unit-tested
as data. The choices, and why:
- q35 on x86_64 (no floppy for cloud-init to probe; PCIe), virt on aarch64;
  microvm on x86_64 when asked (`machine = "microvm"`): no PCI and no
  firmware, only virtio-mmio devices, so it needs an image QEMU boots directly.
- `-nodefaults -no-user-config`: only the devices listed here exist.
- TCG gets a bounded translation cache (tb-size) so QEMU's RSS stays near the
  guest's size; CPU `max` under TCG, `host` under hardware acceleration.
- virtio everywhere (disk, net, rng, balloon with free-page reporting so
  memory the guest frees goes back to the host).
- user networking with the SSH port forwarded on 127.0.0.1 only.
- the guest's RAM in a file of the instance when asked (ram_file), so a
  suspend saves only its devices (qemusave.py says why);
- a virtio-serial port served on a unix socket (relay_socket) that the host
  agent's SSH session goes through instead of the network: a save keeps the
  port's state, so the session lives on across a suspend (hostagent/relay.py);
- serial console to a file, appended to (a restored guest goes on writing
  after the lines of its boot) (read for readiness and for error reports), QMP on
  a unix socket in the 0700 instance directory, a pid file.

What depends on the host (VmSpec.host, a hostos.HostFacts) follows Lima's QEMU
driver, which has run QEMU under hvf on both kinds of Mac for years; the
golden files in tests/unit/golden/ hold the command line for each Mac and
guest pair and cite the Lima code each choice follows or why devenv differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from devenv.config import Config
from devenv.guestagent.relay import PORT_NAME as RELAY_PORT_NAME
from devenv.hostos import HostFacts
from devenv.machines import MACHINE_ARCH, NeedsDirectKernel, cpu_model, resolve_machine

__all__ = [
    "MACHINE_ARCH",
    "HostFacts",
    "NeedsDirectKernel",
    "VmSpec",
    "accel_option",
    "build_argv",
    "cpu_model",
    "guest_memory",
    "kernel_cmdline",
    "microvm_tcg_cmdline",
    "qemu_binary_name",
    "qemu_cpu",
    "resolve_machine",
]


@dataclass(frozen=True)
class VmSpec:
    name: str
    arch: str
    accel: str
    cpus: int
    memory: int  # bytes
    disk: Path
    cidata: Path | None
    ssh_port: int
    serial_log: Path
    qmp_socket: Path
    pid_file: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    firmware: Path | None = None
    extra_hostfwd: tuple[tuple[int, int], ...] = field(default=())  # (host port, guest port)
    shares: tuple[tuple[str, str, bool], ...] = field(default=())  # (tag, host path, writable) via virtio-9p
    machine: str = ""  # "": the arch's default (resolve_machine)
    ram_file: Path | None = None  # the guest's RAM mapped from this file (shared), for suspend
    relay_socket: Path | None = None  # the SSH relay's virtio-serial port, served on this unix socket
    # QEMU's translation cache under TCG (tb-size; QEMU's own default is up to 1 GiB): devenv.toml's
    # tcg_cache, whose comment in config.py says what the size trades
    tcg_cache_mb: int = Config.tcg_cache // 1024**2
    host: HostFacts | None = None  # None: the running host (hostos.current().facts)


# Kernel arguments for a guest under TCG, where all boot work is emulated and
# udev's module loads land in the seconds the engine starts (CPU-bound there:
# both host cores busy). Guest CPU seconds, measured with `modprobe` in a
# booted guest:
# - cryptomgr.notests: the crypto self-tests run each AES/SHA implementation the
#   emulated CPU offers against test vectors in emulated AVX (aesni_intel:
#   1.97 s with them, 0.43 s without). They check an implementation against
#   the CPU; nothing in a dev VM uses in-kernel AES.
# - modprobe.blacklist (read by libkmod, so udev does not even open the
#   module; the kernel's own module_blacklist= refuses a module only after
#   reading it in, on every attempt; an explicit `modprobe NAME` still
#   works): what udev loads for the emulated CPU and the q35 chipset that an
#   emulated, headless guest cannot use:
#   kvm, kvm_amd, kvm_intel   `-cpu max` offers SVM: kvm_amd took 3.6 s, for a
#                             nested hypervisor that would itself be emulated
#                             (`-cpu max,svm=off` instead left systemd unable
#                             to mount /dev/hugepages and the rest: EINVAL);
#   powernow_k8               no P-states to drive; fails, once per CPU (0.2 s each);
#   aesni_intel, sha*_ssse3   kernel crypto offload; the generic code stays (0.6 s);
#   pcspkr, psmouse, serio_raw, i2c_i801, lpc_ich, iTCO_wdt
#                             speaker, PS/2 mouse, SMBus, LPC, watchdog (1.2 s);
#   ahci                      q35's built-in SATA controller, which devenv attaches
#                             nothing to (disk and seed are virtio): 0.4 s, and
#                             libata's probe of six empty ports after it.
# Hardware-accelerated guests keep them all: there they cost little, and
# nested virtualisation works.
TCG_MODULE_BLACKLIST = (
    "kvm,kvm_amd,kvm_intel,powernow_k8,aesni_intel,sha1_ssse3,sha256_ssse3,sha512_ssse3,"
    "pcspkr,psmouse,serio_raw,i2c_i801,lpc_ich,iTCO_wdt,ahci"
)
TCG_KERNEL_ARGS = f"cryptomgr.notests=1 modprobe.blacklist={TCG_MODULE_BLACKLIST}"


def kernel_cmdline(image_cmdline: str, console: str, *, aslr: bool, accel: str) -> str:
    """The image's kernel command line for this boot.

    Adds `norandmaps` when the instance opted out of ASLR, and TCG_KERNEL_ARGS under TCG.
    """
    cmdline = image_cmdline.replace("{console}", console)
    if not aslr:
        cmdline = f"{cmdline} norandmaps"
    if accel == "tcg":
        cmdline = f"{cmdline} {TCG_KERNEL_ARGS}"
    return cmdline.strip()


def microvm_tcg_cmdline(tsc_khz: int) -> str:
    """Kernel arguments a microvm guest needs under TCG, given the host's TSC rate in kHz.

    microvm has no HPET and no ACPI PM timer. Under TCG the kernel's PIT
    calibration of the TSC is too slow to succeed reliably, and with no other
    reference the kernel falls back to a delay-loop calibration that waited for
    a timer tick forever in 5 of 10 raw boots here (nothing on the console
    after "Marking TSC unstable due to could not calculate TSC khz"). A TCG
    guest's TSC is the host's counter, so its rate is known: tsc_early_khz skips
    the calibration, and tsc=reliable keeps the TSC as the clocksource (else an
    AMD-flavoured `-cpu max` without constant_tsc is declared unsynchronised and
    the guest clock falls back to 4 ms jiffies).
    """
    return f"tsc_early_khz={tsc_khz} tsc=reliable"


def opt(value: object) -> str:
    """A value inside a QEMU option string (`file=...,format=...`): commas doubled, as QEMU's option parser reads them.

    A host path with a comma (a project folder, DEVENV_HOME) would otherwise end
    the value there and make the rest an option of its own: `/a,readonly=off`.
    """
    return str(value).replace(",", ",,")


def qemu_binary_name(arch: str) -> str:
    return f"qemu-system-{arch}"


# Lima caps an hvf guest on Apple Silicon at 3 GiB before macOS 12.4, whose kernel panicked
# with more (lima-vm/lima#795, qemu#903; fixed in macOS 12.4 beta 1).
HVF_SAFE_MEMORY = 3 * 1024**3
HVF_FIXED_MACOS = (12, 4)


def guest_memory(memory: int, accel: str, host: HostFacts) -> int:
    """The guest RAM QEMU gets: `memory`, except where macOS itself would panic with it.

    Lima's adjustMemBytesDarwinARM64HVF (pkg/driver/qemu/qemu.go): an Apple
    Silicon Mac before macOS 12.4 panics the host kernel under hvf with more
    than 3 GiB of guest RAM. An unknown macOS version is taken as a fixed one,
    as Lima does (it only warns that it could not tell).
    """
    if (
        accel == "hvf"
        and host.system == "macos"
        and host.arch == "aarch64"
        and host.macos_version is not None
        and host.macos_version < HVF_FIXED_MACOS
    ):
        return min(memory, HVF_SAFE_MEMORY)
    return memory


def memory_warning(memory: int, accel: str, host: HostFacts) -> str | None:
    """What `devenv start` says when guest_memory gave the guest less than devenv.toml asked for."""
    given = guest_memory(memory, accel, host)
    if given == memory:
        return None
    version = ".".join(map(str, host.macos_version or ()))
    return (
        f"the guest gets {given // 1024**2} MiB instead of {memory // 1024**2} MiB: macOS {version} panics under"
        " hvf with more than 3 GiB of guest memory on Apple Silicon (fixed in macOS 12.4; lima-vm/lima#795)"
    )


def qemu_cpu(arch: str, accel: str, host: HostFacts) -> str:
    """The -cpu value: machines.cpu_model, with the features an Intel Mac's hvf cannot give a guest turned off.

    Lima's defaultCPUType (pkg/limayaml/defaults.go): on an Intel Mac an x86_64
    guest's `host` CPU loses pdpe1gb (1 GiB pages crashed guests under hvf:
    lima-vm/lima#1485) and avx512vl (AVX-512 makes macOS trap and promote the
    vCPU thread on every use: lima-vm/lima#3065, tested there on an Intel
    MacBook Pro). Under TCG neither is offered to begin with, so Lima's suffix
    for every x86_64 guest on macOS is left off there.
    """
    cpu = cpu_model(arch, accel)
    if arch == "x86_64" and accel == "hvf" and host.system == "macos":
        cpu += ",-avx512vl,-pdpe1gb"
    return cpu


def accel_option(accel: str, arch: str, host: HostFacts, tb_size_mb: int) -> str:
    """The -accel value; under TCG a bounded translation cache, and one thread per vCPU where QEMU would not.

    QEMU runs an x86_64 guest's vCPUs in one thread on an aarch64 host (the
    guest expects stronger memory ordering than the host gives); Lima's
    Cmdline asks for thread=multi for every x86_64 guest under TCG
    (pkg/driver/qemu/qemu.go, `tcg,thread=multi,tb-size=512`), which is how
    an x86_64 guest runs on Apple Silicon there. Everywhere else multi is
    QEMU's own default already, so the option is only spelled out where it
    changes something.
    """
    if accel != "tcg":
        return accel
    threads = "thread=multi," if arch == "x86_64" and host.arch == "aarch64" else ""
    return f"tcg,{threads}tb-size={tb_size_mb}"


def reports_free_pages(spec: VmSpec, host: HostFacts) -> bool:
    """Whether the balloon reports freed guest pages, for QEMU to hand back to the host.

    With the guest's RAM in a file, QEMU gives pages back by punching holes in
    it (fallocate), which only Linux has: elsewhere every report fails and
    logs "ram_block_discard_range: fallocate not available/file" to qemu.log
    (qemu/qemu system/physmem.c, ram_block_discard_range), and frees nothing.
    So a Mac's guest, whose RAM is in its file for suspend, keeps the balloon
    without reporting.
    """
    return spec.ram_file is None or host.system == "linux"


def process_name(name: str, host: HostFacts) -> str:
    """The -name value: QEMU's `process=` renames its thread with prctl(PR_SET_NAME), which only Linux has.

    Elsewhere QEMU exits at once with "Change of process name not supported
    by your OS" (os-posix.c, os_set_proc_name): on a Mac `process=` alone
    would stop every start.
    """
    if host.system == "linux":
        return f"devenv-{name},process=devenv-{name}"
    return f"devenv-{name}"


def build_argv(spec: VmSpec, binary: str | None = None) -> list[str]:
    accel = spec.accel
    if spec.host is not None:
        host = spec.host
    else:
        from devenv.hostos import current

        host = current().facts
    machine = spec.machine or resolve_machine("auto", spec.arch, direct_kernel=spec.kernel is not None)
    # microvm has no PCI bus: the same devices on virtio-mmio (`-device virtio-*-device`)
    bus = "device" if machine == "microvm" else "pci"
    memory_mb = guest_memory(spec.memory, accel, host) // (1024 * 1024)
    ram: list[str] = []
    ram_opt = ""
    if spec.ram_file is not None:
        ram = ["-object", f"memory-backend-file,id=ram0,size={memory_mb}M,mem-path={opt(spec.ram_file)},share=on"]
        ram_opt = ",memory-backend=ram0"
    argv = [binary or qemu_binary_name(spec.arch), "-name", process_name(spec.name, host)]
    argv += ["-nodefaults", "-no-user-config", "-display", "none"]
    if machine == "virt":
        # No highmem option, as Lima's `virt,accel=...`: QEMU's default (on) sizes the memory map to the
        # host's IPA since QEMU 7.0 (36 bits on an M1), which Lima's minimum QEMU on Apple Silicon (8.2.1)
        # is past; highmem=off would cap RAM at 3 GiB. Lima dropped its highmem=off for QEMU < 7.0 in
        # lima-vm/lima#3491.
        argv += ["-machine", "virt" + ram_opt]
    elif machine == "microvm":
        # ACPI on: QMP's system_powerdown reaches the guest as a power button (the GED device)
        argv += ["-machine", "microvm,acpi=on" + ram_opt]
    else:
        argv += ["-machine", machine + ram_opt]
    argv += ["-accel", accel_option(accel, spec.arch, host, spec.tcg_cache_mb)]
    argv += ["-cpu", qemu_cpu(spec.arch, accel, host)]
    argv += ["-smp", str(spec.cpus), "-m", f"{memory_mb}M", *ram]
    if spec.firmware is not None:
        argv += ["-bios", str(spec.firmware)]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        if spec.cmdline:
            argv += ["-append", spec.cmdline]
    # the disk first, usually /dev/vda; built images name root by label, since the
    # guest's virtio_blk may bind the cidata ISO first
    argv += _drive("disk0", f"file={opt(spec.disk)},format=qcow2,discard=unmap,cache=writeback", bus)
    if spec.cidata is not None:
        argv += _drive("cidata", f"file={opt(spec.cidata)},format=raw,readonly=on", bus)
    fwd = [f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"]
    fwd += [f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in spec.extra_hostfwd]
    argv += ["-netdev", ",".join(["user,id=net0", *fwd]), "-device", f"virtio-net-{bus},netdev=net0"]
    balloon = f"virtio-balloon-{bus}" + (",free-page-reporting=on" if reports_free_pages(spec, host) else "")
    argv += ["-device", f"virtio-rng-{bus}", "-device", balloon]
    for tag, path, writable in spec.shares:
        ro = "" if writable else ",readonly=on"
        argv += ["-fsdev", f"local,id={tag},path={opt(path)},security_model=none{ro}"]
        argv += ["-device", f"virtio-9p-{bus},fsdev={tag},mount_tag={tag}"]
    if spec.relay_socket is not None:  # device state a save keeps: the host agent's SSH session survives it
        argv += ["-device", f"virtio-serial-{bus},id=vser0"]
        argv += ["-chardev", f"socket,id=relay,path={opt(spec.relay_socket)},server=on,wait=off"]
        argv += ["-device", f"virtserialport,bus=vser0.0,chardev=relay,name={RELAY_PORT_NAME}"]
    argv += ["-chardev", f"file,id=serial0,path={opt(spec.serial_log)},append=on", "-serial", "chardev:serial0"]
    # QMP on a chardev with its path as a named option: `-qmp unix:PATH` reads PATH as an option's
    # implied first value, where a path with "=" before its first comma would become an option name
    argv += ["-chardev", f"socket,id=qmp,path={opt(spec.qmp_socket)},server=on,wait=off"]
    argv += ["-mon", "chardev=qmp,mode=control"]
    argv += ["-pidfile", str(spec.pid_file)]
    return argv


def _drive(node: str, options: str, bus: str) -> list[str]:
    """A virtio disk: `if=virtio` means virtio-blk-pci, so microvm names its mmio device itself."""
    if bus == "pci":
        return ["-drive", f"if=virtio,{options}"]
    return ["-drive", f"if=none,id={node},{options}", "-device", f"virtio-blk-device,drive={node}"]
