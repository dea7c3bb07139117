"""Image classification data for the examples, offline first.

Five datasets, all as ``(N, H, W, C)`` float32 images in ``[0, 1]`` and int32
labels:

* ``digits``: the 1,797 8x8 digits bundled with scikit-learn. No files, no
  network: the default, so every example runs on a fresh machine.
* ``fashion_mnist`` and ``mnist``: 28x28 images in the IDX format of the
  original distributions (``train-images-idx3-ubyte.gz`` and its three
  siblings, gzipped or not).
* ``horses_or_humans``: the 1,027 training and 256 validation 300x300 PNGs of
  Laurence Moroney's two published zips (``horses/*.png``, ``humans/*.png``),
  decoded with Pillow to RGB and resized (default 150x150, the size the
  article trained at); label 0 horses, 1 humans, as Keras'
  ``flow_from_directory`` orders them. :func:`load_horses_or_humans` looks in
  ``data_dir`` (the two zips, not hashed), then the cache, then downloads
  them, checking each zip's size and SHA-256.
* ``cifar10``: the 50,000 training and 10,000 test 32x32 RGB images of the
  published ``cifar-10-python.tar.gz`` (the pickled batches of Alex
  Krizhevsky's page). :func:`load_cifar10` looks in ``data_dir`` (the
  archive, not hashed), then the cache, then downloads it, checking its size
  and its published MD5 (the only checksum the page gives), and parses every
  batch with an unpickler that builds NumPy arrays and nothing else. The
  ``examples/compare`` ResNet trains on it (``--config.dataset=cifar10``);
  the other examples take the datasets of :data:`DATASETS`.

Where :func:`load` looks for IDX files, in order:

1. ``data_dir``, when given (an error if the files are not all there);
2. the directory of the Debian/Ubuntu package, if there is one
   (``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST in
   ``/usr/share/datasets/fashion-mnist/``; Debian ships no MNIST package);
3. the cache directory, ``$XDG_CACHE_HOME/optax_gc/<name>`` (default
   ``~/.cache/optax_gc/<name>``), filled by earlier downloads;
4. a download from the dataset's canonical location (when ``download``),
   each file checked against its published SHA-256 before it is moved into
   the cache.

Files found in 1 and 2 are parsed and validated (IDX header, shapes, label
range) but not hashed: they may be gzipped differently or not at all (the
Debian package's ``.gz`` files hold the same data as the upstream ones but
differ from them in their gzip headers), or be a user's own IDX data. Files in
the cache came from a download and are hashed on every load.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A train/test split of an image classification dataset.

    Attributes:
        name: The dataset's name, one of :data:`DATASETS`.
        train_images: ``(N, H, W, C)`` float32 in ``[0, 1]``.
        train_labels: ``(N,)`` int32 in ``[0, num_classes)``.
        test_images: Like ``train_images``.
        test_labels: Like ``train_labels``.
        num_classes: How many classes there are.
        source: Where the data came from: ``"scikit-learn load_digits"`` or a
            directory path.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str


# The ten-class sets and the two-class image zips: what every example takes.
TEN_CLASS = ("digits", "fashion_mnist", "mnist")
DATASETS = (*TEN_CLASS, "horses_or_humans")
# Also loaded by :func:`load` (the compare example's ResNet trains on it).
CIFAR10 = "cifar10"

# The four IDX files of an MNIST-style dataset, in Dataset field order.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Where each IDX dataset is downloaded from, and the SHA-256 of each file
# there. Both sets are the published checksums of the canonical .gz files,
# listed by TensorFlow Datasets, torchvision's mirrors and many projects that
# pin them; the Fashion-MNIST ones go with the MD5 sums its README gives.
# The Debian package's files do not match them byte for byte: each is
# len(name) + 1 bytes shorter, the gzip header's file-name field, and holds
# the same compressed data.
URLS = {
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
}
SHA256: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
        ),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
        ),
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    },
}

# Horses or Humans (Laurence Moroney, CC BY 2.0): the two zips, their byte
# sizes and SHA-256s, and the class folders inside, in label order.
HORSES_OR_HUMANS_URL = "https://storage.googleapis.com/learning-datasets/"
HORSES_OR_HUMANS_ZIPS: dict[str, tuple[int, str]] = {
    "horse-or-human.zip": (
        149_574_867,
        "e2e6f70d3d549c5dd10a57165e55af253ee66ad750403f95c0fb76bb943633a9",
    ),
    "validation-horse-or-human.zip": (
        11_480_187,
        "ae5fff2f4f5554791f05358108e2e05d9801b191f1896ea101402f0e7f6c32c0",
    ),
}
HORSES_OR_HUMANS_CLASSES = ("horses", "humans")
HORSES_OR_HUMANS_SIZE = 150
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Debian/Ubuntu packages that ship a dataset: package name and directory.
# (`apt-cache search mnist` lists only dataset-fashion-mnist.)
DEBIAN_PACKAGES: dict[str, tuple[str, str]] = {
    "fashion_mnist": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist"),
}

# IDX type codes (the third byte of the magic number) and their big-endian
# NumPy dtypes.
# A directory argument: a path, or None for the default places.
_Dir = str | os.PathLike | None

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    image_size: int = HORSES_OR_HUMANS_SIZE,
) -> Dataset:
    """Loads a dataset by name, from local files first (see the module doc).

    Args:
        name: One of :data:`DATASETS`, or ``"cifar10"``.
        data_dir: A directory holding the four IDX files (``.gz`` or not),
            the two Horses or Humans zips, or ``cifar-10-python.tar.gz``.
            When given it is the only place looked at. Ignored for
            ``digits``.
        cache_dir: Where downloads go and are looked for; default
            :func:`default_cache_dir` of ``name``.
        download: Whether to download the files when they are nowhere local.
        image_size: Side of the square Horses or Humans images (ignored for
            the other datasets).

    Returns:
        The :class:`Dataset`.

    Raises:
        ValueError: For an unknown ``name``, a malformed IDX file or CIFAR-10
            archive, or a download whose checksum does not match (the file
            is deleted).
        FileNotFoundError: When the files are in none of the places looked at
            and cannot be downloaded; the message says what to install or
            pass.

    Example:
        >>> from examples import datasets
        >>> data = datasets.load("digits")
        >>> data.train_images.shape, data.test_images.shape, data.num_classes
        ((1438, 8, 8, 1), (359, 8, 8, 1), 10)
    """
    if name not in (*DATASETS, CIFAR10):
        raise ValueError(
            f"Unknown dataset {name!r}: use one of {TEN_CLASS} (10 classes), "
            "'cifar10' (10 classes, RGB) or 'horses_or_humans' (2 classes)."
        )
    if name == "digits":
        return load_digits()
    if name == CIFAR10:
        return load_cifar10(data_dir=data_dir, cache_dir=cache_dir, download=download)
    if name == "horses_or_humans":
        return load_horses_or_humans(
            data_dir=data_dir,
            cache_dir=cache_dir,
            download=download,
            image_size=image_size,
        )
    directory = find_idx_dir(
        name, data_dir=data_dir, cache_dir=cache_dir, download=download
    )
    return load_idx_dir(name, directory)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, split after a seeded shuffle.

    The 1,797 images (pixel values 0..16) are scaled by 1/16 to ``[0, 1]``.
    With the defaults, the last ``int(1797 * 0.2) = 359`` images of a
    permutation drawn with ``np.random.default_rng(0)`` are the test set and
    the other 1,438 the training set, the split ``examples/demo.py`` uses.

    Args:
        test_fraction: Fraction of the images held out for testing.
        seed: Seed of the permutation.

    Returns:
        The :class:`Dataset`, images ``(N, 8, 8, 1)``.
    """
    # Imported here: scikit-learn is only needed for this dataset.
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(labels))
    train, test = np.split(perm, [len(labels) - int(len(labels) * test_fraction)])
    return Dataset(
        name="digits",
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        num_classes=10,
        source="scikit-learn load_digits",
    )


def default_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/optax_gc/<name>``, or ``~/.cache/optax_gc/<name>``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "optax_gc" / name


def idx_files(directory: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """The IDX files present in ``directory`` and the names of those missing.

    Each of :data:`IDX_FILES` may be there gzipped (``<name>.gz``, preferred)
    or raw (``<name>``).

    Returns:
        ``(found, missing)``: a dict from each found name in :data:`IDX_FILES`
        to its path, and the names not found.
    """
    found, missing = {}, []
    for stem in IDX_FILES:
        for candidate in (Path(directory) / f"{stem}.gz", Path(directory) / stem):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def find_idx_dir(
    name: str, *, data_dir: _Dir = None, cache_dir: _Dir = None, download: bool = True
) -> Path:
    """The directory that holds ``name``'s IDX files, downloading if need be.

    Args and errors as in :func:`load`.

    Returns:
        ``data_dir``, the Debian directory or the cache directory.
    """
    if data_dir is not None:
        _, missing = idx_files(data_dir)
        if missing:
            raise FileNotFoundError(
                f"data_dir {os.fspath(data_dir)!r} lacks the {name} file(s) "
                f"{', '.join(f'{m}[.gz]' for m in missing)}. Put the four IDX "
                f"files there ({', '.join(IDX_FILES)}, gzipped or not), or "
                "leave data_dir unset to use the Debian package, the cache or "
                "a download."
            )
        return Path(data_dir)
    looked = []
    if name in DEBIAN_PACKAGES:
        debian_dir = Path(DEBIAN_PACKAGES[name][1])
        if not idx_files(debian_dir)[1]:
            return debian_dir
        looked.append(f"{debian_dir} (Debian package {DEBIAN_PACKAGES[name][0]})")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(name)
    looked.append(f"{cache} (download cache)")
    try:
        return _fill_cache(name, cache, download=download)
    except _UnavailableError as e:
        raise FileNotFoundError(_not_found_message(name, looked, str(e))) from e


def load_idx_dir(name: str, directory: str | os.PathLike) -> Dataset:
    """Reads and validates the four IDX files of ``directory``.

    Images must be uint8 ``(N, H, W)``, labels uint8 ``(N,)`` in ``0..9``,
    the counts must agree; images are scaled by 1/255 and given a channel
    axis.

    Raises:
        ValueError: For malformed files or inconsistent shapes, naming the
            file.
    """
    found, missing = idx_files(directory)
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}[.gz].")
    arrays = {stem: read_idx(path) for stem, path in found.items()}
    num_classes = 10
    out: list[np.ndarray] = []
    for images_stem, labels_stem in (IDX_FILES[:2], IDX_FILES[2:]):
        images, labels = arrays[images_stem], arrays[labels_stem]
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                f"{found[images_stem]}: expected uint8 images of shape (N, H, W), "
                f"got {images.dtype} {images.shape}."
            )
        if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{found[labels_stem]}: expected uint8 labels of shape "
                f"({len(images)},) to match {found[images_stem].name}, got "
                f"{labels.dtype} {labels.shape}."
            )
        if labels.size and labels.max() >= num_classes:
            raise ValueError(
                f"{found[labels_stem]}: label {labels.max()} is out of range "
                f"0..{num_classes - 1}."
            )
        out += [
            (images.astype(np.float32) / np.float32(255.0))[..., None],
            labels.astype(np.int32),
        ]
    train_images, train_labels, test_images, test_labels = out
    return Dataset(
        name=name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=num_classes,
        source=os.fspath(directory),
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file, gzipped or raw (told apart by its first bytes).

    The IDX format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B
    int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions
    ``d``, then ``d`` big-endian uint32 sizes and the data, big-endian, in C
    order.

    Args:
        path: The file.

    Returns:
        The array, in native byte order.

    Raises:
        ValueError: If the file is not gzip-readable when gzipped, has a bad
            magic number or type code, or its data size does not match its
            header, naming the file.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "x-idx2-ubyte"
        >>> _ = f.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, *range(6)]))
        >>> read_idx(f)
        array([[0, 1, 2],
               [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic number
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(
                f"{path}: gzip data is corrupt or truncated ({e}). Delete the "
                "file and fetch it again."
            ) from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file: magic number {raw[:4].hex() or 'missing'} "
            "(expected 0000 then a type code in "
            f"{sorted(f'{c:02x}' for c in _IDX_DTYPES)} and the rank)."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: IDX header of rank {ndim} needs {header} bytes; the file "
            f"has {len(raw)}. It is truncated: fetch it again."
        )
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header says {dtype} of shape {shape}, {expected} bytes "
            f"of data, but the file holds {len(raw) - header}. It is truncated "
            "or not an IDX file: fetch it again."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as hex."""
    return _digest_of(path, "sha256")


def _digest_of(path: str | os.PathLike, algorithm: str) -> str:
    """A file's digest by the ``hashlib`` algorithm named, as hex."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_in_cache(
    path: Path,
    url: str,
    *,
    size: int,
    download: bool,
    not_found: Callable[[str], str],
    sha256: str | None = None,
    md5: str | None = None,
) -> Path:
    """``path`` if its size and checksum match, else downloaded there, checked.

    A cached file of another size or checksum is deleted, never read.

    Raises:
        FileNotFoundError: ``not_found(reason)``, if the file is not (or no
            longer) there and downloading is off or fails.
        ValueError: from :func:`download_file`, if the download does not match.
    """
    if path.is_file():
        if path.stat().st_size == size and all(
            want is None or _digest_of(path, name) == want
            for name, want in (("sha256", sha256), ("md5", md5))
        ):
            return path
        path.unlink()  # truncated or foreign: never read it
    if not download:
        raise FileNotFoundError(
            not_found(
                f"{path.name} is not in the cache (or was corrupt and deleted), "
                "and downloading is turned off"
            )
        )
    try:
        download_file(url, path, sha256=sha256, md5=md5, size=size)
    except (OSError, http.client.HTTPException) as e:
        raise FileNotFoundError(not_found(f"downloading {url} failed: {e}")) from e
    return path


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    md5: str | None = None,
) -> Path:
    """Downloads ``url`` to ``dest`` if, and only if, its checksum matches.

    The data goes to a temporary file next to ``dest``, is hashed while it is
    written, and is renamed onto ``dest`` only when the hash matches, so
    ``dest`` never holds a partial or wrong file.

    Args:
        url: What to fetch (any scheme ``urllib`` opens, ``file://`` too).
        dest: Where to put it; its directory is created.
        sha256: The expected SHA-256, hex.
        size: The expected size in bytes, if known (checked first).
        md5: The expected MD5, hex, where that is all the publisher gives
            (CIFAR-10); with ``sha256`` both are checked.

    Returns:
        ``dest``.

    Raises:
        TypeError: If neither ``sha256`` nor ``md5`` is given.
        ValueError: If the size or a checksum differs (nothing is kept).
        OSError: If the download fails (nothing is kept).
    """
    if sha256 is None and md5 is None:
        raise TypeError("download_file needs sha256= or md5= to check the file.")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    tmp = Path(tmp_name)
    try:
        digest, digest_md5, written = hashlib.sha256(), hashlib.md5(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                digest.update(chunk)
                digest_md5.update(chunk)
                out.write(chunk)
                written += len(chunk)
        if size is not None and written != size:
            raise ValueError(
                f"Size mismatch for {url}: got {written} bytes, expected {size}. "
                "The download was deleted; try again, or get the file another "
                "way (see the data_dir option)."
            )
        for label, want, got in (
            ("SHA-256", sha256, digest.hexdigest()),
            ("MD5", md5, digest_md5.hexdigest()),
        ):
            if want is not None and got != want.lower():
                raise ValueError(
                    f"{label} mismatch for {url}: got {got}, expected {want}. "
                    "The download was deleted. The server or a proxy served "
                    "different data; try again later or get the files another "
                    "way (see the data_dir option)."
                )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class _UnavailableError(Exception):
    """The files are not in the cache and cannot be downloaded (the reason)."""


def _fill_cache(name: str, cache: Path, *, download: bool) -> Path:
    """``cache`` with every file checked, downloading what is missing or bad."""
    checksums: Mapping[str, str] = SHA256[name]
    for filename, sha256 in checksums.items():
        path = cache / filename
        if path.is_file():
            if sha256_of(path) == sha256:
                continue
            path.unlink()  # corrupt or foreign: never parse it
            if not download:
                raise _UnavailableError(
                    f"the cached {path} had the wrong SHA-256 and was deleted; "
                    "downloading is turned off"
                )
        elif not download:
            raise _UnavailableError("not in the cache, and downloading is turned off")
        url = URLS[name] + filename
        try:
            download_file(url, path, sha256=sha256)
        except (OSError, http.client.HTTPException) as e:
            raise _UnavailableError(f"downloading {url} failed: {e}") from e
    return cache


def _not_found_message(name: str, looked: list[str], reason: str) -> str:
    """What was tried for ``name`` and the ways to make it available."""
    apt = []  # Debian ships no MNIST package
    if name in DEBIAN_PACKAGES:
        package, directory = DEBIAN_PACKAGES[name]
        apt = [f"  - sudo apt-get install {package} (Debian/Ubuntu; into {directory})"]
    files = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES)
    return "\n".join(
        [
            f"Dataset {name!r} not found.",
            *(f"  Looked in: {place}" for place in looked),
            f"  Download: {reason}.",
            "To fix, do one of:",
            *apt,
            f"  - pass the directory holding {files} as data_dir "
            "(--config.data_dir=DIR for every example, including "
            "python -m examples.compare)",
            f"  - download it (download=True, the default; needs network access "
            f"to {URLS[name]})",
            "  - or use the bundled scikit-learn digits (dataset 'digits').",
        ]
    )


# --- Horses or Humans: two zips of PNGs ----------------------------------------


def load_horses_or_humans(
    *,
    data_dir: _Dir = None,
    cache_dir: _Dir = None,
    download: bool = True,
    image_size: int = HORSES_OR_HUMANS_SIZE,
) -> Dataset:
    """Horses or Humans: the training zip as train set, the validation zip as test.

    Each PNG is decoded with Pillow, converted to RGB (some are RGBA),
    resized to ``image_size`` x ``image_size`` (bilinear, as Keras'
    ``flow_from_directory(target_size=...)`` does) and scaled by 1/255, the
    article's ``rescale=1/255``.

    Args:
        data_dir: A directory holding ``horse-or-human.zip`` and
            ``validation-horse-or-human.zip``; when given, the only place
            looked at (the zips are read, not hashed, as for IDX files).
        cache_dir: Where downloads go and are looked for; default
            :func:`default_cache_dir` of ``"horses_or_humans"``. Cached zips
            are checked (size and SHA-256) on every load.
        download: Whether to download the zips when they are nowhere local.
        image_size: Side of the square images.

    Returns:
        The :class:`Dataset`, images ``(N, image_size, image_size, 3)``,
        labels 0 (horses) and 1 (humans), ``num_classes`` 2.

    Raises:
        ValueError: For a zip without images in both class folders, an image
            Pillow cannot read, or a download of the wrong size or SHA-256
            (nothing is kept).
        FileNotFoundError: When the zips are nowhere and cannot be
            downloaded; the message says what to pass.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be at least 1, got {image_size}.")
    train_zip, test_zip = find_horses_or_humans(
        data_dir=data_dir, cache_dir=cache_dir, download=download
    )
    train_images, train_labels = read_image_zip(train_zip, image_size)
    test_images, test_labels = read_image_zip(test_zip, image_size)
    return Dataset(
        name="horses_or_humans",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=len(HORSES_OR_HUMANS_CLASSES),
        source=os.fspath(train_zip.parent),
    )


def find_horses_or_humans(
    *, data_dir: _Dir = None, cache_dir: _Dir = None, download: bool = True
) -> tuple[Path, Path]:
    """The training and validation zips, from ``data_dir``, the cache or a download.

    Args and errors as in :func:`load_horses_or_humans`.

    Returns:
        The paths of ``horse-or-human.zip`` and ``validation-horse-or-human.zip``.
    """
    names = list(HORSES_OR_HUMANS_ZIPS)
    if data_dir is not None:
        missing = [n for n in names if not (Path(data_dir) / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"data_dir {os.fspath(data_dir)!r} lacks {', '.join(missing)}. Put "
                f"both Horses or Humans zips there ({', '.join(names)}, from "
                f"{HORSES_OR_HUMANS_URL}), or leave data_dir unset to use the "
                "cache or a download."
            )
        return Path(data_dir) / names[0], Path(data_dir) / names[1]
    cache = (
        Path(cache_dir)
        if cache_dir is not None
        else default_cache_dir("horses_or_humans")
    )
    for filename, (size, sha256) in HORSES_OR_HUMANS_ZIPS.items():
        _checked_in_cache(
            cache / filename,
            HORSES_OR_HUMANS_URL + filename,
            size=size,
            sha256=sha256,
            download=download,
            not_found=functools.partial(_zips_not_found, cache),
        )
    return cache / names[0], cache / names[1]


def horses_or_humans_available(
    *, data_dir: _Dir = None, cache_dir: _Dir = None
) -> bool:
    """Whether both zips are in ``data_dir`` (if given) or the cache; no download.

    The cache's zips are only checked for their size here; :func:`load`
    hashes them.
    """
    if data_dir is not None:
        return all((Path(data_dir) / n).is_file() for n in HORSES_OR_HUMANS_ZIPS)
    cache = (
        Path(cache_dir)
        if cache_dir is not None
        else default_cache_dir("horses_or_humans")
    )
    return all(
        (cache / n).is_file() and (cache / n).stat().st_size == size
        for n, (size, _) in HORSES_OR_HUMANS_ZIPS.items()
    )


def read_image_zip(
    path: str | os.PathLike, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The images of a zip laid out as ``horses/*.png`` and ``humans/*.png``.

    Members are read in sorted order; folders, macOS metadata
    (``__MACOSX/``, ``._*``) and files outside the two class folders are
    skipped. The class folders may sit under a common top folder.

    Args:
        path: The zip.
        image_size: Side of the square output images.

    Returns:
        ``(images, labels)``: float32 ``(N, image_size, image_size, 3)`` in
        ``[0, 1]`` and int32 ``(N,)`` (0 horses, 1 humans).

    Raises:
        ValueError: If the file is not a zip, a class folder has no image, or
            an image cannot be decoded, naming the zip (and the member).

    Example:
        >>> import io, pathlib, tempfile, zipfile
        >>> from PIL import Image
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "tiny.zip"
        >>> with zipfile.ZipFile(f, "w") as z:
        ...     for name, color in (("horses/a.png", 255), ("humans/b.png", 0)):
        ...         buffer = io.BytesIO()
        ...         Image.new("RGBA", (6, 4), (color, 0, 0, 255)).save(buffer, "PNG")
        ...         z.writestr(name, buffer.getvalue())
        >>> images, labels = read_image_zip(f, 3)
        >>> images.shape, labels.tolist(), float(images[0, 0, 0, 0])
        ((2, 3, 3, 3), [0, 1], 1.0)
    """
    # Imported here: Pillow (a dependency of matplotlib) is only needed here.
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a zip file ({e}). Fetch it again.") from e
    images, labels = [], []
    with archive:
        for member in sorted(archive.namelist()):
            parts = member.split("/")
            if (
                member.endswith("/")
                or "__MACOSX" in parts
                or parts[-1].startswith("._")
                or len(parts) < 2
                or parts[-2] not in HORSES_OR_HUMANS_CLASSES
                or not parts[-1].lower().endswith(_IMAGE_SUFFIXES)
            ):
                continue
            try:
                with Image.open(io.BytesIO(archive.read(member))) as image:
                    rgb = image.convert("RGB").resize(
                        (image_size, image_size), Image.Resampling.BILINEAR
                    )
                    images.append(np.asarray(rgb, np.uint8))
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{path}: cannot decode {member} ({e}).") from e
            labels.append(HORSES_OR_HUMANS_CLASSES.index(parts[-2]))
    counts = np.bincount(np.asarray(labels, np.int64), minlength=2)
    if counts.min() == 0:
        raise ValueError(
            f"{path}: expected PNG images in both horses/ and humans/, found "
            f"{counts[0]} and {counts[1]}. Is it a Horses or Humans zip?"
        )
    stacked = np.stack(images).astype(np.float32) / np.float32(255.0)
    return stacked, np.asarray(labels, np.int32)


def _zips_not_found(cache: Path, reason: str) -> str:
    """What was tried for Horses or Humans and the ways to make it available."""
    return "\n".join(
        [
            "Dataset 'horses_or_humans' not found.",
            f"  Looked in: {cache} (download cache)",
            f"  Download: {reason}.",
            "To fix, do one of:",
            f"  - put {' and '.join(HORSES_OR_HUMANS_ZIPS)} in a directory and "
            "pass it as data_dir (--config.data_dir=DIR)",
            "  - download them (download=True, the default; needs network access "
            f"to {HORSES_OR_HUMANS_URL})",
            "  - or use the bundled scikit-learn digits (dataset 'digits').",
        ]
    )


# --- CIFAR-10: one archive of pickled batches ------------------------------------

# The archive on Alex Krizhevsky's page, its size and the MD5 the page gives.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_SIZE = 170_498_071
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
# Its members: five training batches and one test batch of 10,000 images.
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_SIDE = 32
# What a batch's pickle may build: NumPy arrays (NumPy 1 and 2 module names)
# and, in pickles written by Python 3 at protocol 2, bytes via codecs.encode.
_CIFAR10_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and NumPy arrays; any other global is refused.

    A pickle can run any callable it names; a CIFAR-10 batch needs only
    these, so a foreign or tampered file fails instead of running code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR10_GLOBALS:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR-10 batch"
            )
        if name == "_reconstruct":  # NumPy's, whatever its module is called
            return np.ndarray.__reduce__(np.zeros(0))[0]
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def load_cifar10(
    *, data_dir: _Dir = None, cache_dir: _Dir = None, download: bool = True
) -> Dataset:
    """CIFAR-10 from ``cifar-10-python.tar.gz``: 50,000 train and 10,000 test images.

    Args:
        data_dir: A directory holding ``cifar-10-python.tar.gz``; when
            given, the only place looked at (the archive is parsed, not
            hashed, as for IDX files).
        cache_dir: Where the download goes and is looked for; default
            :func:`default_cache_dir` of ``"cifar10"``. A cached archive is
            checked (size and MD5) on every load.
        download: Whether to download the archive when it is nowhere local.

    Returns:
        The :class:`Dataset`: images ``(N, 32, 32, 3)`` float32 in ``[0, 1]``
        (the batches' channel-first rows, transposed), labels int32 in
        ``0..9``.

    Raises:
        ValueError: For an archive that is not a gzipped tar, lacks a batch,
            or holds a batch that is not CIFAR-10's (naming it), or a
            download of the wrong size or MD5 (nothing is kept).
        FileNotFoundError: When the archive is nowhere and cannot be
            downloaded; the message says what to pass.
    """
    archive = find_cifar10(data_dir=data_dir, cache_dir=cache_dir, download=download)
    train_images, train_labels, test_images, test_labels = read_cifar10(archive)
    return Dataset(
        name=CIFAR10,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=10,
        source=os.fspath(archive.parent),
    )


def find_cifar10(
    *, data_dir: _Dir = None, cache_dir: _Dir = None, download: bool = True
) -> Path:
    """The path of ``cifar-10-python.tar.gz``: ``data_dir``, the cache or a download.

    Args and errors as in :func:`load_cifar10`.
    """
    if data_dir is not None:
        path = Path(data_dir) / CIFAR10_ARCHIVE
        if not path.is_file():
            raise FileNotFoundError(
                f"data_dir {os.fspath(data_dir)!r} lacks {CIFAR10_ARCHIVE}. Put "
                f"the archive there (from {CIFAR10_URL}), or leave data_dir unset "
                "to use the cache or a download."
            )
        return path
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(CIFAR10)
    return _checked_in_cache(
        cache / CIFAR10_ARCHIVE,
        CIFAR10_URL + CIFAR10_ARCHIVE,
        size=CIFAR10_SIZE,
        md5=CIFAR10_MD5,
        download=download,
        not_found=functools.partial(_cifar10_not_found, cache),
    )


def read_cifar10(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and test images and labels of a CIFAR-10 python archive.

    Reads ``cifar-10-batches-py/data_batch_1`` to ``_5`` and ``test_batch``:
    each a pickled dict whose ``data`` is a uint8 array ``(n, 3072)`` (the
    red, green and blue 32x32 planes of each image, row-major) and whose
    ``labels`` are ``n`` ints in ``0..9``.

    Args:
        path: The archive.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: float32
        ``(N, 32, 32, 3)`` in ``[0, 1]`` and int32 ``(N,)``.

    Raises:
        ValueError: If the file is not a gzipped tar, lacks a batch, or a
            batch is not a CIFAR-10 batch, naming the file and the batch.
    """
    path = Path(path)
    raw: dict[str, bytes | None] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = set(archive.getnames())
            for batch in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH):
                member = f"{CIFAR10_FOLDER}/{batch}"
                f = archive.extractfile(member) if member in members else None
                raw[batch] = None if f is None else f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"{path}: not a gzipped tar archive ({e}). Fetch it again."
        ) from e
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for batch, pickled in raw.items():
        member = f"{CIFAR10_FOLDER}/{batch}"
        if pickled is None:
            raise ValueError(f"{path}: lacks {member}. Is it {CIFAR10_ARCHIVE}?")
        parts[batch] = _cifar10_batch(pickled, f"{path}:{member}")
    out = []
    for names in (CIFAR10_TRAIN_BATCHES, (CIFAR10_TEST_BATCH,)):
        rows = np.concatenate([parts[n][0] for n in names])
        images = rows.reshape(-1, 3, CIFAR10_SIDE, CIFAR10_SIDE).transpose(0, 2, 3, 1)
        out += [
            images.astype(np.float32) / np.float32(255.0),
            np.concatenate([parts[n][1] for n in names]),
        ]
    train_images, train_labels, test_images, test_labels = out
    return train_images, train_labels, test_images, test_labels


def _cifar10_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch's ``(data, labels)``, checked; ``where`` names it in errors."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{where}: not a CIFAR-10 batch ({e}).") from e
    if not isinstance(batch, dict) or not {"data", "labels"} <= batch.keys():
        raise ValueError(f"{where}: not a CIFAR-10 batch (no 'data' and 'labels').")
    data, labels = batch["data"], np.asarray(batch["labels"])
    pixels = 3 * CIFAR10_SIDE * CIFAR10_SIDE
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or (data.ndim != 2 or data.shape[1] != pixels)
    ):
        raise ValueError(
            f"{where}: expected uint8 data of shape (n, {pixels}), got "
            f"{getattr(data, 'dtype', type(data).__name__)} "
            f"{getattr(data, 'shape', '')}."
        )
    if labels.shape != data.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: expected {len(data)} integer labels, got {labels.dtype} "
            f"{labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels out of range 0..9.")
    return data, labels.astype(np.int32)


def _cifar10_not_found(cache: Path, reason: str) -> str:
    """What was tried for CIFAR-10 and the ways to make it available."""
    return "\n".join(
        [
            "Dataset 'cifar10' not found.",
            f"  Looked in: {cache} (download cache)",
            f"  Download: {reason}.",
            "To fix, do one of:",
            f"  - put {CIFAR10_ARCHIVE} in a directory and pass it as data_dir "
            "(--config.data_dir=DIR)",
            "  - download it (download=True, the default; needs network access "
            f"to {CIFAR10_URL})",
            "  - or use Fashion-MNIST (apt-get install dataset-fashion-mnist) or "
            "the bundled scikit-learn digits.",
        ]
    )
