"""Guest images: definitions (vmimages/), download + verify + cache, offline builds, overlays.

Nothing here is imported by hot paths such as `devenv list`; this file imports
nothing so `import devenv.images.catalog` pays only for what it uses.

The API the CLI calls (each module's docstring says why it is shaped so):

    catalog.list_images(arch=None, *, all_arches=False) -> list[ImageInfo]   # devenv image list
    catalog.remove(name, arch=None) -> list[Path]                             # devenv image rm
    catalog.resolve(image, arch=None, *, progress=None) -> ImageRecord        # devenv start --image
    download.pull(name, arch=None, *, progress=None, force=False) -> ImageRecord   # devenv image pull
    build.build(name="debian-12", arch=None, *, mirror=None, progress=None,
                force=False, compress=False) -> ImageRecord                  # devenv image build
    overlay.create_overlay(base, overlay, size=None) -> Path                  # instance disk
    overlay.resize(disk, size) -> None

`progress` for downloads is callable(done_bytes, total_bytes | None); for builds
callable(step: str). An ImageRecord carries the disk, and for built or
kernel-carrying images the kernel, initrd and kernel command line.
"""
