"""Read a TensorFlow checkpoint (the V2 "tensor bundle": PREFIX.index + PREFIX.data-0000K-of-0000N) without TensorFlow.

Written by hand because the only other reader is TensorFlow itself (hundreds of MB, for one file format). The
format, from TensorFlow's sources (core/util/tensor_bundle/tensor_bundle.{h,cc}, core/lib/io/{format,block}.cc,
the LevelDB table layout they keep) and checked against a file TensorFlow 2.21 wrote (tests/weights_import):
- `.index` is an immutable sorted table: data blocks, a meta-index block and an index block, each followed by a
  5-byte trailer (compression type, then the masked CRC32C of the block and that byte), and a 48-byte footer
  (two block handles as varints, zero padding, the magic 0xdb4775248b80fb57 little-endian). A block is entries
  (shared key length, unshared length, value length as varints; the unshared key bytes; the value), a restart
  array of uint32 and its count. The index block maps each data block's last key to its handle (offset, size).
- Its keys are tensor names; the empty key holds a BundleHeaderProto (num_shards = 1, endianness = 2). Every
  other value is a BundleEntryProto: dtype = 1, shape = 2 (TensorShapeProto: repeated dim = 2 {size = 1}),
  shard_id = 3, offset = 4, size = 5, crc32c = 6 (fixed32, masked), slices = 7 (partitioned variables).
- A tensor's bytes are `size` bytes at `offset` of shard `shard_id`, row-major, little-endian, and their masked
  CRC32C is the entry's crc32c: each tensor read here is checked against it, so a damaged or mismatched data
  file is refused by name.
Masked CRC (LevelDB's crc32c::Mask): ((crc >> 15) | (crc << 17)) + 0xa282ead8, modulo 2**32.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_src.errors import CheckpointError

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
NO_COMPRESSION = 0
# TensorFlow's DataType enum (core/framework/types.proto) -> numpy, for the types a weight file holds
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DTYPE_NAMES = {**{k: np.dtype(v).name for k, v in DTYPES.items()}, 7: "string", 14: "bfloat16"}
DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


def masked_crc32c(data: bytes | memoryview) -> int:
    import google_crc32c

    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int                   # TensorFlow's DataType number
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int                    # bytes
    crc32c: int | None           # masked, as stored; None when the writer left it out
    partitioned: bool = False    # a slice of a partitioned variable (not read here)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"DataType {self.dtype}")


class TFCheckpoint:
    """One checkpoint: `entries` (name -> TensorEntry) from its index; `read(name)` one tensor from its shard."""

    def __init__(self, path: str | os.PathLike):
        self.prefix = checkpoint_prefix(path)
        self.index_path = Path(f"{self.prefix}.index")
        if not self.index_path.is_file():
            raise CheckpointError(f"{path}: no TensorFlow checkpoint index {self.index_path}; pass the .index file "
                                  "(its .data-00000-of-00001 shard beside it)")
        raw = self.index_path.read_bytes()
        table = dict(_read_table(raw, self.index_path))
        if b"" not in table:
            raise CheckpointError(f"{self.index_path}: no bundle header (empty key); not a TensorFlow V2 checkpoint "
                                  "index")
        header = _fields(table.pop(b""), self.index_path)
        self.num_shards = int(header.get(1, [1])[0])
        if header.get(2, [0])[0] != 0:
            raise CheckpointError(f"{self.index_path}: written big-endian; only little-endian checkpoints are read")
        self.entries: dict[str, TensorEntry] = {}
        for key, value in table.items():
            name = key.decode("utf-8", errors="replace")
            self.entries[name] = _entry(name, value, self.index_path)

    def data_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def read(self, name: str) -> np.ndarray:
        entry = self.entries.get(name)
        if entry is None:
            raise CheckpointError(f"{self.index_path}: no tensor {name!r}")
        if entry.partitioned:
            raise CheckpointError(f"{self.index_path}: {name} is a partitioned variable; not supported")
        if entry.dtype not in DTYPES:
            raise CheckpointError(f"{self.index_path}: {name} is {entry.dtype_name}; only numeric tensors are read")
        dtype = np.dtype(DTYPES[entry.dtype]).newbyteorder("<")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * dtype.itemsize != entry.size:
            raise CheckpointError(f"{self.index_path}: {name} has shape {entry.shape} ({entry.dtype_name}) but "
                                  f"{entry.size} bytes; the index is damaged")
        data = self.data_path(entry.shard)
        if not data.is_file():
            raise CheckpointError(f"{data}: missing; a checkpoint is the .index and its data shard(s) side by "
                                  "side: fetch or copy the shard too")
        with open(data, "rb") as f:
            f.seek(entry.offset)
            buf = f.read(entry.size)
        if len(buf) != entry.size:
            raise CheckpointError(f"{data}: ends before {name} (needs bytes {entry.offset}..{entry.offset + entry.size}"
                                  f", the file has {data.stat().st_size}): truncated; fetch it again")
        if entry.crc32c is not None and masked_crc32c(buf) != entry.crc32c:
            raise CheckpointError(f"{data}: {name} fails its CRC32C check: the file is damaged or is not the data "
                                  f"of {self.index_path.name}; fetch both again")
        return np.frombuffer(buf, dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))


def checkpoint_prefix(path: str | os.PathLike) -> Path:
    """PREFIX from PREFIX, PREFIX.index or PREFIX.data-0000K-of-0000N."""
    p = Path(path)
    if p.name.endswith(".index"):
        return p.with_name(p.name[: -len(".index")])
    m = DATA_SUFFIX.search(p.name)
    return p.with_name(p.name[: m.start()]) if m else p


# --------------------------------------------------------------------------------------------- table format
def _varint(buf: bytes, pos: int, where: Path) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError(f"{where}: a varint runs past its block; the index is damaged")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _block(raw: bytes, offset: int, size: int, where: Path) -> bytes:
    if offset + size + BLOCK_TRAILER_SIZE > len(raw) - FOOTER_SIZE:
        raise CheckpointError(f"{where}: a block runs past the end of the file; truncated or damaged: fetch it again")
    contents, kind = raw[offset:offset + size], raw[offset + size]
    (stored,) = struct.unpack_from("<I", raw, offset + size + 1)
    if masked_crc32c(raw[offset:offset + size + 1]) != stored:
        raise CheckpointError(f"{where}: a block fails its CRC32C check; the index is damaged: fetch it again")
    if kind != NO_COMPRESSION:
        raise CheckpointError(f"{where}: a block is compressed (type {kind}); TensorFlow writes bundles "
                              "uncompressed: not a tensor-bundle index")
    return contents


def _block_entries(block: bytes, where: Path):
    if len(block) < 4:
        raise CheckpointError(f"{where}: a block is shorter than its restart count; the index is damaged")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise CheckpointError(f"{where}: a block's restart array is larger than the block; the index is damaged")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, where)
        unshared, pos = _varint(block, pos, where)
        value_len, pos = _varint(block, pos, where)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise CheckpointError(f"{where}: an entry runs past its block; the index is damaged")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _read_table(raw: bytes, where: Path):
    if len(raw) < FOOTER_SIZE:
        raise CheckpointError(f"{where}: {len(raw)} bytes, shorter than a table footer; truncated: fetch it again")
    footer = raw[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != MAGIC:
        raise CheckpointError(f"{where}: no table magic at the end; not a TensorFlow V2 checkpoint index, or "
                              "truncated: fetch it again")
    pos = 0
    for _ in range(2):  # skip the meta-index handle: bundles put nothing there
        _, pos = _varint(footer, pos, where)
    index_offset, pos = _varint(footer, pos, where)
    index_size, _ = _varint(footer, pos, where)
    for _, handle in _block_entries(_block(raw, index_offset, index_size, where), where):
        offset, p = _varint(handle, 0, where)
        size, _ = _varint(handle, p, where)
        yield from _block_entries(_block(raw, offset, size, where), where)


# ------------------------------------------------------------------------------------------ protobuf fields
def _fields(buf: bytes, where: Path) -> dict[int, list]:
    """Protocol-buffer wire format -> {field number: [values]} (varints as int, fixed32 as int, bytes as bytes)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, where)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, where)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            (value,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        else:
            raise CheckpointError(f"{where}: a record has wire type {wire}; the index is damaged")
        if pos > len(buf):
            raise CheckpointError(f"{where}: a record runs past its value; the index is damaged")
        out.setdefault(field, []).append(value)
    return out


def _entry(name: str, value: bytes, where: Path) -> TensorEntry:
    f = _fields(value, where)
    dims = []
    for shape in f.get(2, []):
        dims = [int(_fields(d, where).get(1, [0])[0]) for d in _fields(shape, where).get(2, [])]
    return TensorEntry(name=name, dtype=int(f.get(1, [0])[0]), shape=tuple(dims), shard=int(f.get(3, [0])[0]),
                       offset=int(f.get(4, [0])[0]), size=int(f.get(5, [0])[0]),
                       crc32c=int(f[6][0]) if 6 in f else None, partitioned=7 in f)
