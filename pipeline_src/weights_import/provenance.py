"""Where imported weights came from: the record final.pt, its phase.json and the MLflow run all carry.

Besides the file's sha256 (what the registry's trust-on-first-use records), the file's git object id is
computed and compared with the id the authors' repository tree gives for that file at the pinned commit: a
match proves these are the released bytes without any hash having been published. A mismatch is recorded,
not refused (a test file in the authors' format, or a later upload, is still importable). A TensorFlow
checkpoint is two files: its data shard gets the same record under `data`, and `matches_release` needs both.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pipeline_src.weights_import import AUTHORS_RELEASE, ReleasedWeights


def git_blob_id(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """git's object id of a file: sha1 over b"blob <size>\\0" and the bytes (what `git hash-object` prints)."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def provenance_record(spec: ReleasedWeights, path: str | os.PathLike) -> dict[str, Any]:
    from pipeline_src.fileio import sha256_file

    path = Path(path)
    blob = git_blob_id(path)
    record = {
        "source": AUTHORS_RELEASE,
        "import": spec.name,
        "description": spec.description,
        "file": str(path),
        "file_name": path.name,
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "repository": spec.repository,
        "repository_path": spec.repository_path,
        "url": f"{spec.repository}/blob/{spec.commit}/{spec.repository_path}",
        "commit": spec.commit,
        "release_git_blob": spec.git_blob,
        "file_git_blob": blob,
        "matches_release": blob == spec.git_blob,
        "trained_on": spec.trained_on,
        "conversion": spec.conversion,
    }
    if spec.data_file is not None:
        from pipeline_src.weights_import.tf_checkpoint import TFCheckpoint

        repository_path, release_blob = spec.data_file
        data = TFCheckpoint(path).data_path(0)
        data_blob = git_blob_id(data)
        record["data"] = {"file": str(data), "size": data.stat().st_size, "sha256": sha256_file(data),
                          "repository_path": repository_path,
                          "url": f"{spec.repository}/blob/{spec.commit}/{repository_path}",
                          "release_git_blob": release_blob, "file_git_blob": data_blob,
                          "matches_release": data_blob == release_blob}
        record["matches_release"] = record["matches_release"] and record["data"]["matches_release"]
    return record
