"""`esgd data import`: CIFAR-10 python batches (read with an unpickler that refuses every global
but numpy's array reconstruction), speech frames (npz / Parquet) and PTB text become checked
Parquet shards in the store, local or S3, which the tasks read.

The generators here write tiny sources in the real formats; test_recipes.py uses them too."""

import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from esgd.cli.main import main
from esgd.store.base import IntegrityError
from esgd.store.uri import open_store
from esgd.worker.data import dataset
from esgd.worker.data.imports import DataError, load_batch, run_import
from esgd.worker.tasks import cifar10, ptb, speech

# Sources in their real formats --------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the CIFAR-10 batches (protocol 2): every string as
    BINSTRING (bytes under encoding="bytes"), numpy's reconstructor under its numpy 1 name."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core.", "numpy.core.")
        self.write(pickle.GLOBAL + module.encode() + b"\n" + (name or obj.__qualname__).encode() + b"\n")
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def cifar_batch(images: np.ndarray, labels: list[int], label: str = "training batch 1 of 5") -> bytes:
    sink = io.BytesIO()
    Py2Pickler(sink, protocol=2).dump(
        {
            "batch_label": label,
            "labels": labels,
            "data": images,
            "filenames": [f"img_{i:05d}.png" for i in range(len(labels))],
        }
    )
    return sink.getvalue()


def fake_cifar(folder, per_batch: int = 8, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-10-batches-py/{data_batch_1..5, test_batch} with random images whose mean colour
    depends on the label (so a network can learn something); returns what it wrote."""
    rng = np.random.default_rng(seed)
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        base = np.array(labels)[:, None] * 20
        images = np.clip(base + rng.integers(0, 60, (per_batch, 3072)), 0, 255).astype(np.uint8)
        (out / name).write_bytes(cifar_batch(images, labels))
        written[name] = (images, labels)
    return written


def fake_speech(folder, dims: int = 5, classes: int = 6, seed: int = 0) -> None:
    """train.npz and valid.parquet: utterances of 10-30 frames, labels in runs (like HMM states),
    features around a class-dependent mean."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (classes, dims))
    folder.mkdir(parents=True, exist_ok=True)

    def utterances(count, prefix):
        utt, feats, labels = [], [], []
        for u in range(count):
            length = int(rng.integers(10, 30))
            runs = np.repeat(rng.integers(0, classes, length // 4 + 1), 4)[:length]
            utt += [f"{prefix}{u:03d}"] * length
            labels.append(runs)
            feats.append(centres[runs] + rng.normal(0, 0.7, (length, dims)))
        return np.array(utt), np.concatenate(feats).astype(np.float32), np.concatenate(labels)

    utt, x, y = utterances(24, "tr")
    np.savez(folder / "train.npz", features=x, labels=y, utterances=utt)
    utt, x, y = utterances(8, "va")
    pq.write_table(pa.table({"utterance": utt, "features": list(x), "label": y}), folder / "valid.parquet")


def fake_ptb(folder, lines: int = 240, seed: int = 0) -> None:
    """ptb.{train,valid,test}.txt from a small Markov chain over 30 words (with <unk> and N)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(28)] + ["<unk>", "N"]
    nxt = rng.integers(0, len(words), (len(words), 3))
    folder.mkdir(parents=True, exist_ok=True)

    def sentence():
        w, out = int(rng.integers(len(words))), []
        for _ in range(int(rng.integers(4, 12))):
            out.append(words[w])
            w = int(nxt[w, rng.integers(3)])
        return " " + " ".join(out) + " "  # PTB lines start and end with a space

    for split, count in (("train", lines), ("valid", lines // 5), ("test", lines // 5)):
        (folder / f"ptb.{split}.txt").write_text("\n".join(sentence() for _ in range(count)) + "\n")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.strip(), err


# CIFAR-10 ----------------------------------------------------------------------------------------


def test_cifar10_batches_become_parquet_shards_the_task_reads(store_uri, tmp_path, capsys):
    written = fake_cifar(tmp_path / "src")
    code, uri, err = run_cli(capsys, "data", "import", "cifar10", str(tmp_path / "src"), "--store", store_uri)
    assert code == 0, err
    assert uri == f"{open_store(store_uri).uri.rstrip('/')}/data/cifar10" and "train: 40 rows in 5 shard(s)" in err
    meta = dataset.manifest(uri, "cifar10")
    assert [s["rows"] for s in meta["splits"]["train"]] == [8] * 5 and [s["rows"] for s in meta["splits"]["test"]] == [
        8
    ]
    x, y = cifar10.images(dataset.read_split(uri, "cifar10", "train"))
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert x.dtype == torch.uint8 and x.shape == (40, 3, 32, 32)
    assert np.array_equal(x.numpy().reshape(40, 3072), expected)  # bytes unchanged, CIFAR's channel-major order
    assert y.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    task = cifar10.task(uri, fitness="test")
    assert task.fitness[1].tolist() == written["test_batch"][1] and task.metric_name == "error rate"


def test_cifar10_from_the_tar_gz_gives_the_same_shards(tmp_path):
    fake_cifar(tmp_path / "src", per_batch=4)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _, from_dir = run_import("cifar10", str(tmp_path / "src"), str(tmp_path / "a"))
    _, from_tar = run_import("cifar10", str(archive), str(tmp_path / "b"))

    def strip(meta: dict) -> dict:
        return {split: [(s["rows"], s["sha256"]) for s in shards] for split, shards in meta["splits"].items()}

    assert strip(from_dir) == strip(from_tar)  # same bytes, same checksums


def _malicious(global_line: bytes, args: bytes) -> bytes:
    return b"\x80\x02c" + global_line + b"\n" + args + b"\x85R."  # PROTO 2, GLOBAL, arg, TUPLE1, REDUCE


@pytest.mark.parametrize("payload", ["os-system", "builtins-eval", "object-array", "structured-dtype", "other-class"])
def test_a_batch_naming_any_other_global_is_refused_before_anything_runs(payload, tmp_path, capsys):
    marker = tmp_path / "pwned"
    data = {
        "os-system": _malicious(
            b"os\nsystem", b"X" + struct.pack("<I", len(f"touch {marker}")) + f"touch {marker}".encode()
        ),
        "builtins-eval": _malicious(b"builtins\neval", b"X" + struct.pack("<I", 8) + b"1+1 == 2"),
        "object-array": cifar_batch(np.array([None] * 3072 * 2, dtype=object).reshape(2, 3072), [0, 1]),
        # a structured dtype: its pickle rebuilds the fields with BUILD, which must never reach numpy
        "structured-dtype": pickle.dumps(
            {b"data": np.zeros((2, 3072), dtype=[("a", "<u8")]), b"labels": [0, 1]}, protocol=2
        ),
        "other-class": pickle.dumps({"data": __import__("collections").OrderedDict(), "labels": []}, protocol=2),
    }[payload]
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_batch(data, "data_batch_1")
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    (src / "data_batch_1").write_bytes(data)
    code, out, err = run_cli(
        capsys, "data", "import", "cifar10", str(tmp_path / "src"), "--store", str(tmp_path / "store")
    )
    assert code == 2 and out == "" and err.startswith("esgd: error: ") and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "store" / "data" / "cifar10" / "dataset.json").exists()
    assert "refusing global" in err or "refusing dtype" in err


def test_a_batch_larger_than_any_real_one_is_refused_unread(tmp_path, capsys):
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    with open(src / "data_batch_1", "wb") as handle:
        handle.truncate(65 << 20)  # sparse: as large as a decompression bomb's member, nothing on disk
    code, out, err = run_cli(
        capsys, "data", "import", "cifar10", str(tmp_path / "src"), "--store", str(tmp_path / "store")
    )
    assert code == 2 and "refused unread" in err and len(err.strip().splitlines()) == 1


def test_a_failed_reimport_leaves_the_previous_dataset_whole(tmp_path):
    fake_cifar(tmp_path / "src", per_batch=4)
    uri, _ = run_import("cifar10", str(tmp_path / "src"), str(tmp_path / "store"))
    before = cifar10.images(dataset.read_split(uri, "cifar10", "train"))
    fake_cifar(tmp_path / "new", per_batch=4, seed=1)
    (tmp_path / "new" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        run_import("cifar10", str(tmp_path / "new"), str(tmp_path / "store"))
    after = cifar10.images(dataset.read_split(uri, "cifar10", "train"))
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_a_batch_of_the_wrong_shape_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"'data' is not a uint8 array"):
        load_batch(cifar_batch(np.zeros((2, 100), np.uint8), [0, 1]), "x")
    with pytest.raises(DataError, match="'labels'"):
        load_batch(cifar_batch(np.zeros((2, 3072), np.uint8), [0, 11]), "x")


# Speech and PTB ----------------------------------------------------------------------------------


def test_speech_frames_from_npz_and_parquet(tmp_path):
    fake_speech(tmp_path / "src")
    uri, meta = run_import("speech", str(tmp_path / "src"), str(tmp_path / "store"))
    assert meta["meta"]["dims"] == 5 and set(meta["splits"]) == {"train", "valid"}
    table = dataset.read_split(uri, "speech", "train")
    assert table.column_names == ["utterance", "frame", "features", "label"]
    source = np.load(tmp_path / "src" / "train.npz")
    assert np.array_equal(
        table.column("features").combine_chunks().flatten().to_numpy().reshape(-1, 5), source["features"]
    )
    task = speech.task(uri, hidden=8, context=2)
    assert task.train[0].shape == (len(source["labels"]), 5 * 5) and task.metric_name == "frame error rate"
    model = task.model()
    acts = [type(m).__name__ for m in model if type(m).__name__ in ("ReLU", "Sigmoid")]
    assert acts == ["ReLU"] * 3 + ["Sigmoid"] * 3  # 6 hidden layers: ReLU below, sigmoid above


def test_context_windows_stay_inside_their_utterance():
    x = np.arange(5, dtype=np.float32)[:, None] * np.array([[1, 10]], dtype=np.float32)  # 5 frames, 2 dims
    table = pa.table({"utterance": ["a", "a", "a", "b", "b"], "features": list(x), "label": [0] * 5})
    feats, _, start, end = speech.frames(table)
    out = speech.splice(feats, start, end, 1, torch.float32).numpy()
    assert out[0].tolist() == [0, 0, 0, 0, 1, 10]  # first frame of "a" repeats itself on the left
    assert out[2].tolist() == [1, 10, 2, 20, 2, 20]  # last frame of "a" does not see "b"
    assert out[3].tolist() == [3, 30, 3, 30, 4, 40]


def test_speech_import_regroups_utterances_and_orders_frames(tmp_path):
    (tmp_path / "src").mkdir()
    for split in ("train", "valid"):
        table = pa.table(
            {
                "utterance": ["b", "a", "b", "a"],
                "frame": [1, 5, 0, 2],
                "features": [[1.0], [2.0], [3.0], [4.0]],
                "label": [0, 1, 2, 3],
            }
        )
        pq.write_table(table, tmp_path / "src" / f"{split}.parquet")
    uri, _ = run_import("speech", str(tmp_path / "src"), str(tmp_path / "store"))
    table = dataset.read_split(uri, "speech", "train")
    assert table.column("utterance").to_pylist() == ["b", "b", "a", "a"]
    assert table.column("label").to_pylist() == [2, 0, 3, 1] and table.column("frame").to_pylist() == [0, 1, 0, 1]


def test_ptb_text_windows_and_vocabulary(tmp_path):
    fake_ptb(tmp_path / "src")
    uri, meta = run_import("ptb", str(tmp_path / "src"), str(tmp_path / "store"))
    assert set(meta["splits"]) == {"train", "valid", "test"}
    lines = ptb.lines_of(uri, "train")
    assert lines == [
        line.strip() for line in (tmp_path / "src" / "ptb.train.txt").read_text().splitlines() if line.strip()
    ]
    vocab = ptb.vocabulary(lines)
    tokens = ptb.stream(lines, vocab)
    assert tokens[len(lines[0].split())] == vocab[ptb.EOS]
    inputs, targets = ptb.windows(tokens, bptt=6, warmup=3)
    assert inputs.shape == targets.shape == (len(inputs), 9)
    assert (targets[:, :3] == ptb.IGNORE).all()  # warm-up tokens are read, not scored
    for i in (0, len(inputs) - 1):  # window i reads tokens [6i, 6i+9) and predicts each next one
        assert torch.equal(inputs[i], tokens[6 * i : 6 * i + 9])
        assert torch.equal(targets[i, 3:], tokens[6 * i + 4 : 6 * i + 10])
    task = ptb.task(uri, embed=8, hidden=8, bptt=6, warmup=3)
    with torch.no_grad():
        logits = task.model()(task.fitness[0][:2])
    assert logits.shape == (2, 9, len(vocab))
    assert task.metric_of_fitness(float(task.loss(logits, task.fitness[1][:2]))) == pytest.approx(
        float(task.loss(logits, task.fitness[1][:2]).exp())
    )


# Integrity and errors ----------------------------------------------------------------------------


def test_an_altered_shard_is_detected(tmp_path):
    fake_ptb(tmp_path / "src", lines=20)
    uri, meta = run_import("ptb", str(tmp_path / "src"), str(tmp_path / "store"))
    shard = tmp_path / "store" / "data" / "ptb" / meta["splits"]["train"][0]["key"]
    shard.write_bytes(shard.read_bytes()[:-5] + b"XXXXX")
    with pytest.raises(IntegrityError, match="checksum"):
        dataset.read_split(uri, "ptb", "train")


def test_bad_sources_give_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for kind, needle in (("cifar10", "no data_batch"), ("speech", "no train.npz"), ("ptb", "no ptb.train.txt")):
        code, out, err = run_cli(
            capsys, "data", "import", kind, str(tmp_path / "empty"), "--store", str(tmp_path / "s")
        )
        assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(capsys, "data", "import", "ptb", str(tmp_path / "nope"), "--store", str(tmp_path / "s"))
    assert code == 2 and "no such file" in err
    fake_ptb(tmp_path / "p", lines=20)
    uri, _ = run_import("ptb", str(tmp_path / "p"), str(tmp_path / "s"))
    with pytest.raises(TypeError, match="holds a 'ptb' dataset"):
        cifar10.task(uri)
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        cifar10.task(str(tmp_path / "s" / "data" / "nothing"))
    assert not os.path.exists(tmp_path / "s" / "data" / "cifar10")


def test_speech_arrays_of_different_lengths_are_refused(tmp_path, capsys):
    src = tmp_path / "frames"
    src.mkdir()
    for split in ("train", "valid"):
        np.savez(
            src / f"{split}.npz",
            features=np.zeros((5, 3), np.float32),
            labels=np.zeros(4, np.int64),
            utterances=np.array(["u"] * 5),
        )
    code, out, err = run_cli(capsys, "data", "import", "speech", str(src), "--store", str(tmp_path / "store"))
    assert code == 2 and "same number" in err and len(err.strip().splitlines()) == 1
