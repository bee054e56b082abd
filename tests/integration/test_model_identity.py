"""A checkpoint's model id is a hash of its files, not the name it was loaded by: a symlink, a copy and a
hub-cache snapshot of the same files share their stored embeddings; changed weights do not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from moderation.checkpoints import checkpoint_id, identity_files
from moderation.clip_scorer import ClipScorer
from moderation.storage import EmbeddingStore, VerdictStore, create_engine_for, upgrade


def test_the_same_files_have_the_same_id_wherever_they_are(test_model_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "clip-link"
    link.symlink_to(test_model_dir)
    copy = tmp_path / "clip-copy"
    shutil.copytree(test_model_dir, copy)
    snapshot = tmp_path / "hub" / "snapshots" / ("0" * 40)  # the hub cache links each file to a blob
    snapshot.mkdir(parents=True)
    for path in test_model_dir.iterdir():
        (snapshot / path.name).symlink_to(path)
    original = checkpoint_id(test_model_dir)
    assert original.startswith("sha256:") and len(original) == len("sha256:") + 64
    assert checkpoint_id(link) == checkpoint_id(copy) == checkpoint_id(snapshot) == original
    assert [p.name for p in identity_files(test_model_dir)] == [
        "config.json", "model.safetensors", "preprocessor_config.json"
    ]


def test_changed_weights_or_config_change_the_id_and_tokenizer_files_do_not(
    test_model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "clip"
    shutil.copytree(test_model_dir, copy)
    before = checkpoint_id(copy)
    (copy / "vocab.json").write_text((copy / "vocab.json").read_text() + "\n")
    assert checkpoint_id(copy) == before  # text side only: stored image embeddings stay valid

    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    changed = checkpoint_id(copy)
    assert changed != before

    config = copy / "config.json"
    config.write_text(config.read_text() + "\n")
    assert checkpoint_id(copy) not in (before, changed)


def test_file_hashes_are_cached_by_path_size_and_mtime(test_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "clip"
    shutil.copytree(test_model_dir, copy)
    before = checkpoint_id(copy)
    weights = copy / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same path, size and mtime: not re-read
    assert checkpoint_id(copy) == before
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert checkpoint_id(copy) != before


def test_a_scorer_loaded_through_a_symlink_finds_the_embeddings_stored_through_the_real_path(
    scorer: ClipScorer, test_model_dir: Path, tmp_path: Path, sqlite_url: str
) -> None:
    from moderation.moderator import Moderator
    from moderation.policy import parse_policy
    from moderation.settings import ImageSettings
    from tests.support.events import event
    from tests.support.images import png
    from tests.support.policies import colour_policy

    link = tmp_path / "models" / "current"
    link.parent.mkdir()
    link.symlink_to(test_model_dir)
    linked = ClipScorer.load(str(link), device="cpu")
    assert linked.model_id == scorer.model_id == checkpoint_id(test_model_dir)
    assert linked.model_name == str(link) and scorer.model_name == str(test_model_dir)
    assert linked.legacy_model_ids == (str(link), os.path.realpath(test_model_dir))

    upgrade(sqlite_url)
    store = VerdictStore(create_engine_for(sqlite_url))
    moderator = Moderator(scorer, parse_policy(colour_policy("v1")), ImageSettings(), loader_threads=1)
    try:
        store.save_batch(moderator.moderate([event(f"red-{i}", png("red", i)) for i in range(3)]))
    finally:
        moderator.close()
    try:
        embeddings = EmbeddingStore(store.engine)
        [chunk] = list(embeddings.scan(linked.stored_model_ids))
        assert sorted(chunk.content_ids) == [f"content-red-{i}" for i in range(3)]
        hashes = [store.get(f"red-{i}").image_sha256 for i in range(3)]  # type: ignore[union-attr]
        found = embeddings.get_many(linked.model_id, hashes)  # type: ignore[arg-type]
        assert len(found) == 3 and all(row.dtype == np.float16 for row in found.values())
    finally:
        store.engine.dispose()
