"""Image features for the set metrics (FID, IS, CLIP): extractors, batched extraction and an on-disk cache.

    inception = inception_extractor(load_inception("models/fid"))
    cache = FeatureCache("eval_cache")
    features = extract_features(paths, inception, cache=cache)     # {"pool": [N, 2048], "logits": [N, 1008]}
    real = stats_for("coco_val2014_256/", inception, cache=cache)   # a folder of images, or pytorch-fid's .npz

A cached row is reused while its file keeps its size and modification time, so regenerated images are recomputed.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
import warnings
import zipfile
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from ..files import save_npz_atomic
from .encoders import center_crop, resize_shorter_side, rgb_tensor
from .metrics import FeatureStats, feature_stats
from .pairs import EvalInputError

if TYPE_CHECKING:
    import torch

    from .encoders import ClipEncoder

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")  # pytorch-fid's
FLUSH_EVERY = 1024  # new rows between cache writes while extracting (what an interruption can lose)
MERGE_AFTER = 16  # chunk files of one shard before they are merged into one
LOAD_AHEAD = 2  # batches being decoded while the extractor runs
_CHUNK_NUMBERS = itertools.count()  # orders chunks written within one clock tick


class FeatureExtractor(Protocol):
    """Images [B, 3, H, W] float in [0, 1] -> named feature arrays [B, ...]. `name` keys the cache; `image_size`
    is the square size images are brought to when loaded (None: as they are)."""

    name: str
    image_size: int | None

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]: ...


class InceptionExtractor:
    """FID Inception pool3 features and IS logits: {"pool": [B, 2048], "logits": [B, 1008]} (float32)."""

    image_size = None  # the network resizes to 299 itself, from the images as they are (pytorch-fid)

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.name = model, model.name

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        import torch

        device = next(self.model.parameters()).device
        with torch.inference_mode():
            pool, logits = self.model(images.to(device, torch.float32))
        return {"pool": pool.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}


class ClipImageExtractor:
    """CLIP image embeddings {"embed": [B, projection_dim]} (float32, not normalised), with OpenAI CLIP's own
    preprocessing of the images as loaded (PIL bicubic resize of the shorter side, centre crop)."""

    image_size = None  # ClipEncoder resizes and crops itself

    def __init__(self, clip: ClipEncoder) -> None:
        self.clip = clip
        self.name = f"clip-image-{Path(str(getattr(clip.model, 'name_or_path', '') or 'model')).name}"

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        from ..images import tensor_to_pil

        # Back to 8-bit PIL images (exact for images read from 8-bit files) so ClipEncoder preprocesses as it would.
        pictures = [tensor_to_pil(image.permute(1, 2, 0)[None]) for image in images]
        return {"embed": self.clip.embed_images(pictures).numpy()}


def inception_extractor(model: torch.nn.Module) -> FeatureExtractor:
    """The extractor of a FID Inception (networks.load_inception or InceptionFeatures)."""
    return InceptionExtractor(model)


def clip_image_extractor(clip: ClipEncoder) -> FeatureExtractor:
    """The extractor of CLIP image embeddings (encoders.load_clip)."""
    return ClipImageExtractor(clip)


class _Entry(NamedTuple):
    size: int
    mtime_ns: int
    features: dict[str, np.ndarray]


class FeatureCache:
    """Feature rows of image files, keyed by (extractor name, absolute path, file size, mtime_ns).

    On disk: `<folder>/<extractor>/<hash of the image folder>/<time>-<n>-<pid>.npz`, one shard per extractor and image
    folder. Each flush adds a chunk with the new rows, written to a temporary file and renamed into place, so an
    interrupted run leaves every chunk written before it; unreadable chunks are skipped with a warning. Later
    chunks win; a shard of more than 16 chunks is merged into one.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._shards: dict[tuple[str, Path], dict[str, _Entry]] = {}
        self._chunks: dict[tuple[str, Path], list[Path]] = {}  # the chunk files each loaded shard was read from
        self._pending: dict[tuple[str, Path], dict[str, _Entry]] = {}

    def get(self, name: str, path: str | Path) -> dict[str, np.ndarray] | None:
        """The features `put` for this file under `name`, or None when absent or the file changed since."""
        path = Path(path).resolve()
        entry = self._shard(name, path.parent).get(path.name)
        if entry is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        if (entry.size, entry.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            return None
        return dict(entry.features)

    def put(self, name: str, path: str | Path, features: dict[str, np.ndarray]) -> None:
        """Remember one image's features (one row per name); written to disk by `flush`."""
        path = Path(path).resolve()
        stat = path.stat()
        entry = _Entry(stat.st_size, stat.st_mtime_ns, {key: np.asarray(value) for key, value in features.items()})
        self._shard(name, path.parent)[path.name] = entry
        self._pending.setdefault((name, path.parent), {})[path.name] = entry

    def flush(self) -> None:
        """Write the rows put since the last flush."""
        for key, entries in self._pending.items():
            self._write_chunk(key, entries)
            if len(self._chunks[key]) > MERGE_AFTER:
                self._write_chunk(key, self._shards[key])
                *merged_away, merged = self._chunks[key]
                for chunk in merged_away:
                    chunk.unlink(missing_ok=True)
                self._chunks[key] = [merged]
        self._pending.clear()

    def _shard_folder(self, name: str, source: Path) -> Path:
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]
        digest = hashlib.sha1(f"{name}\n{source}".encode()).hexdigest()[:16]
        return self.folder / readable / digest

    def _shard(self, name: str, source: Path) -> dict[str, _Entry]:
        key = (name, source)
        if key not in self._shards:
            entries, chunks = {}, []
            for chunk in sorted(self._shard_folder(name, source).glob("*.npz")):
                rows = _read_chunk(chunk, name, source)
                if rows is not None:
                    entries.update(rows)
                    chunks.append(chunk)
            self._shards[key], self._chunks[key] = entries, chunks
        return self._shards[key]

    def _write_chunk(self, key: tuple[str, Path], entries: dict[str, _Entry]) -> None:
        name, source = key
        folder = self._shard_folder(name, source)
        folder.mkdir(parents=True, exist_ok=True)
        files = list(entries)
        arrays = {"name": np.array(name), "source": np.array(str(source)), "files": np.array(files),
                  "sizes": np.array([entries[file].size for file in files], np.int64),
                  "mtimes": np.array([entries[file].mtime_ns for file in files], np.int64)}
        for feature in entries[files[0]].features:
            arrays[f"feature.{feature}"] = np.stack([entries[file].features[feature] for file in files])
        path = folder / f"{time.time_ns():020d}-{next(_CHUNK_NUMBERS):06d}-{os.getpid()}.npz"  # sorts oldest first
        save_npz_atomic(path, **arrays)
        self._chunks.setdefault(key, []).append(path)


def _read_chunk(chunk: Path, name: str, source: Path) -> dict[str, _Entry] | None:
    """The rows of one chunk file, or None (with a warning) when it cannot be read or belongs elsewhere."""
    try:
        with np.load(chunk) as data:
            if str(data["name"]) != name or str(data["source"]) != str(source):
                return None
            features = {key.removeprefix("feature."): data[key] for key in data.files if key.startswith("feature.")}
            return {str(file): _Entry(int(size), int(mtime), {key: value[row] for key, value in features.items()})
                    for row, (file, size, mtime) in enumerate(zip(data["files"], data["sizes"], data["mtimes"],
                                                                  strict=True))}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"feature cache: skipping unreadable {chunk} ({error})", stacklevel=3)
        return None


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in `folder` (pytorch-fid's extensions, any case), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalInputError(f"{folder} is not a folder of images")
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())


def pick_images(folder: str | Path, num: int | None = None, seed: int = 0) -> list[Path]:
    """The evaluation images of `folder`: all of them (list_images), or `num` drawn with numpy RandomState(seed),
    returned in name order. EvalInputError for a missing or imageless folder, or `num` outside 1..count."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalInputError(f"{folder} is not a folder: give the folder of evaluation images")
    paths = list_images(folder)
    if not paths:
        raise EvalInputError(f"{folder} holds no images (.png, .jpg, ...): give the folder of evaluation images")
    if num is None:
        return paths
    if not 1 <= num <= len(paths):
        raise EvalInputError(f"--num {num} but {folder} holds {len(paths)} images: give --num between 1 and "
                             f"{len(paths)}")
    return [paths[index] for index in sorted(np.random.RandomState(seed).choice(len(paths), num, replace=False))]


def load_image(path: Path, image_size: int | None = None) -> torch.Tensor:
    """The image at `path` as RGB [3, H, W] float32 in [0, 1]; with `image_size`, its shorter side resized to it
    (PIL bicubic) and the centre square cropped: a plain resize for square images."""
    from ..images import open_image

    image = open_image(path)
    if image_size is not None:
        image = center_crop(resize_shorter_side(image, image_size), image_size)
    return rgb_tensor(image)


def extract_features(paths: Sequence[Path], extractor: FeatureExtractor, *, cache: FeatureCache | None = None,
                     batch_size: int = 32, device: str | torch.device | None = None, progress: bool = True,
                     image_size: int | None = None, workers: int = 4) -> dict[str, np.ndarray]:
    """The extractor's features of the images at `paths`: {name: [len(paths), ...]}, rows in `paths` order.

    Images found in `cache` are not read. The others are decoded by `workers` threads, brought to `image_size`
    (or the extractor's own image_size) by load_image, and run in batches of `batch_size` (moved to `device` when
    given); without a size, images of different sizes run in separate batches. Features computed with a resize are
    cached apart from those without. The cache is written every 1024 images and at the end, even after an error.
    """
    import torch
    from tqdm.auto import tqdm

    size = image_size if image_size is not None else extractor.image_size
    name = extractor.name if size is None else f"{extractor.name}@{size}px"
    paths = [Path(path) for path in paths]
    rows = [cache.get(name, path) if cache is not None else None for path in paths]
    todo = [index for index, row in enumerate(rows) if row is None]
    plan = [group[start:start + batch_size] for group in _size_groups(paths, todo, size)
            for start in range(0, len(group), batch_size)]
    bar = tqdm(total=len(todo), desc=f"features ({extractor.name})", unit="image", disable=not progress)
    unflushed = 0
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            loading = deque()
            for step, batch in enumerate(plan):
                while len(loading) < LOAD_AHEAD and step + len(loading) < len(plan):
                    ahead = plan[step + len(loading)]
                    loading.append([pool.submit(load_image, paths[index], size) for index in ahead])
                images = torch.stack([future.result() for future in loading.popleft()])
                out = extractor(images if device is None else images.to(device))
                for row, index in enumerate(batch):
                    rows[index] = {key: value[row] for key, value in out.items()}
                    if cache is not None:
                        cache.put(name, paths[index], rows[index])
                bar.update(len(batch))
                unflushed += len(batch)
                if cache is not None and unflushed >= FLUSH_EVERY:
                    cache.flush()
                    unflushed = 0
    finally:
        bar.close()
        if cache is not None:
            cache.flush()
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]} if rows else {}


def stats_for(paths_or_npz: str | Path | Sequence[Path], extractor: FeatureExtractor, *,
              cache: FeatureCache | None = None, feature: str = "pool", **options) -> FeatureStats:
    """Mean and covariance of one feature ("pool": FID) of a folder of images or a list of image paths, or the
    statistics stored in an .npz (FeatureStats.save or pytorch-fid's --save-stats). `options` go to
    extract_features."""
    if isinstance(paths_or_npz, (str, Path)):
        source = Path(paths_or_npz)
        if source.is_file() and source.suffix.lower() == ".npz":
            return FeatureStats.load(source)
        if not source.is_dir():
            raise EvalInputError(f"{source} is neither a folder of images nor an .npz of feature statistics")
        paths = list_images(source)
        if not paths:
            raise EvalInputError(f"{source} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    else:
        paths = list(paths_or_npz)
    features = extract_features(paths, extractor, cache=cache, **options)
    if feature not in features:
        raise EvalInputError(f"the extractor {extractor.name} gives {sorted(features)}, not {feature!r}")
    return feature_stats(features[feature])


def _size_groups(paths: list[Path], indices: list[int], size: int | None) -> list[list[int]]:
    """`indices` split by image size (read from the file headers), in order; one group when images are resized."""
    if size is not None or not indices:
        return [indices] if indices else []
    from PIL import Image, UnidentifiedImageError

    groups: dict[tuple[int, int], list[int]] = {}
    for index in indices:
        try:
            with Image.open(paths[index]) as image:
                groups.setdefault(image.size, []).append(index)
        except (UnidentifiedImageError, OSError) as error:
            raise EvalInputError(f"{paths[index]} could not be read as an image ({error})") from error
    return list(groups.values())
