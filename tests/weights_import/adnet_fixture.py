"""The ADNet reference checkpoint (tests/weights_import/fixtures/adnet_official): its index as TensorFlow wrote it,
and its data shard rebuilt from weights_formula.py at the offsets that index gives."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = FIXTURES / "adnet_official"
REFERENCE_IO = REFERENCE / "adnet_ref_io.npz"
RELEASE_INDEX = FIXTURES / "adnet_release" / "deblur.model-675000.index"          # GoPro (RDAN)
RELEASE_INDEX_DPDD = FIXTURES / "adnet_release" / "deblur.model-105000.index"     # defocus


def _formula():
    spec = importlib.util.spec_from_file_location("adnet_weights_formula", REFERENCE / "weights_formula.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def formula_value(name: str, shape: tuple[int, ...]):
    return _formula().value(name, shape)


def write_reference_checkpoint(folder: Path, stem: str = "adnet_gopro") -> Path:
    """folder/STEM.index (TensorFlow's) and folder/STEM.data-00000-of-00001 (rebuilt); returns the .index path."""
    from pipeline_src.weights_import.tf_checkpoint import TFCheckpoint

    folder.mkdir(parents=True, exist_ok=True)
    index = folder / f"{stem}.index"
    shutil.copyfile(REFERENCE / "adnet_ref.index", index)
    checkpoint = TFCheckpoint(index)
    value = _formula().value
    with open(checkpoint.data_path(0), "wb") as f:
        for entry in sorted(checkpoint.entries.values(), key=lambda e: e.offset):
            assert f.tell() == entry.offset, f"{entry.name}: the index leaves a gap before offset {entry.offset}"
            f.write(value(entry.name, entry.shape).tobytes())
    return index
