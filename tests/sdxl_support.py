"""The fully tiny SDXL folders (`fixtures.sdxl_small`) as a session fixture, for test modules to import:

    from sdxl_support import small_sdxl  # noqa: F401  (the fixture)

Each importing module registers the fixture anew; the folders are written once per session (the first module to ask
writes them under the session's base temp folder, the others read the same paths)."""

from __future__ import annotations

import pytest
from fixtures.sdxl_small import SmallSDXL, build_small_sdxl

_BUILT: dict[str, SmallSDXL] = {}


@pytest.fixture(scope="session")
def small_sdxl(tmp_path_factory: pytest.TempPathFactory, clip_tokenizer_dir) -> SmallSDXL:
    """Tiny SDXL t2i and 9-channel inpainting diffusers folders (see fixtures.sdxl_small), ~0.5 s to write."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = build_small_sdxl(tmp_path_factory.mktemp("small_sdxl"), tokenizer_dir=clip_tokenizer_dir)
    return _BUILT[key]
