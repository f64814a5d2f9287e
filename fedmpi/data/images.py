"""Image tasks: MNIST idx files (../shared/data/mnist) and class-per-folder images.

../shared/data/mnist holds only the 10k test set, so it is split (seeded) into
a train and a test part. An image split plays the role a TextSplit plays for
text: `PixelEncoder` stands in for the tokenizer and turns a split into
batches of `pixel_values` resized to the model's image size.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedmpi.data.splits import TEST_SPLITS, Dataset
from fedmpi.errors import ConfigError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class ImageSplit:
    images: np.ndarray  # (N, H, W) or (N, H, W, C), uint8
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "ImageSplit":
        return ImageSplit(self.images[idx], self.labels[idx])


def read_idx(path: Path) -> np.ndarray:
    """An idx(.gz) array file (MNIST's format): magic, dims, big-endian sizes, data."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ConfigError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def is_mnist(folder: Path) -> bool:
    return all(_idx_file(folder, s) is not None for s in MNIST_FILES)


def load_mnist(folder: Path, name: str, seed: int, test_share: float = 0.2):
    images = read_idx(_idx_file(folder, MNIST_FILES[0]))
    labels = read_idx(_idx_file(folder, MNIST_FILES[1])).astype(np.int64)
    order = np.random.default_rng([seed, 0x1A6E]).permutation(len(labels))
    cut = int(len(labels) * (1 - test_share))
    tr, te = np.sort(order[:cut]), np.sort(order[cut:])
    return Dataset(name, ImageSplit(images[tr], labels[tr]), ImageSplit(images[te], labels[te]),
                [str(i) for i in range(10)])


def _read_folder(folder: Path) -> tuple[ImageSplit, list[str]]:
    from PIL import Image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    images, labels = [], []
    for k, cls in enumerate(classes):
        for f in sorted((folder / cls).iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                images.append(np.asarray(Image.open(f).convert("RGB")))
                labels.append(k)
    if not images:
        raise ConfigError(f"image folder {folder}: no images in class sub-folders")
    if len({im.shape for im in images}) > 1:
        raise ConfigError(f"image folder {folder}: images differ in size; resize them to one size first")
    return ImageSplit(np.stack(images), np.asarray(labels, dtype=np.int64)), classes


def is_image_folder(folder: Path, split: str) -> bool:
    d = folder / split
    return d.is_dir() and any(c.is_dir() for c in d.iterdir())


def load_image_folder(folder: Path, cfg):
    """<folder>/<train|test|val...>/<class>/<image>: one sub-folder per class."""
    train, classes = _read_folder(folder / cfg.train_split)
    tests = [cfg.test_split] if cfg.test_split else list(TEST_SPLITS)
    test_dir = next((folder / s for s in tests if (folder / s).is_dir()), None)
    if test_dir is None:
        raise ConfigError(f"image folder {folder}: no test split ({'/'.join(tests)}); set data.test_split")
    test, test_classes = _read_folder(test_dir)
    if test_classes != classes:
        raise ConfigError(f"image folder {folder}: train and test class folders differ")
    return Dataset(cfg.name, train, test, classes)


def image_task(cfg, seed: int):
    """The image task named by cfg, or None when cfg names no image data."""
    candidates = ([Path(cfg.path) / cfg.name, Path(cfg.path)] if cfg.path else [Path(cfg.name)])
    for folder in candidates:
        if folder.is_dir() and is_mnist(folder):
            return load_mnist(folder, cfg.name, seed)
        if folder.is_dir() and is_image_folder(folder, cfg.train_split):
            return load_image_folder(folder, cfg)
    return None


class PixelBatches:
    """An encoded image split (the image counterpart of data.federated.Encoded)."""

    def __init__(self, split: ImageSplit, encoder: "PixelEncoder") -> None:
        self.split = split
        self.encoder = encoder
        self.labels = torch.as_tensor(split.labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, idx) -> dict[str, torch.Tensor]:
        idx = np.asarray(list(map(int, idx)))
        return {"pixel_values": self.encoder.pixels(self.split.images[idx]), "labels": self.labels[idx]}


@dataclass
class PixelEncoder:
    """Stands in for the tokenizer of image models: uint8 images -> normalised
    (B, C, S, S) float pixels at the model's size and channel count."""
    image_size: int
    channels: int
    mean: float = 0.5
    std: float = 0.5

    def pixels(self, images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(images, dtype=torch.float32) / 255.0
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (B, C, H, W)
        if x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True).expand(-1, self.channels, -1, -1)  # via grey
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return ((x - self.mean) / self.std).contiguous()

    def encode_split(self, split: ImageSplit, max_length: int | None = None) -> PixelBatches:
        if not isinstance(split, ImageSplit):
            raise ConfigError("an image model needs an image dataset (mnist or an image folder)")
        return PixelBatches(split, self)
