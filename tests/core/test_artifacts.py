"""The content-addressed artifact store on real files: one digest per content, and no altered byte ever opens."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pytest

from evostream.core.artifacts import ArtifactBackend, ArtifactRef, ArtifactStore, FileEntry, manifest_bytes
from evostream.core.errors import ArtifactError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


FILES = {"config.json": b'{"d_model": 32}', "weights/model.bin": bytes(range(256)) * 64, "tokenizer.json": b"{}"}


def tree_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_writable(path: Path) -> None:
    path.chmod(0o644)


def test_the_digest_is_sha256_of_the_canonical_manifest(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "m", {"b.bin": b"abc", "a/c.json": b"{}"})
    ref = ArtifactStore(tmp_path / "store").put_dir(src)
    manifest = (
        '{"files":[{"path":"a/c.json","sha256":"' + sha(b"{}") + '","size":2},'
        '{"path":"b.bin","sha256":"' + sha(b"abc") + '","size":3}],"format":"evostream-artifact/1"}'
    ).encode()
    assert ref == ArtifactRef(
        uri=f"sha256:{sha(manifest)}",
        sha256=sha(manifest),
        path=tmp_path / "store" / "sha256" / sha(manifest) / "files",
    )
    assert (tmp_path / "store" / "sha256" / ref.sha256 / "manifest.json").read_bytes() == manifest
    assert manifest_bytes([FileEntry("b.bin", sha(b"abc"), 3), FileEntry("a/c.json", sha(b"{}"), 2)]) == manifest


def test_same_content_gets_the_same_hash_wherever_and_whenever_it_was_written(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    first = store.put_dir(write_tree(tmp_path / "one", FILES))
    second_src = write_tree(tmp_path / "elsewhere" / "two", dict(reversed(FILES.items())))  # other order, other times
    os.utime(second_src / "config.json", (1, 1))
    second = store.put_dir(second_src)
    assert second == first
    assert tree_of(first.path) == FILES
    # and it can fail: one byte, or one name, makes another artifact
    flipped = dict(FILES, **{"weights/model.bin": b"\x01" + FILES["weights/model.bin"][1:]})
    renamed = {("weights/model2.bin" if k == "weights/model.bin" else k): v for k, v in FILES.items()}
    others = {
        store.put_dir(write_tree(tmp_path / name, files)).sha256
        for name, files in [("flipped", flipped), ("renamed", renamed)]
    }
    assert len(others | {first.sha256}) == 3
    assert sorted(p.name for p in (tmp_path / "store" / "sha256").iterdir()) == sorted(others | {first.sha256})


def test_a_second_put_of_the_same_content_writes_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    ref = store.put_dir(write_tree(tmp_path / "m", FILES))
    stored = tmp_path / "store" / "sha256" / ref.sha256
    before = {p: p.stat().st_mtime_ns for p in stored.rglob("*")}
    assert store.put_dir(tmp_path / "m") == ref
    assert {p: p.stat().st_mtime_ns for p in stored.rglob("*")} == before
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert store.open(ref.uri) == store.open(ref.sha256) == ref.path


def test_a_symlinked_file_is_stored_as_its_content(tmp_path: Path) -> None:
    """A Hugging Face cache snapshot links its files to blobs: the artifact holds the bytes, not the link."""
    blob = write_tree(tmp_path / "blobs", {"x": b"weights"}) / "x"
    src = tmp_path / "snapshot"
    src.mkdir()
    (src / "model.safetensors").symlink_to(blob)
    ref = ArtifactStore(tmp_path / "store").put_dir(src)
    plain = write_tree(tmp_path / "plain", {"model.safetensors": b"weights"})
    assert ref.sha256 == ArtifactStore(tmp_path / "store2").put_dir(plain).sha256
    assert not (ref.path / "model.safetensors").is_symlink()


def test_one_flipped_byte_in_a_stored_weight_file_is_refused_and_the_model_never_loaded(tmp_path: Path) -> None:
    from evostream.models.loading import LoadedModel, load_model
    from tests.producers.models import tiny

    lm = tiny("gpt2", varied=True)
    src = tmp_path / "model"
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(src)
    store = ArtifactStore(tmp_path / "store")
    ref = store.put_dir(src)
    loads: list[Path] = []

    def load(path: Path) -> LoadedModel:
        loads.append(path)
        return load_model(str(path), device="cpu")

    intact = load(store.open(ref.uri))  # the real thing loads, with the very weights that were put
    for name, p in lm.model.state_dict().items():
        assert intact.model.state_dict()[name].equal(p), name
    weights = ref.path / "model.safetensors"
    good = weights.read_bytes()
    make_writable(weights)
    with weights.open("r+b") as fh:  # a byte deep in the tensor data, past the safetensors header
        fh.seek(len(good) - 100)
        fh.write(bytes([good[-100] ^ 0x01]))
    bad = weights.read_bytes()
    assert sum(a != b for a, b in zip(good, bad, strict=True)) == 1
    loads.clear()
    with pytest.raises(ArtifactError) as caught:
        load(store.open(ref.sha256))
    base = tmp_path / "store" / "sha256" / ref.sha256
    assert str(caught.value) == (
        f"artifact {ref.uri} at {base} does not match its manifest, so it is refused: model.safetensors differs: "
        f"expected sha256 {sha(good)} ({len(good)} bytes), found {sha(bad)} ({len(bad)} bytes). "
        f"Remove {base} and put the model's folder again"
    )
    assert loads == []


def test_missing_added_and_deleted_files_and_an_altered_manifest_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    missing = "0" * 64
    with pytest.raises(ArtifactError) as caught:
        store.open(f"sha256:{missing}")
    assert str(caught.value) == (
        f"artifact sha256:{missing} is not in the store at {tmp_path / 'store'}: put the "
        "model's folder (`ArtifactStore.put_dir`) before serving it"
    )
    with pytest.raises(ArtifactError, match=r"^'sha256:abc' is not an artifact digest"):
        store.open("sha256:abc")

    ref = store.put_dir(write_tree(tmp_path / "m", FILES))
    base = tmp_path / "store" / "sha256" / ref.sha256
    (ref.path / "extra.bin").write_bytes(b"x")
    (ref.path / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError) as caught:
        store.open(ref.uri)
    assert str(caught.value) == (
        f"artifact {ref.uri} at {base} does not match its manifest, so it is refused: tokenizer.json is missing "
        f"(expected sha256 {sha(b'{}')}, 2 bytes); extra.bin is not in the manifest (an added file). "
        f"Remove {base} and put the model's folder again"
    )

    manifest = base / "manifest.json"
    make_writable(manifest)
    raw = manifest.read_bytes()
    forged = raw.replace(sha(FILES["config.json"]).encode(), sha(b"anything").encode())
    manifest.write_bytes(forged)
    with pytest.raises(ArtifactError) as caught:
        store.open(ref.uri)
    assert str(caught.value) == (
        f"the manifest of artifact {ref.uri} ({manifest}) was altered: it hashes to "
        f"{sha(forged)}. Remove {base} and put the model's folder again"
    )


def test_puts_of_nothing_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(ArtifactError, match=r"it is not a folder$"):
        store.put_dir(tmp_path / "absent")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ArtifactError, match=r"it holds no files$"):
        store.put_dir(tmp_path / "empty")


def put_in_process(root: str, src: str, barrier: Any, out: Any) -> None:
    barrier.wait(30)
    ref = ArtifactStore(Path(root)).put_dir(Path(src))
    out.put(ref.uri)


def test_concurrent_puts_of_the_same_content_leave_one_intact_copy(tmp_path: Path) -> None:
    """Real processes, released together, all hash, copy and race to rename the same artifact."""
    big = dict(FILES, **{"weights/model.bin": os.urandom(8 << 20)})  # 8 MiB: the copies overlap in time
    src = write_tree(tmp_path / "m", big)
    n = 4
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=put_in_process, args=(str(tmp_path / "store"), str(src), barrier, out)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    uris = [out.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    store = ArtifactStore(tmp_path / "store")
    assert len(set(uris)) == 1
    assert [p.name for p in (tmp_path / "store" / "sha256").iterdir()] == [uris[0].removeprefix("sha256:")]
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert tree_of(store.open(uris[0])) == big


def test_the_local_store_is_an_artifact_backend(tmp_path: Path) -> None:
    assert isinstance(ArtifactStore(tmp_path), ArtifactBackend)
