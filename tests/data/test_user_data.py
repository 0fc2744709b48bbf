"""TODO"""

from __future__ import annotations

import json
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers.datasets import (
    FLOWERS,
    add_tar_bytes,
    tar_folder,
    write_cifar10_pickles,
    write_images,
    write_npz,
    write_study_file,
)

from data import DatasetError, DatasetRef, final_evaluation, load_dataset
from search import StudySpecError, parse_spec


def load(path: Path, cache: Path, **options) -> object:
    return load_dataset(DatasetRef(path=str(path), **options), cache_dir=cache)

def test_plain_class_folder_is_training_data_with_a_seeded_stratified_test_split(tmp_path):
    root = write_images(tmp_path / "flowers")
    ds = load(root, tmp_path / "cache")
    assert ds.input_shape == (40, 48, 1) and ds.num_classes == 7 and ds.class_names == FLOWERS
    assert len(ds.y_train) == 112 and ds.n_test == 28
    with final_evaluation():
        _, y_test = ds.test_split()
    assert np.bincount(y_test).tolist() == [4] * 7 and np.bincount(ds.y_train).tolist() == [16] * 7
    d = ds.description
    assert d["shape"] == [40, 48, 1] and d["class_names"] == list(FLOWERS) and d["num_classes"] == 7
    assert (d["n_train"], d["n_test"], d["skipped_unreadable"]) == (112, 28, 0)
    assert d["test_split"] == "held out (0.2, seed 0)"
    assert d["source"] == str(root) and d["fingerprint"] == ds.fingerprint
    json.dumps(d)  # a study user attribute: JSON-able
    again = load(root, tmp_path / "other-cache")
    assert again.fingerprint == ds.fingerprint  # the held-out split is seeded: the same every time
    assert load(root, tmp_path / "c3", test_fraction=0.5).n_test == 70

def test_train_and_test_folders_are_used_as_given(tmp_path):
    write_images(tmp_path / "ds" / "train", classes=("a", "b", "c"), n=6, mode="RGB", size=(20, 30))
    write_images(tmp_path / "ds" / "test", classes=("a", "b"), n=2, mode="RGB", size=(20, 30), seed=1)
    ds = load(tmp_path / "ds", tmp_path / "cache")
    assert ds.input_shape == (20, 30, 3) and ds.class_names == ("a", "b", "c")
    assert (len(ds.y_train), ds.n_test, ds.description["test_split"]) == (18, 4, "given")
    with final_evaluation():
        assert sorted(set(ds.test_split()[1].tolist())) == [0, 1]  # test labels are training classes' indices

def test_a_tarball_of_a_folder_reads_as_the_folder(tmp_path):
    root = write_images(tmp_path / "flowers", n=5)
    tarred = tar_folder(root, tmp_path / "flowers.tgz", "flowers")
    assert load(tarred, tmp_path / "c1").fingerprint == load(root, tmp_path / "c2").fingerprint

def test_a_name_is_a_folder_or_file_in_data_dir(tmp_path):
    data_dir = tmp_path / "datasets"
    write_images(data_dir / "flowers", n=5)
    write_npz(data_dir / "digits.npz")
    tar_folder(write_images(tmp_path / "src", classes=("x", "y"), n=5), data_dir / "shapes.tar.gz", "shapes")
    assert load_dataset("flowers", data_dir=data_dir, cache_dir=tmp_path / "c").num_classes == 7
    assert load_dataset("digits", data_dir=data_dir, cache_dir=tmp_path / "c").input_shape == (24, 24, 3)
    assert load_dataset("shapes", data_dir=data_dir, cache_dir=tmp_path / "c").class_names == ("x", "y")
    with pytest.raises(DatasetError, match=r"unknown dataset 'tulips': not one of cifar10, cifar100, mnist, and "
                                           r"DATA_DIR .* holds none of tulips, tulips.npz, tulips.tar.gz, tulips.tgz"):
        load_dataset("tulips", data_dir=data_dir, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match=r"DATA_DIR is not set .*dataset: \{path: \.\.\.\}"):
        load_dataset("tulips", cache_dir=tmp_path / "c")

def test_npz_with_keras_keys_and_optional_class_names(tmp_path):
    named = write_npz(tmp_path / "a.npz", class_names=np.array(["ant", "bee", "cat", "dog", "eel"]))
    ds = load(named, tmp_path / "c")
    assert ds.input_shape == (24, 24, 3) and ds.class_names == ("ant", "bee", "cat", "dog", "eel")
    assert ds.description["test_split"] == "given" and ds.n_test == 20
    plain = write_npz(tmp_path / "b.npz", shape=(16, 16), test=False)  # grayscale (N, H, W), no test arrays
    ds = load(plain, tmp_path / "c")
    assert ds.input_shape == (16, 16, 1) and ds.class_names == ("0", "1", "2", "3", "4")
    assert ds.n_test == 10 and ds.description["test_split"] == "held out (0.2, seed 0)"

def test_cifar_style_pickle_folder_by_path(tmp_path):
    folder = write_cifar10_pickles(tmp_path)
    ds = load(folder, tmp_path / "c")
    assert ds.input_shape == (32, 32, 3) and ds.class_names[0] == "airplane" and ds.description["format"] == "pickles"

def test_image_size_resizes_once_at_decode_time(tmp_path):
    root = write_images(tmp_path / "mixed", classes=("a", "b"), n=3, size=(40, 48))
    write_images(root, classes=("b",), n=1, size=(30, 30), seed=2)  # overwrites b/000.png with a 30x30 image
    with pytest.raises(DatasetError, match=r"images differ in size: .*a/000.png is 40x48 but .*b/000.png is 30x30 "
                                           r"\(height x width\); give the dataset an image_size"):
        load(root, tmp_path / "c")
    ds = load(root, tmp_path / "c", image_size=(32, 36))
    assert ds.input_shape == (32, 36, 1)
    npz = load(write_npz(tmp_path / "n.npz"), tmp_path / "c", image_size=(12, 10))
    assert npz.input_shape == (12, 10, 3)

def test_the_second_load_reads_the_cache(tmp_path, monkeypatch):
    root = write_images(tmp_path / "flowers", n=5)
    first = load(root, tmp_path / "cache")
    import data._load as load_module

    monkeypatch.setattr(load_module, "read_user", lambda *a, **k: pytest.fail("decoded twice"))
    second = load(root, tmp_path / "cache")
    assert second.fingerprint == first.fingerprint and second.description == first.description

def test_decoding_allocates_the_arrays_once_and_logs_progress_not_images(tmp_path, caplog):
    root = write_images(tmp_path / "many", classes=("a", "b", "c"), n=800, size=(32, 32), mode="RGB", suffix="bmp")
    caplog.set_level("INFO", logger="data")
    tracemalloc.start()
    ds = load(root, tmp_path / "cache")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    arrays = ds.x_train.nbytes
    with final_evaluation():
        arrays += ds.test_split()[0].nbytes
    # the arrays and a little change: no copy of them, and no Python object per image kept alive
    assert peak < 1.25 * arrays + 2_500_000, (peak, arrays)
    lines = [r.getMessage() for r in caplog.records if r.name == "data._images"]
    assert lines and lines[-1].startswith("decoded 2400 images from") and len(lines) < 10

def _rejected(path: Path, tmp_path: Path, match: str, **options) -> None:
    cache = tmp_path / "the-cache"
    with pytest.raises(DatasetError, match=match):
        load(path, cache, **options)
    assert not cache.exists() or not any(cache.iterdir()), "a failed load left something in the cache"

def _empty_folder(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", r"empty: no class folders with images; expected train/<class>/<image>"

def _class_without_images(tmp_path: Path) -> tuple[Path, str]:
    root = write_images(tmp_path / "ds", classes=("a", "b"), n=2)
    (root / "c").mkdir()
    (root / "c" / ".DS_Store").write_bytes(b"junk")  # hidden files are not images, and not errors
    return root, r"ds/c: a class folder with no images \(1 such folder\(s\)\); add images .* or remove the folder"

def _single_class(tmp_path: Path) -> tuple[Path, str]:
    return write_images(tmp_path / "ds", classes=("a",), n=4), r"only one class \(a\); a classifier needs at least two"

def _corrupt_files(tmp_path: Path) -> tuple[Path, str]:
    root = write_images(tmp_path / "ds", classes=("a", "b"), n=3)
    for i in range(7):
        (root / "a" / f"bad{i}.png").write_bytes(b"not a png")
    (root / "b" / "notes.txt").write_text("hello")
    return root, (r"ds: 8 unreadable file\(s\); the first 5: .*a/bad0.png: not a decodable image.*; .*a/bad3.png.* "
                  r"Remove or replace them, or give the dataset skip_unreadable: true")

def _test_class_unknown(tmp_path: Path) -> tuple[Path, str]:
    write_images(tmp_path / "ds" / "train", classes=("a", "b"), n=3)
    write_images(tmp_path / "ds" / "test", classes=("a", "zebra"), n=1)
    return tmp_path / "ds", r"only in test: \['zebra'\]\); every test class must also be a training class"

def _link(tmp_path: Path) -> tuple[Path, str]:
    root = write_images(tmp_path / "ds", classes=("a", "b"), n=2)
    (tmp_path / "secret.png").write_bytes((root / "a" / "000.png").read_bytes())
    (root / "a" / "zzz.png").symlink_to(tmp_path / "secret.png")
    return root, r"a/zzz.png: a link; links are not accepted in datasets"

def _tar_escape(tmp_path: Path) -> tuple[Path, str]:
    with tarfile.open(tmp_path / "ds.tar.gz", "w:gz") as tar:
        add_tar_bytes(tar, "ds/../../etc/a/0.png", b"whatever")
    return tmp_path / "ds.tar.gz", r"a member path that leaves the archive \(absolute or with '\.\.'\)"

def _truncated_tarball(tmp_path: Path) -> tuple[Path, str]:
    tarred = tar_folder(write_images(tmp_path / "ds", classes=("a", "b"), n=30), tmp_path / "ds.tgz", "ds")
    tarred.write_bytes(tarred.read_bytes()[: tarred.stat().st_size * 2 // 3])
    return tarred, r"ds.tgz: not a readable .tar.gz \(.*\); the file is truncated or corrupt"

def _differing_sizes(tmp_path: Path) -> tuple[Path, str]:
    root = write_images(tmp_path / "ds", classes=("a", "b"), n=2, size=(10, 10))
    write_images(root, classes=("c",), n=2, size=(12, 10))
    return root, r"images differ in size: .*a/000.png is 10x10 but .*c/000.png is 12x10 .*image_size"

def _npz_labels_out_of_range(tmp_path: Path) -> tuple[Path, str]:
    path = write_npz(tmp_path / "ds.npz", class_names=np.array(["a", "b", "c"]))  # labels go up to 4
    return path, r"ds.npz: 24 y_train labels are outside 0..2 \(first: 3\); .*one per name in class_names"

def _npz_float_labels(tmp_path: Path) -> tuple[Path, str]:
    path = write_npz(tmp_path / "ds.npz", test=False, y_train=np.linspace(0, 4, 60))
    return path, r"ds.npz: y_train has dtype float64; labels are integer class indices 0..k-1"

def _npz_length_mismatch(tmp_path: Path) -> tuple[Path, str]:
    path = write_npz(tmp_path / "ds.npz", test=False, y_train=np.arange(59) % 5)
    return path, r"ds.npz: 60 images in x_train but y_train has shape \(59,\); give one label per image"

def _npz_test_class_unknown(tmp_path: Path) -> tuple[Path, str]:
    path = write_npz(tmp_path / "ds.npz", y_test=np.full(20, 7))
    return path, r"ds.npz: 20 y_test labels are not training classes \(first: 7\)"

BAD = {f.__name__.lstrip("_"): f for f in (
    _empty_folder, _class_without_images, _single_class, _corrupt_files, _test_class_unknown, _link, _tar_escape,
    _truncated_tarball, _differing_sizes, _npz_labels_out_of_range, _npz_float_labels, _npz_length_mismatch,
    _npz_test_class_unknown)}

@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_rejected_naming_the_file_and_the_fix(tmp_path, case):
    path, match = BAD[case](tmp_path)
    _rejected(path, tmp_path, match)

def test_skip_unreadable_skips_and_counts_them(tmp_path):
    root, _ = _corrupt_files(tmp_path)
    ds = load(root, tmp_path / "cache", skip_unreadable=True)
    assert ds.description["skipped_unreadable"] == 8
    assert len(ds.y_train) + ds.n_test == 6 and ds.num_classes == 2

def test_bad_options_are_rejected_at_their_field():
    good = "architecture: s003_mnist_cnn\nspace:\n  learning_rate: {low: 1.0e-3, high: 1.0e-2}\n"
    for dataset, match in (
            ("{path: d, image_size: [32]}", r"dataset.image_size: must be \[height, width\]"),
            ("{path: d, test_fraction: 1}", r"dataset.test_fraction: must be in \(0, 1\) but got 1"),
            ("{path: d, skip: true}", r"dataset: unknown field\(s\) \['skip'\]; allowed: \['image_size', 'name'"),
            ("{name: cifar10, image_size: [8, 8]}", r"dataset: image_size apply to data of your own, not to"),
            ("../flowers", r"dataset: '../flowers' is not a dataset name .*write dataset: \{path: ../flowers\}"),
            ("{path: a, name: b}", r"dataset: give a dataset name or a path, not both")):
        with pytest.raises(StudySpecError, match=match):
            parse_spec(good + f"dataset: {dataset}\n", name="bad")

def test_the_study_file_syntax_and_what_is_hashed():
    base = "architecture: s003_mnist_cnn\nspace:\n  learning_rate: {low: 1.0e-3, high: 1.0e-2}\n"
    named = parse_spec(base + "dataset: mnist\n", name="s")
    assert named.dataset == "mnist" and named.hashed_fields()["dataset"] == "mnist"
    assert parse_spec(base + "dataset: {name: mnist}\n", name="s").space_hash() == named.space_hash()
    own = parse_spec(base + "dataset: {path: data/flowers.tgz, image_size: [40, 48]}\n", name="s")
    assert own.dataset == "flowers" and own.dataset_ref == DatasetRef(path="data/flowers.tgz", image_size=(40, 48))
    assert own.hashed_fields()["dataset"] == {"path": "data/flowers.tgz", "image_size": [40, 48]}
    assert parse_spec(base + "dataset: {path: data/flowers.tgz, image_size: [40, 48], test_fraction: 0.2}\n",
                      name="s").space_hash() == own.space_hash()  # a default written out changes nothing
    assert parse_spec(base + "dataset: {path: data/flowers.tgz}\n", name="s", dataset="flowers").dataset_ref == \
        DatasetRef(name="flowers")  # DATASET= / --dataset names a dataset

def _studies_in(journal: Path) -> list[str]:
    import optuna

    from storage import open_storage

    if not journal.exists():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(f"journal://{journal}"))]

@pytest.mark.parametrize("case", ["empty_folder", "corrupt_files", "npz_labels_out_of_range", "differing_sizes"])
def test_create_with_bad_data_writes_nothing_to_the_store(tmp_path, monkeypatch, capsys, case):
    from search.__main__ import main

    path, match = BAD[case](tmp_path)
    write_study_file(tmp_path / "studies", "bad", f"{{path: {path}}}")
    monkeypatch.setenv("STUDIES_DIR", str(tmp_path / "studies"))
    journal = tmp_path / "store.journal"
    for command in ("create", "run"):
        assert main([command, "bad", "--storage", f"journal://{journal}"]) == 2
        assert _studies_in(journal) == []
    assert capsys.readouterr().err.count("error: ") == 2

def test_create_records_the_description_and_refuses_a_preset_too_deep_for_the_images(tmp_path, monkeypatch):
    from search.__main__ import main
    from storage import attrs, open_storage

    root, _ = _corrupt_files(tmp_path)
    write_study_file(tmp_path / "studies", "own", f"{{path: {root}, skip_unreadable: true}}")
    write_npz(tmp_path / "tiny.npz", shape=(8, 8, 3))
    write_study_file(tmp_path / "studies", "tiny", f"{{path: {tmp_path / 'tiny.npz'}}}", architecture="s000_model_2_3")
    monkeypatch.setenv("STUDIES_DIR", str(tmp_path / "studies"))
    journal = tmp_path / "store.journal"
    assert main(["create", "own", "--storage", f"journal://{journal}"]) == 0
    import optuna

    study = optuna.load_study(study_name="own", storage=open_storage(f"journal://{journal}"))
    described = study.user_attrs[attrs.STUDY_DATASET]
    assert described["class_names"] == ["a", "b"] and described["skipped_unreadable"] == 8
    assert described["shape"] == [40, 48, 1] and described["test_split"] == "held out (0.2, seed 0)"
    assert main(["create", "tiny", "--storage", f"journal://{journal}"]) == 2
    assert _studies_in(journal) == ["own"]

def test_create_on_a_named_dataset_records_what_its_spec_knows_without_loading_it(tmp_path, monkeypatch):
    from search.__main__ import main
    from storage import attrs, open_storage

    write_study_file(tmp_path / "studies", "digits", "mnist")
    monkeypatch.setenv("STUDIES_DIR", str(tmp_path / "studies"))  # no DATA_DIR, downloads off: nothing to load
    journal = tmp_path / "store.journal"
    assert main(["create", "digits", "--storage", f"journal://{journal}"]) == 0
    import optuna

    described = optuna.load_study(study_name="digits", storage=open_storage(f"journal://{journal}")).user_attrs[
        attrs.STUDY_DATASET]
    assert described["shape"] == [28, 28, 1] and described["class_names"] == [str(d) for d in range(10)]
    assert (described["n_train"], described["n_test"], described["fingerprint"]) == (60_000, 10_000, None)

def test_a_preset_builds_and_trains_on_40x48_grayscale_with_7_classes():
    import keras

    from models import build, get_preset

    model = build(get_preset("s003_mnist_cnn").params(input_shape=(40, 48, 1), num_classes=7))
    assert model.output_shape == (None, 7)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((8, 40, 48, 1), dtype=np.float32)
    history = model.fit(x, np.arange(8) % 7, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    keras.backend.clear_session()

def test_workers_and_evaluate_refuse_data_that_changed_since_the_study_was_created(tmp_path):
    from search.errors import StudyMismatchError
    from search.study._study import check_same_data
    from storage import attrs

    class Study:
        user_attrs = {attrs.STUDY_DATASET: {"fingerprint": "0123456789abcdef"}}

    text = "architecture: s003_mnist_cnn\ndataset: {path: x}\nspace:\n  batch_size: {choices: [8]}\n"
    own = parse_spec(text, name="own")
    check_same_data(Study(), own, "0123456789abcdef")
    with pytest.raises(StudyMismatchError, match=r"study 'own': its data \(x\) changed since the study was created"):
        check_same_data(Study(), own, "fedcba9876543210")
    check_same_data(Study(), parse_spec(text.replace("{path: x}", "mnist"), name="own"), "fedcba9876543210")
