"""Which operators the INT8 variant may quantize, and a check that the variant keeps the others in float.

TensorRT builds Q/DQ graphs as they are (explicit quantization), so an operator whose Q/DQ form it does not
take must not get one: ConvTranspose is the known case. ONNX Runtime's QDQ quantizer gives ConvTranspose
per-channel weight scales on axis 1 (the output channels; onnxruntime PR 19996), while TensorRT's
deconvolution kernels assume per-input-channel (axis 0) scales and do not support per-output-channel
quantization (NVIDIA/TensorRT#2380; wrong outputs where the two disagreed: NVIDIA/TensorRT#1694). Such
operators are listed in `quantize.tensorrt_float_ops` (config/export.yaml) with the reason; they stay float
unless `quantize.device_checked_qdq_ops` names them, which should only follow a build-engine check of an INT8
variant quantizing them on a real GPU. The quality gate (quantize.max_int8_drop_db) applies either way.
"""
from __future__ import annotations

from typing import Any

from pipeline_src.errors import ExportError


def ops_to_quantize(qcfg: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(operator types given Q/DQ nodes, {operator kept float: why}) from the quantize settings."""
    checked = set(qcfg["device_checked_qdq_ops"])
    kept = {op: why for op, why in qcfg["tensorrt_float_ops"].items() if op not in checked}
    return [op for op in qcfg["op_types_to_quantize"] if op not in kept], kept


def weights_through_dequantize(proto, op_types) -> list[str]:
    """Nodes of `op_types` whose weight (input 1) is the output of a DequantizeLinear: a Q/DQ form of them."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    found = []
    for node in proto.graph.node:
        if node.op_type in op_types and len(node.input) > 1:
            producer = producers.get(node.input[1])
            if producer is not None and producer.op_type == "DequantizeLinear":
                found.append(f"{node.op_type} {node.name or node.output[0]!r}")
    return found


def require_float(proto, kept: dict[str, str], what: str) -> None:
    """Refuse an INT8 variant in which an operator TensorRT cannot take in Q/DQ form got quantized weights."""
    bad = weights_through_dequantize(proto, set(kept))
    if bad:
        reasons = "; ".join(f"{op}: {why}" for op, why in kept.items())
        raise ExportError(f"{what}: quantized weights on {', '.join(bad[:5])}, which must stay float for TensorRT "
                          f"({reasons}); remove them from quantize.op_types_to_quantize or, after a GPU check, "
                          "list them in quantize.device_checked_qdq_ops")
