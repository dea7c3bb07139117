"""The examples' dataset loader: IDX parsing, search order, checksums, errors.

No network: IDX files are written here, downloads come from ``file://`` URLs
or a patched ``urlopen``.
"""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from examples import datasets

_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """An array in the IDX format, written independently of the parser."""
    big = np.asarray(array).astype(np.asarray(array).dtype.newbyteorder(">"))
    code = _CODES[big.dtype.str.lstrip("|")]
    dims = b"".join(int(n).to_bytes(4, "big") for n in big.shape)
    return bytes([0, 0, code, big.ndim]) + dims + big.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_mnist(directory: Path, *, gz: bool = True, n_train=6, n_test=4, seed=0):
    """Four small IDX files like MNIST's; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 3), np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 3), np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255  # scales to exactly 1.0
    for i, (stem, a) in enumerate(arrays.items()):
        # Mix gzipped and raw files when gz is None.
        write_idx(directory / stem, a, gz=gz if gz is not None else i % 2 == 0)
    return arrays


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Debian directory, an empty cache, and no network."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setitem(
        datasets.DEBIAN_PACKAGES,
        "fashion_mnist",
        ("dataset-fashion-mnist", str(tmp_path / "no-debian")),
    )
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path / "cache"


@pytest.fixture
def mirror(monkeypatch, tmp_path, offline):
    """A file:// mirror of fake fashion_mnist .gz files, with their checksums."""
    arrays = fake_mnist(tmp_path / "mirror", gz=True)
    monkeypatch.setitem(
        datasets.URLS, "fashion_mnist", (tmp_path / "mirror").as_uri() + "/"
    )
    monkeypatch.setitem(
        datasets.SHA256,
        "fashion_mnist",
        {
            f"{stem}.gz": hashlib.sha256(
                (tmp_path / "mirror" / f"{stem}.gz").read_bytes()
            ).hexdigest()
            for stem in datasets.IDX_FILES
        },
    )
    monkeypatch.setattr(urllib.request, "urlopen", _real_urlopen)
    return arrays


_real_urlopen = urllib.request.urlopen


# --- the IDX parser ------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], np.int8),
        np.array([[-300, 2], [5, 32000]], np.int16),
        np.array([-(2**31), 2**31 - 1], np.int32),
        np.array([[1.5, -2.25]], np.float32),
        np.array([np.pi], np.float64),
        np.zeros((0, 28, 28), np.uint8),
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_read_idx_round_trip(tmp_path, array, gz):
    path = write_idx(tmp_path / "x-idx-ubyte", array, gz=gz)
    out = datasets.read_idx(path)
    assert out.dtype == array.dtype.newbyteorder("=")
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_known_bytes(tmp_path):
    """The header of MNIST's label file, by hand: magic 0x00000801, count 3."""
    path = tmp_path / "labels"
    path.write_bytes(bytes.fromhex("00000801 00000003 070201"))
    np.testing.assert_array_equal(
        datasets.read_idx(path), np.array([7, 2, 1], np.uint8)
    )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", r"not an IDX file: magic number missing"),
        (bytes.fromhex("00010801 00000001 07"), r"magic number 00010801"),
        (
            bytes.fromhex("00000a01 00000001 07"),
            r"magic number 00000a01 \(expected 0000 then a type code in \['08'",
        ),
        (
            bytes.fromhex("00000803 0000001c"),
            r"header of rank 3 needs 16 bytes; the file has 8",
        ),
        (
            bytes.fromhex("00000801 00000003 0702"),
            r"uint8 of shape \(3,\), 3 bytes of data, but the file holds 2",
        ),
        (
            bytes.fromhex("00000c01 00000001 00000001 00"),
            r">i4 of shape \(1,\), 4 bytes of data, but the file holds 5",
        ),
    ],
)
def test_read_idx_errors(tmp_path, data, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match) as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "x", np.arange(1000, dtype=np.uint8), gz=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"gzip data is corrupt or truncated"):
        datasets.read_idx(path)


# --- loading from a directory ----------------------------------------------------


@pytest.mark.parametrize("gz", [True, False, None], ids=["gz", "raw", "mixed"])
def test_load_from_data_dir(tmp_path, gz):
    arrays = fake_mnist(tmp_path / "d", gz=gz)
    data = datasets.load("mnist", data_dir=tmp_path / "d", download=False)
    assert data.name == "mnist" and data.num_classes == 10
    assert data.source == str(tmp_path / "d")
    assert data.train_images.shape == (6, 5, 3, 1)
    assert data.test_images.shape == (4, 5, 3, 1)
    assert data.train_images.dtype == np.float32 and data.train_labels.dtype == np.int32
    np.testing.assert_array_equal(
        data.train_images[..., 0] * 255, arrays["train-images-idx3-ubyte"]
    )
    assert data.train_images.max() == 1.0 and data.train_images.min() >= 0.0
    np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"])


def test_data_dir_missing_files_named(tmp_path):
    fake_mnist(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("fashion_mnist", data_dir=tmp_path / "d")
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte[.gz]" in message
    assert "train-images-idx3-ubyte[.gz]" not in message.split("Put the")[0]
    assert str(tmp_path / "d") in message


def test_data_dir_is_the_only_place_looked_at(tmp_path, mirror):
    """Given a data_dir, neither the cache nor a download stands in for it."""
    with pytest.raises(FileNotFoundError, match=r"lacks the fashion_mnist file"):
        datasets.load(
            "fashion_mnist", data_dir=tmp_path / "empty", cache_dir=tmp_path / "c"
        )
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("stem", "array", "match"),
    [
        (
            "train-labels-idx1-ubyte",
            np.zeros(5, np.uint8),
            r"labels of shape \(6,\) to match train-images",
        ),
        (
            "t10k-labels-idx1-ubyte",
            np.array([1, 2, 3, 10], np.uint8),
            r"label 10 is out of range 0..9",
        ),
        (
            "train-images-idx3-ubyte",
            np.zeros((6, 5, 3), np.float32),
            r"expected uint8 images of shape \(N, H, W\), got float32",
        ),
        ("t10k-images-idx3-ubyte", np.zeros((4, 15), np.uint8), r"got uint8 \(4, 15\)"),
    ],
)
def test_load_validates_contents(tmp_path, stem, array, match):
    fake_mnist(tmp_path / "d", gz=False)
    write_idx(tmp_path / "d" / stem, array, gz=False)
    with pytest.raises(ValueError, match=match) as info:
        datasets.load("mnist", data_dir=tmp_path / "d")
    assert stem in str(info.value)


def test_debian_directory_is_used(monkeypatch, tmp_path, offline):
    fake_mnist(tmp_path / "debian")
    monkeypatch.setitem(
        datasets.DEBIAN_PACKAGES,
        "fashion_mnist",
        ("dataset-fashion-mnist", str(tmp_path / "debian")),
    )
    data = datasets.load("fashion_mnist", cache_dir=offline)
    assert data.source == str(tmp_path / "debian")
    assert not offline.exists()  # neither cache nor download touched


# --- download and checksums --------------------------------------------------


def test_download_file_ok_and_atomic(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"some bytes" * 1000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "sub" / "file.gz"
    assert datasets.download_file(src.as_uri(), dest, sha256=sha.upper()) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert os.listdir(dest.parent) == ["file.gz"]  # no temporary left behind
    assert datasets.sha256_of(dest) == sha


def test_download_file_checksum_mismatch_keeps_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"tampered")
    dest = tmp_path / "cache" / "file.gz"
    with pytest.raises(
        ValueError,
        match=r"SHA-256 mismatch for file://.*expected 0{64}\. The download was deleted",
    ):
        datasets.download_file(src.as_uri(), dest, sha256="0" * 64)
    assert os.listdir(dest.parent) == []


def test_download_file_network_error_keeps_nothing(tmp_path, offline):
    dest = tmp_path / "cache" / "file.gz"
    with pytest.raises(urllib.error.URLError):
        datasets.download_file("https://example.invalid/x.gz", dest, sha256="0" * 64)
    assert os.listdir(dest.parent) == []


def test_download_into_cache_then_reuse(monkeypatch, offline, mirror):
    data = datasets.load("fashion_mnist", cache_dir=offline)
    assert data.source == str(offline)
    np.testing.assert_array_equal(data.train_labels, mirror["train-labels-idx1-ubyte"])
    assert sorted(os.listdir(offline)) == sorted(f"{s}.gz" for s in datasets.IDX_FILES)

    # The second load is served by the (hash-checked) cache: no network.
    _forbid_downloads(monkeypatch)
    again = datasets.load("fashion_mnist", cache_dir=offline, download=False)
    np.testing.assert_array_equal(again.test_images, data.test_images)


def _forbid_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, any download fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", fail)


def test_corrupt_cache_file_is_replaced(offline, mirror):
    datasets.load("fashion_mnist", cache_dir=offline)
    cached = offline / "train-images-idx3-ubyte.gz"
    good = cached.read_bytes()
    cached.write_bytes(good[:-1] + b"!")
    datasets.load("fashion_mnist", cache_dir=offline)
    assert cached.read_bytes() == good


def test_corrupt_cache_file_without_download(offline, mirror):
    datasets.load("fashion_mnist", cache_dir=offline)
    cached = offline / "t10k-labels-idx1-ubyte.gz"
    cached.write_bytes(b"junk")
    with pytest.raises(
        FileNotFoundError, match=r"had the wrong SHA-256 and was deleted"
    ):
        datasets.load("fashion_mnist", cache_dir=offline, download=False)
    assert not cached.exists()


def test_checksum_failure_on_download(monkeypatch, offline, mirror):
    monkeypatch.setitem(
        datasets.SHA256["fashion_mnist"], "t10k-images-idx3-ubyte.gz", "f" * 64
    )
    with pytest.raises(
        ValueError, match=r"SHA-256 mismatch for file://.*t10k-images-idx3-ubyte\.gz"
    ):
        datasets.load("fashion_mnist", cache_dir=offline)
    assert "t10k-images-idx3-ubyte.gz" not in os.listdir(offline)
    assert not [f for f in os.listdir(offline) if f.startswith(".")]


# --- nothing available ---------------------------------------------------------


@pytest.mark.parametrize("download", [False, True])
def test_nothing_available_says_what_to_do(offline, download):
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("fashion_mnist", cache_dir=offline, download=download)
    message = str(info.value)
    assert "Dataset 'fashion_mnist' not found." in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "--config.data_dir=DIR for every example" in message
    assert "download=True" in message
    assert str(offline) in message and "no-debian" in message
    if download:
        assert "network disabled in tests" in message
    else:
        assert "downloading is turned off" in message


def test_nothing_available_mnist_has_no_apt_hint(offline):
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("mnist", cache_dir=offline, download=False)
    assert "apt-get" not in str(info.value)
    assert "https://storage.googleapis.com/cvdf-datasets/mnist/" in str(info.value)


def test_unknown_dataset():
    with pytest.raises(
        ValueError,
        match=r"Unknown dataset 'svhn': use one of \('digits', 'fashion_mnist', 'mnist'\)"
        r" \(10 classes\), 'cifar10'",
    ):
        datasets.load("svhn")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets.default_cache_dir("mnist") == tmp_path / "optax_gc" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert (
        datasets.default_cache_dir("mnist")
        == Path.home() / ".cache" / "optax_gc" / "mnist"
    )


def test_pinned_checksums_are_complete():
    for name in ("fashion_mnist", "mnist"):
        assert set(datasets.SHA256[name]) == {f"{s}.gz" for s in datasets.IDX_FILES}
        for sha in datasets.SHA256[name].values():
            assert len(sha) == 64 and int(sha, 16) >= 0
        assert datasets.URLS[name].endswith("/")


# --- the real data -------------------------------------------------------------


def test_digits():
    data = datasets.load("digits")
    assert data.source == "scikit-learn load_digits"
    assert data.train_images.shape == (1438, 8, 8, 1)
    assert data.test_images.shape == (359, 8, 8, 1)
    assert data.train_images.dtype == np.float32 and data.test_labels.dtype == np.int32
    assert data.train_images.min() == 0.0 and data.train_images.max() == 1.0
    assert set(np.unique(data.train_labels)) == set(range(10))
    # The split is fixed: the same on every call.
    np.testing.assert_array_equal(datasets.load("digits").test_labels, data.test_labels)


@pytest.mark.skipif(
    not os.path.isdir(datasets.DEBIAN_PACKAGES["fashion_mnist"][1]),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_debian_fashion_mnist():
    data = datasets.load("fashion_mnist", download=False)
    assert data.source == datasets.DEBIAN_PACKAGES["fashion_mnist"][1]
    assert data.train_images.shape == (60000, 28, 28, 1)
    assert data.test_images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(data.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test_labels), [1000] * 10)


# --- Horses or Humans: zips of PNGs ----------------------------------------------


def _png(size, color, mode="RGBA"):
    from PIL import Image

    buffer = io.BytesIO()
    fill = (*color, 255) if mode == "RGBA" else color
    Image.new(mode, size, fill).save(buffer, "PNG")
    return buffer.getvalue()


def fake_hoh_zip(path: Path, n: int, *, top: str = "", junk: bool = True) -> Path:
    """A zip laid out as the published ones: horses/*.png, humans/*.png."""

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n):
            cls, red = (("horses", 255), ("humans", 0))[i % 2]
            mode = "RGBA" if i % 3 else "RGB"  # the real zips mix both
            z.writestr(
                f"{top}{cls}/{cls}{i:02d}-0.png", _png((12, 9), (red, 10, 20), mode)
            )
        if junk:
            z.writestr(f"__MACOSX/{top}horses/._horses00-0.png", b"not a png")
            z.writestr(f"{top}horses/", b"")
            z.writestr(f"{top}README.txt", b"notes")
    return path


def fake_hoh(directory: Path, **kwargs) -> Path:
    fake_hoh_zip(directory / "horse-or-human.zip", 6, **kwargs)
    fake_hoh_zip(directory / "validation-horse-or-human.zip", 4, **kwargs)
    return directory


@pytest.fixture
def hoh_mirror(monkeypatch, tmp_path, offline):
    """A file:// mirror of two small zips, with their sizes and checksums."""
    mirror = fake_hoh(tmp_path / "hoh-mirror")
    monkeypatch.setattr(datasets, "HORSES_OR_HUMANS_URL", mirror.as_uri() + "/")
    monkeypatch.setattr(
        datasets,
        "HORSES_OR_HUMANS_ZIPS",
        {
            name: (
                (mirror / name).stat().st_size,
                hashlib.sha256((mirror / name).read_bytes()).hexdigest(),
            )
            for name in datasets.HORSES_OR_HUMANS_ZIPS
        },
    )
    monkeypatch.setattr(urllib.request, "urlopen", _real_urlopen)
    return mirror


@pytest.mark.parametrize("top", ["", "horse-or-human/"])
def test_horses_or_humans_from_data_dir(tmp_path, top):
    data = datasets.load(
        "horses_or_humans", data_dir=fake_hoh(tmp_path / "d", top=top), image_size=5
    )
    assert data.source == os.fspath(tmp_path / "d") and data.num_classes == 2
    assert data.train_images.shape == (6, 5, 5, 3)
    assert data.test_images.shape == (4, 5, 5, 3)
    assert data.train_images.dtype == np.float32 and data.train_labels.dtype == np.int32
    # Sorted member names: horses first (label 0), then humans (label 1).
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    # rescale=1/255; RGBA and RGB both become RGB.
    np.testing.assert_allclose(data.train_images[0, 0, 0], [1.0, 10 / 255, 20 / 255])
    np.testing.assert_allclose(data.train_images[3, 2, 2], [0.0, 10 / 255, 20 / 255])


def test_horses_or_humans_default_size(tmp_path):
    data = datasets.load_horses_or_humans(data_dir=fake_hoh(tmp_path / "d"))
    assert data.train_images.shape[1:] == (150, 150, 3)


def test_horses_or_humans_data_dir_missing_zip(tmp_path):
    fake_hoh_zip(tmp_path / "d" / "horse-or-human.zip", 4)
    with pytest.raises(
        FileNotFoundError, match=r"lacks validation-horse-or-human\.zip\. Put both"
    ):
        datasets.load("horses_or_humans", data_dir=tmp_path / "d")
    assert not datasets.horses_or_humans_available(data_dir=tmp_path / "d")


def test_horses_or_humans_bad_zips(tmp_path):
    one_class = tmp_path / "one.zip"

    with zipfile.ZipFile(one_class, "w") as z:
        z.writestr("horses/a.png", _png((4, 4), (1, 2, 3)))
    with pytest.raises(ValueError, match=r"found 1 and 0\. Is it a Horses or Humans"):
        datasets.read_image_zip(one_class, 4)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("humans/b.png", b"not a png")
    with pytest.raises(ValueError, match=r"cannot decode humans/b\.png"):
        datasets.read_image_zip(broken, 4)
    (tmp_path / "plain.zip").write_bytes(b"plain text")
    with pytest.raises(ValueError, match=r"not a zip file"):
        datasets.read_image_zip(tmp_path / "plain.zip", 4)


def test_horses_or_humans_download_then_cache(monkeypatch, offline, hoh_mirror):
    assert not datasets.horses_or_humans_available(cache_dir=offline)
    data = datasets.load("horses_or_humans", cache_dir=offline, image_size=4)
    assert data.source == os.fspath(offline)
    assert sorted(p.name for p in offline.iterdir()) == sorted(
        datasets.HORSES_OR_HUMANS_ZIPS
    )
    assert datasets.horses_or_humans_available(cache_dir=offline)

    _forbid_downloads(monkeypatch)
    again = datasets.load("horses_or_humans", cache_dir=offline, download=False)
    np.testing.assert_array_equal(again.test_labels, data.test_labels)


def test_horses_or_humans_corrupt_cache_without_download(offline, hoh_mirror):
    datasets.load("horses_or_humans", cache_dir=offline, image_size=4)
    (offline / "horse-or-human.zip").write_bytes(b"changed")
    with pytest.raises(FileNotFoundError, match=r"corrupt and deleted\), and downlo"):
        datasets.load("horses_or_humans", cache_dir=offline, download=False)
    assert not (offline / "horse-or-human.zip").exists()


@pytest.mark.parametrize("what", ["size", "sha256"])
def test_horses_or_humans_mismatch_keeps_nothing(
    monkeypatch, offline, hoh_mirror, what
):
    size, sha = datasets.HORSES_OR_HUMANS_ZIPS["horse-or-human.zip"]
    bad = (size + 1, sha) if what == "size" else (size, "0" * 64)
    monkeypatch.setitem(datasets.HORSES_OR_HUMANS_ZIPS, "horse-or-human.zip", bad)
    match = "Size mismatch" if what == "size" else "SHA-256 mismatch"
    with pytest.raises(ValueError, match=match):
        datasets.load("horses_or_humans", cache_dir=offline)
    assert not offline.exists() or not any(offline.iterdir())


def test_horses_or_humans_offline_says_what_to_do(offline):
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("horses_or_humans", cache_dir=offline)
    message = str(info.value)
    assert "Dataset 'horses_or_humans' not found." in message
    assert "network disabled in tests" in message
    assert "--config.data_dir=DIR" in message and "'digits'" in message


def test_horses_or_humans_pinned():
    # The published sizes and SHA-256s, as the issue states them.
    sizes = {"horse-or-human.zip": 149574867, "validation-horse-or-human.zip": 11480187}
    train_sha = "e2e6f70d3d549c5dd10a57165e55af253ee66ad750403f95c0fb76bb943633a9"
    val_sha = "ae5fff2f4f5554791f05358108e2e05d9801b191f1896ea101402f0e7f6c32c0"
    shas = {"horse-or-human.zip": train_sha, "validation-horse-or-human.zip": val_sha}
    pinned = datasets.HORSES_OR_HUMANS_ZIPS
    assert {name: size for name, (size, _) in pinned.items()} == sizes
    assert {name: sha for name, (_, sha) in pinned.items()} == shas
    assert datasets.HORSES_OR_HUMANS_URL == (
        "https://storage.googleapis.com/learning-datasets/"
    )


# --- CIFAR-10: a tar.gz of pickled batches -------------------------------------


def cifar_batch(n: int, seed: int) -> dict:
    """One batch as the published archive holds it, built here independently."""
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"batch {seed}",
        "labels": [int(v) for v in rng.integers(0, 10, n)],
        "data": rng.integers(0, 256, (n, 3072), np.uint8),
        "filenames": [f"img_{seed}_{i}.png" for i in range(n)],
    }


def fake_cifar(path: Path, *, n=2, batches=None, extra=None) -> dict:
    """A small cifar-10-python.tar.gz: 5 training batches of n, a test batch of 3.

    ``batches`` replaces pickled members by raw bytes (or drops them with
    None); returns the batch dicts written.
    """
    written = {f"data_batch_{i}": cifar_batch(n, i) for i in range(1, 6)}
    written["test_batch"] = cifar_batch(3, 9)
    members = {name: pickle.dumps(b, protocol=2) for name, b in written.items()}
    members["batches.meta"] = pickle.dumps({"label_names": list("abcdefghij")})
    members.update(batches or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**members, **(extra or {})}.items():
            if data is None:
                continue
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return written


def test_cifar10_from_data_dir(tmp_path):
    written = fake_cifar(tmp_path / "d" / "cifar-10-python.tar.gz")
    data = datasets.load("cifar10", data_dir=tmp_path / "d")
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.source == os.fspath(tmp_path / "d")
    assert data.train_images.shape == (10, 32, 32, 3)
    assert data.test_images.shape == (3, 32, 32, 3)
    assert data.train_images.dtype == np.float32 and data.train_labels.dtype == np.int32
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert data.train_labels.tolist() == [v for b in train for v in b["labels"]]
    assert data.test_labels.tolist() == written["test_batch"]["labels"]
    # Row 3 of the third batch's 2nd image: red plane first, row-major.
    raw = written["data_batch_3"]["data"][1]
    for c in range(3):
        assert (
            data.train_images[5, 3, 7, c]
            == np.float32(raw[c * 1024 + 3 * 32 + 7]) / 255
        )
    assert data.train_images.min() >= 0.0 and data.train_images.max() <= 1.0


def test_cifar10_data_dir_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks cifar-10-python\.tar\.gz"):
        datasets.load("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("batches", "match"),
    [
        ({"data_batch_4": None}, r"lacks cifar-10-batches-py/data_batch_4"),
        ({"test_batch": b"not a pickle"}, r"test_batch: not a CIFAR-10 batch"),
        (
            {"data_batch_1": pickle.dumps({"data": np.zeros((2, 5), np.uint8)})},
            r"data_batch_1: not a CIFAR-10 batch \(no 'data' and 'labels'\)",
        ),
        (
            {
                "data_batch_2": pickle.dumps(
                    {"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}
                )
            },
            r"expected uint8 data of shape \(n, 3072\), got float32",
        ),
        (
            {
                "data_batch_5": pickle.dumps(
                    {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}
                )
            },
            r"data_batch_5: labels out of range 0..9",
        ),
        (
            {
                "test_batch": pickle.dumps(
                    {"data": np.zeros((2, 3072), np.uint8), "labels": [0]}
                )
            },
            r"expected 2 integer labels",
        ),
    ],
)
def test_cifar10_bad_batches_name_the_member(tmp_path, batches, match):
    fake_cifar(tmp_path / "cifar-10-python.tar.gz", batches=batches)
    with pytest.raises(ValueError, match=match):
        datasets.read_cifar10(tmp_path / "cifar-10-python.tar.gz")


class _Touch:
    """Unpickling this would run ``touch <marker>``: the loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_foreign_pickles(tmp_path):
    marker = tmp_path / "ran"
    fake_cifar(
        tmp_path / "cifar-10-python.tar.gz",
        batches={"data_batch_1": pickle.dumps({"data": _Touch(marker), "labels": []})},
    )
    with pytest.raises(ValueError, match=r"global posix\.system is not allowed"):
        datasets.read_cifar10(tmp_path / "cifar-10-python.tar.gz")
    assert not marker.exists()


def test_cifar10_not_a_tar(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"plain text")
    with pytest.raises(ValueError, match=r"not a gzipped tar archive"):
        datasets.read_cifar10(tmp_path / "x.tar.gz")


@pytest.fixture
def cifar_mirror(monkeypatch, tmp_path, offline):
    """A file:// mirror of a small archive, with its size and MD5 pinned."""
    archive = tmp_path / "cifar-mirror" / "cifar-10-python.tar.gz"
    written = fake_cifar(archive)
    monkeypatch.setattr(datasets, "CIFAR10_URL", archive.parent.as_uri() + "/")
    monkeypatch.setattr(datasets, "CIFAR10_SIZE", archive.stat().st_size)
    monkeypatch.setattr(
        datasets, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest()
    )
    monkeypatch.setattr(urllib.request, "urlopen", _real_urlopen)
    return written


def test_cifar10_download_then_cache(monkeypatch, offline, cifar_mirror):
    data = datasets.load("cifar10", cache_dir=offline)
    assert data.source == os.fspath(offline)
    assert os.listdir(offline) == ["cifar-10-python.tar.gz"]
    assert data.test_labels.tolist() == cifar_mirror["test_batch"]["labels"]
    _forbid_downloads(monkeypatch)
    again = datasets.load("cifar10", cache_dir=offline, download=False)
    np.testing.assert_array_equal(again.train_images, data.train_images)


def test_cifar10_corrupt_cache_without_download(offline, cifar_mirror):
    datasets.load("cifar10", cache_dir=offline)
    cached = offline / "cifar-10-python.tar.gz"
    good = cached.read_bytes()
    cached.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, wrong MD5
    with pytest.raises(FileNotFoundError, match=r"corrupt and\s+deleted\)"):
        datasets.load("cifar10", cache_dir=offline, download=False)
    assert not cached.exists()


@pytest.mark.parametrize("what", ["size", "md5"])
def test_cifar10_mismatch_keeps_nothing(monkeypatch, offline, cifar_mirror, what):
    if what == "size":
        monkeypatch.setattr(datasets, "CIFAR10_SIZE", datasets.CIFAR10_SIZE + 1)
    else:
        monkeypatch.setattr(datasets, "CIFAR10_MD5", "0" * 32)
    match = "Size mismatch" if what == "size" else "MD5 mismatch"
    with pytest.raises(ValueError, match=match):
        datasets.load("cifar10", cache_dir=offline)
    assert not offline.exists() or not any(offline.iterdir())


def test_cifar10_offline_says_what_to_do(offline):
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("cifar10", cache_dir=offline)
    message = str(info.value)
    assert "Dataset 'cifar10' not found." in message
    assert "network disabled in tests" in message
    assert "--config.data_dir=DIR" in message


def test_download_file_needs_a_checksum(tmp_path):
    with pytest.raises(TypeError, match=r"needs sha256= or md5="):
        datasets.download_file("file:///nothing", tmp_path / "x")


def test_cifar10_pinned():
    # The published archive, as the issue states it.
    assert datasets.CIFAR10_URL + datasets.CIFAR10_ARCHIVE == (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    )
    assert datasets.CIFAR10_SIZE == 170_498_071
    assert datasets.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
