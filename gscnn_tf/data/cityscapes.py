"""Finding and checking Cityscapes-layout samples, in folders or in the official zips.

A Cityscapes root is either

* a folder with ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
  ``gtFine/{split}/{city}/*_gtFine_labelIds.png``, or
* a folder holding the official ``leftImg8bit_trainvaltest.zip`` and
  ``gtFine_trainvaltest.zip`` (read in place with :mod:`zipfile`, nothing is extracted).

:func:`discover_cityscapes` pairs images with their label files (a missing partner on
either side is an error naming the file); :func:`validate_samples` is the fast pre-pass
that reads only PNG headers (and, for plain files, the last 12 bytes, to catch truncated
files) to check formats and image/label sizes before any record is written. The test
split's label files carry no labels in Cityscapes; its samples have ``label=None``.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Iterable, Optional

from gscnn_tf.utils.image_formats import PNG_SIGNATURE

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_ZIP = "leftImg8bit_trainvaltest.zip"
LABEL_ZIP = "gtFine_trainvaltest.zip"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
_NAME_RE = re.compile(r"^(?P<city>[A-Za-z0-9-]+)_(?P<seq>\d{6})_(?P<frame>\d{6})$")

_PNG_TAIL = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ConversionError(Exception):
    """A user-facing problem with the input or output (message names the file)."""


class ConversionStopped(KeyboardInterrupt):
    """A stop request (SIGTERM) during a conversion: raised by the converter's signal handler so that
    it unwinds like Ctrl-C (KeyboardInterrupt): shards being written finish, pending ones are
    dropped, temporaries are removed."""

    def __init__(self, signal_name: str = "SIGTERM"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def require_pairs(images: dict, labels: dict, missing_label: str, missing_image: str) -> None:
    """Raises ConversionError naming the first image without a label, then the first label
    without an image (``images``/``labels``: key -> path; messages say what is missing)."""
    for sources, others, problem in ((images, labels, missing_label), (labels, images, missing_image)):
        unmatched = [sources[k] for k in sources if k not in others]
        if unmatched:
            more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
            raise ConversionError(f"{unmatched[0]}: {problem}{more}")


# --------------------------------------------------------------------------- file refs
_ZIP_CACHE: dict = {}


def _open_zip(path: str) -> zipfile.ZipFile:
    key = (os.getpid(), path)
    zf = _ZIP_CACHE.get(key)
    if zf is None:
        try:
            zf = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as e:
            raise ConversionError(f"{path}: cannot open zip archive ({e})") from None
        _ZIP_CACHE[key] = zf
    return zf


@dataclass(frozen=True)
class FileRef:
    """A file on disk (``member`` None) or a member of a zip archive at ``path``."""

    path: str
    member: Optional[str] = None

    def __str__(self) -> str:
        return self.path if self.member is None else f"{self.path}:{self.member}"

    @property
    def basename(self) -> str:
        return os.path.basename(self.member if self.member is not None else self.path)

    def read(self) -> bytes:
        try:
            if self.member is None:
                with open(self.path, "rb") as f:
                    return f.read()
            with _open_zip(self.path).open(self.member) as f:
                return f.read()
        except ConversionError:
            raise
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise ConversionError(f"{self}: cannot read ({e})") from None

    def head_and_tail(self, head: int = 33, tail: int = 12) -> tuple:
        """First ``head`` bytes, last ``tail`` bytes (tail None for zip members) and the size."""
        try:
            if self.member is None:
                size = os.path.getsize(self.path)
                with open(self.path, "rb") as f:
                    first = f.read(head)
                    last = None
                    if size >= tail:
                        f.seek(size - tail)
                        last = f.read(tail)
                return first, last, size
            zf = _open_zip(self.path)
            info = zf.getinfo(self.member)
            with zf.open(self.member) as f:
                first = f.read(head)
            return first, None, info.file_size
        except ConversionError:
            raise
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise ConversionError(f"{self}: cannot read ({e})") from None


@dataclass(frozen=True)
class Sample:
    """One image and (optionally) its label file; ``name`` is the record's filename."""

    name: str
    image: FileRef
    label: Optional[FileRef] = None


# --------------------------------------------------------------------------- PNG headers
def png_header(ref: FileRef) -> dict:
    """Reads a PNG's IHDR: ``{"width", "height", "bit_depth", "color_type", "channels"}``.

    Raises :class:`ConversionError` (naming the file) for a non-PNG, an empty file or,
    for plain files, a file that does not end with the IEND chunk (truncated).
    """
    first, last, size = ref.head_and_tail()
    if size == 0:
        raise ConversionError(f"{ref}: empty file")
    if len(first) < 33 or first[:8] != PNG_SIGNATURE or first[12:16] != b"IHDR":
        raise ConversionError(f"{ref}: not a PNG file (bad signature or header)")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", first[16:26])
    if width == 0 or height == 0:
        raise ConversionError(f"{ref}: PNG header gives an empty image ({width}x{height})")
    if last is not None and last != _PNG_TAIL:
        raise ConversionError(f"{ref}: truncated PNG (no IEND chunk at the end of the file)")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type)
    if channels is None:
        raise ConversionError(f"{ref}: invalid PNG colour type {color_type}")
    return {"width": width, "height": height, "bit_depth": bit_depth, "color_type": color_type,
            "channels": channels}


def validate_samples(samples: Iterable[Sample], label_single_channel: bool = True) -> int:
    """Fast pre-pass over PNG headers: image and label readable, sizes equal, labels 8-bit grey.

    Non-PNG images (e.g. JPEG in the generic folder mode) are only checked when decoded.
    Returns the number of samples checked; raises :class:`ConversionError` on the first problem.
    """
    n = 0
    for s in samples:
        n += 1
        img = None
        if s.image.basename.lower().endswith(".png"):
            img = png_header(s.image)
            if img["bit_depth"] != 8:
                raise ConversionError(f"{s.image}: {img['bit_depth']}-bit image; only 8-bit images are supported")
        if s.label is None:
            continue
        lab = png_header(s.label)
        if label_single_channel and (lab["color_type"] != 0 or lab["bit_depth"] != 8):
            raise ConversionError(
                f"{s.label}: label PNG must be 8-bit single-channel (got colour type {lab['color_type']}, "
                f"{lab['bit_depth']} bits)")
        if img is not None and (img["width"], img["height"]) != (lab["width"], lab["height"]):
            raise ConversionError(
                f"{s.label}: label size {lab['width']}x{lab['height']} differs from image "
                f"{s.image} size {img['width']}x{img['height']}")
    return n


# --------------------------------------------------------------------------- discovery
def source_kind(root: str) -> str:
    """``"folder"`` or ``"zip"``; raises ConversionError when ``root`` is neither."""
    if not os.path.isdir(root):
        raise ConversionError(f"{root}: Cityscapes root is not a directory")
    if os.path.isdir(os.path.join(root, "leftImg8bit")):
        return "folder"
    if os.path.isfile(os.path.join(root, IMAGE_ZIP)):
        return "zip"
    raise ConversionError(
        f"{root}: neither a leftImg8bit/ folder nor {IMAGE_ZIP} found (expected a Cityscapes root)")


def _parse_name(path: str, suffix: str) -> Optional[str]:
    base = os.path.basename(path)
    if not base.endswith(suffix):
        return None
    name = base[: -len(suffix)]
    return name if _NAME_RE.match(name) else None


def _list_folder(root: str, top: str, split: str, suffix: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(root, top, split, "*", "*" + suffix))):
        name = _parse_name(path, suffix)
        if name is None:
            log.warning("skipping %s: not a Cityscapes file name", path)
            continue
        out[(os.path.basename(os.path.dirname(path)), name)] = FileRef(path)
    return out


def _list_zip(archive: str, top: str, split: str, suffix: str) -> dict:
    out = {}
    zf = _open_zip(archive)
    prefix = f"{top}/{split}/"
    for member in sorted(zf.namelist()):
        if not member.startswith(prefix) or not member.endswith(suffix):
            continue
        parts = member[len(prefix):].split("/")
        if len(parts) != 2:
            continue
        name = _parse_name(member, suffix)
        if name is None:
            log.warning("skipping %s:%s: not a Cityscapes file name", archive, member)
            continue
        out[(parts[0], name)] = FileRef(archive, member)
    return out


def discover_cityscapes(root: str, split: str, with_labels: Optional[bool] = None) -> list:
    """Pairs ``split``'s images with their ``*_gtFine_labelIds.png`` files, sorted by name.

    ``with_labels`` defaults to ``split != "test"`` (Cityscapes' test labels are empty).
    Raises :class:`ConversionError` for an unknown split, an empty split, an image without
    a label file or a label file without an image (naming the file).
    """
    if split not in SPLITS:
        raise ConversionError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if with_labels is None:
        with_labels = split != "test"
    kind = source_kind(root)
    if kind == "folder":
        images = _list_folder(root, "leftImg8bit", split, IMAGE_SUFFIX)
        labels = _list_folder(root, "gtFine", split, LABEL_SUFFIX) if with_labels else {}
        where = os.path.join(root, "leftImg8bit", split)
    else:
        images = _list_zip(os.path.join(root, IMAGE_ZIP), "leftImg8bit", split, IMAGE_SUFFIX)
        labels = {}
        if with_labels:
            label_zip = os.path.join(root, LABEL_ZIP)
            if not os.path.isfile(label_zip):
                raise ConversionError(f"{label_zip}: label archive not found")
            labels = _list_zip(label_zip, "gtFine", split, LABEL_SUFFIX)
        where = f"{os.path.join(root, IMAGE_ZIP)}:leftImg8bit/{split}/"
    if not images:
        raise ConversionError(f"{where}: no images found for split {split!r} (empty split)")
    samples = []
    if with_labels:
        require_pairs(images, labels, f"no matching *{LABEL_SUFFIX} label file",
                      f"label file without a matching *{IMAGE_SUFFIX} image")
    for key in sorted(images, key=lambda k: k[1]):
        samples.append(Sample(name=key[1], image=images[key], label=labels.get(key) if with_labels else None))
    return samples
