"""`esgd data import KIND PATH --store URI`: a dataset in its original format -> Parquet shards in
the store (esgd.worker.data.dataset describes the layout), so pods on a cluster read it from S3
like everything else. It prints the dataset's URI, which goes into the spec's `task_args.data`.

Kinds:
- cifar10: the CIFAR-10 "python version" (cifar-10-python.tar.gz, or the folder
  cifar-10-batches-py it unpacks to): data_batch_1..5 -> split `train`, test_batch -> `test`.
  Those batches are Python pickles. This is the only place that reads them, and it reads only the
  file you downloaded yourself, with an unpickler that refuses every global except the three
  numpy names an array needs (see `BatchUnpickler`). Tasks read the Parquet shards only.
- speech: frame features. PATH is a folder with one source per split (`train` and `valid`,
  optionally `test`): `<split>.parquet` (or a folder `<split>/` of Parquet files) with columns
  `utterance`, `features` (a list of floats: one frame), `label` and optionally `frame` (order
  within the utterance), or `<split>.npz` with arrays `features` [N, D], `labels` [N] and
  `utterances` [N] (read with allow_pickle=False).
- ptb: PTB-format text, one sentence per line: `ptb.train.txt`, `ptb.valid.txt` and optionally
  `ptb.test.txt` (or `train.txt`, `valid.txt`, `test.txt`) in PATH, PATH/data or
  PATH/simple-examples/data.
"""

import io
import pickle
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esgd.core.errors import InputError
from esgd.worker.data import dataset


class DataError(InputError):
    """A source that cannot be imported; the message names the file and what is wrong."""


# CIFAR-10 -----------------------------------------------------------------------------------------

_NDARRAY = object()  # stands for numpy.ndarray inside a batch: accepted by _reconstruct, never callable


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


MAX_BATCH_BYTES = 64 << 20  # a real batch is about 31 MB; anything larger is refused unread


def _reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("an array of a class other than numpy.ndarray")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and 0 <= n for n in shape)):
        raise pickle.UnpicklingError("an array with a malformed shape")
    return _numpy_reconstruct()(np.ndarray, shape, _dtype(dtype.str if isinstance(dtype, np.dtype) else dtype))


def _dtype(spec, align=False, copy=False):
    """Only plain native numbers (bool, int, uint, float), returned as numpy's shared built-in
    dtype objects: `align` and `copy` are ignored, so the pickle's next BUILD cannot rewrite the
    dtype (a private copy would take any fields and flags, and an array over them can crash)."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refusing a dtype given as {type(spec).__name__}")
    try:
        value = np.dtype(spec)
    except TypeError:
        raise pickle.UnpicklingError(f"refusing dtype {spec!r}") from None
    if value.kind not in "biuf" or value.fields is not None or value.subdtype is not None or not value.isnative:
        raise pickle.UnpicklingError(f"refusing dtype {spec!r}: only plain numbers")
    return np.dtype(value.char)


class BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch: dicts, lists, bytes, ints and numpy arrays, nothing else.

    Every global a pickle names goes through find_class; these are the only ones allowed:
    numpy's array reconstructor (under its numpy 1 and numpy 2 module names), numpy.ndarray
    (as a marker only that reconstructor accepts, so it can never be called) and numpy.dtype
    (plain numbers only, as numpy's shared built-in dtypes). Any other global — os.system,
    builtins.eval, ... — is refused."""

    ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id")


def load_batch(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 3072] uint8, labels [N] int64) of one CIFAR-10 python batch."""
    try:
        raw = BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - any failure means: not a batch we accept
        raise DataError(f"{what}: not a CIFAR-10 python batch ({error})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{what}: not a CIFAR-10 python batch (a {type(raw).__name__}, expected a dict)")
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    images, labels = raw.get("data"), raw.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise DataError(f"{what}: 'data' is not a uint8 array of shape [N, 3072]")
    if (
        not isinstance(labels, list)
        or len(labels) != len(images)
        or not all(isinstance(v, int) and 0 <= v < 10 for v in labels)
    ):
        raise DataError(f"{what}: 'labels' is not a list of {len(images)} labels in 0..9")
    return images, np.asarray(labels, dtype=np.int64)


def _cifar_files(path: Path) -> dict[str, Callable[[], bytes]]:
    """Batch name -> reader, from the .tar.gz or a folder (also one level down)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if path.is_file():
        try:
            archive = tarfile.open(path, "r:*")
        except tarfile.TarError as error:
            raise DataError(f"{path}: not a tar archive ({error})") from None
        members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile() and Path(m.name).name in names}
        return {
            name: (lambda m=m: _bounded(m.size, m.name, archive.extractfile(m).read)) for name, m in members.items()
        }
    for folder in (path, path / "cifar-10-batches-py"):
        found = {name: folder / name for name in names if (folder / name).is_file()}
        if found:
            return {
                name: (lambda f=file: _bounded(f.stat().st_size, str(f), f.read_bytes)) for name, file in found.items()
            }
    return {}


def _bounded(size: int, what: str, read: Callable[[], bytes]) -> bytes:
    if size > MAX_BATCH_BYTES:
        raise DataError(f"{what}: {size} bytes, more than a CIFAR-10 batch ({MAX_BATCH_BYTES} at most); refused unread")
    return read()


def cifar10_table(images: np.ndarray, labels: np.ndarray) -> pa.Table:
    data = pa.py_buffer(np.ascontiguousarray(images).tobytes())
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(3072), len(images), [None, data])
    return pa.table({"image": column, "label": pa.array(labels, pa.int32())})


def import_cifar10(path: Path, store: str, name: str) -> tuple[str, dict]:
    files = _cifar_files(path)
    train = sorted(n for n in files if n.startswith("data_batch_"))
    if not train:
        raise DataError(
            f"{path}: no data_batch_1..5 found (expected cifar-10-python.tar.gz or its folder cifar-10-batches-py)"
        )

    def tables(names: list[str]) -> Iterator[pa.Table]:
        for batch in names:
            yield cifar10_table(*load_batch(files[batch](), f"{path}:{batch}"))

    splits = {"train": tables(train)}
    if "test_batch" in files:
        splits["test"] = tables(["test_batch"])
    batches = train + (["test_batch"] if "test_batch" in files else [])
    return dataset.write(store, name, "cifar10", splits, {"source": "CIFAR-10 python batches", "batches": batches})


# Speech frames -----------------------------------------------------------------------------------


def _speech_source(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(utterances, features [N, D], labels, frames or None) of a split, or None if absent."""
    npz, parquet, folder = path / f"{split}.npz", path / f"{split}.parquet", path / split
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as arrays:
                missing = {"features", "labels", "utterances"} - set(arrays.files)
                if missing:
                    raise DataError(f"{npz}: missing array(s) {', '.join(sorted(missing))}")
                utt, x, y = arrays["utterances"], arrays["features"], arrays["labels"]
                frames = arrays["frames"] if "frames" in arrays.files else None
        except (ValueError, OSError) as error:
            raise DataError(f"{npz}: cannot read ({error})") from None
        if x.ndim != 2:
            raise DataError(f"{npz}: 'features' must be [frames, dims], got shape {x.shape}")
        return utt, x, y, frames
    files = [parquet] if parquet.is_file() else sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    try:
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}/{split}: cannot read Parquet ({error})") from None
    missing = {"utterance", "features", "label"} - set(table.column_names)
    if missing:
        raise DataError(f"{files[0]}: missing column(s) {', '.join(sorted(missing))}")
    lengths = pc.list_value_length(table.column("features")).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or lengths.min() == 0):
        raise DataError(f"{files[0]}: every 'features' row must have the same, non-zero length")
    dims = int(lengths[0]) if len(lengths) else 0
    x = pc.list_flatten(table.column("features")).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dims)
    frames = table.column("frame").to_numpy() if "frame" in table.column_names else None
    return (
        table.column("utterance").to_numpy(zero_copy_only=False),
        x,
        table.column("label").to_numpy(zero_copy_only=False),
        frames,
    )


def speech_tables(
    utt: np.ndarray, x: np.ndarray, y: np.ndarray, frames: np.ndarray | None, rows: int
) -> Iterator[pa.Table]:
    """Shards with each utterance's frames contiguous and in order (utterances in order of first
    appearance, frames by `frame` if given, else in source order)."""
    lengths = {"utterances": len(utt), "features": len(x), "labels": len(y)} | (
        {} if frames is None else {"frames": len(frames)}
    )
    if len(set(lengths.values())) != 1 or not len(x):
        raise DataError(f"frames: every array needs the same number (> 0) of rows, got {lengths}")
    utt = np.asarray([str(u) for u in utt]) if utt.dtype.kind not in "US" else utt.astype(str)
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError("labels must be non-negative integers")
    _, first, inverse = np.unique(utt, return_index=True, return_inverse=True)
    position = np.arange(len(utt)) if frames is None else np.asarray(frames)
    order = np.lexsort((np.arange(len(utt)), position, first[inverse]))
    utt, x, y = utt[order], x[order].astype(np.float32), y[order]
    frame_index = np.arange(len(utt)) - np.repeat(*dataset.runs(utt))
    for begin in range(0, max(len(utt), 1), rows):
        part = slice(begin, begin + rows)
        feats = pa.FixedSizeListArray.from_arrays(pa.array(x[part].reshape(-1), pa.float32()), x.shape[1])
        yield pa.table(
            {
                "utterance": pa.array(utt[part], pa.string()),
                "frame": pa.array(frame_index[part], pa.int32()),
                "features": feats,
                "label": pa.array(y[part], pa.int32()),
            }
        )


def import_speech(path: Path, store: str, name: str, rows: int = 500_000) -> tuple[str, dict]:
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder with train.(npz|parquet) and valid.(npz|parquet)")
    sources = {split: _speech_source(path, split) for split in ("train", "valid", "test")}
    for split in ("train", "valid"):
        if sources[split] is None:
            raise DataError(f"{path}: no {split}.npz, {split}.parquet or {split}/*.parquet")
    dims = {s: src[1].shape[1] for s, src in sources.items() if src is not None}
    if len(set(dims.values())) != 1:
        raise DataError(f"{path}: the splits have different feature sizes {dims}")
    splits = {s: speech_tables(*src, rows) for s, src in sources.items() if src is not None}
    return dataset.write(store, name, "speech", splits, {"dims": dims["train"]})


# PTB text ----------------------------------------------------------------------------------------


def _ptb_file(path: Path, split: str) -> Path | None:
    for folder in (path, path / "data", path / "simple-examples" / "data"):
        for name in (f"ptb.{split}.txt", f"{split}.txt"):
            if (folder / name).is_file():
                return folder / name
    return None


def import_ptb(path: Path, store: str, name: str, rows: int = 100_000) -> tuple[str, dict]:
    files = {split: _ptb_file(path, split) for split in ("train", "valid", "test")}
    for split in ("train", "valid"):
        if files[split] is None:
            raise DataError(f"{path}: no ptb.{split}.txt (or {split}.txt) in it, its data/ or simple-examples/data/")

    def tables(file: Path) -> Iterator[pa.Table]:
        try:
            lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
        except (UnicodeDecodeError, OSError) as error:
            raise DataError(f"{file}: cannot read as UTF-8 text ({error})") from None
        lines = [line for line in lines if line]
        for begin in range(0, max(len(lines), 1), rows):
            yield pa.table({"text": pa.array(lines[begin : begin + rows], pa.string())})

    splits = {split: tables(file) for split, file in files.items() if file is not None}
    return dataset.write(store, name, "ptb", splits, {"files": {s: f.name for s, f in files.items() if f}})


KINDS = {"cifar10": import_cifar10, "speech": import_speech, "ptb": import_ptb}


def run_import(kind: str, path: str, store: str | None, name: str | None = None) -> tuple[str, dict]:
    """Import `path` as a dataset of `kind` into `<store>/data/<name>` (name defaults to the kind)."""
    from esgd.store.uri import open_store

    if name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise DataError(f"--name {name!r}: use lower-case letters, digits, '.', '_' and '-'")
    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"{path}: no such file or folder")
    store_uri = open_store(store).uri
    return KINDS[kind](source, store_uri, name or kind)
