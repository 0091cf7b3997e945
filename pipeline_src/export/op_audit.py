"""Audit an ONNX graph against the TensorRT ONNX parser's supported operators (config/tensorrt_onnx_ops.yaml).

Export runs it on model.onnx and quantize on each variant: a graph TensorRT could not parse is refused on the
machine that made it, not discovered later on the device. Checked: every node's domain and operator (subgraphs
of If/Loop/Scan included), the default-domain opset against the parser's range, and the Q/DQ restrictions
(zero points equal to zero, DequantizeLinear inputs of a quantized type) where those inputs are constants.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline_src.errors import PipelineError

DEFAULT_OP_TABLE = "config/tensorrt_onnx_ops.yaml"
DEFAULT_DOMAINS = ("", "ai.onnx")


class UnsupportedOperatorError(PipelineError, ValueError):
    """The graph uses something the TensorRT ONNX parser does not accept; the message lists what and where."""


@dataclass(frozen=True)
class OpTable:
    source: str
    tensorrt: str
    opset_min: int
    opset_max: int
    domains: tuple[str, ...]
    supported: dict[str, tuple[str, ...]]
    unsupported: frozenset[str]
    zero_point_ops: frozenset[str]
    dequantize_input_types: frozenset[str]


def load_op_table(path: str | os.PathLike = DEFAULT_OP_TABLE) -> OpTable:
    from pipeline_src.config import ConfigError, load_yaml

    raw = load_yaml(path)
    for key in ("tensorrt", "opset", "domains", "supported", "unsupported", "quantization"):
        if key not in (raw or {}):
            raise ConfigError(f"{path}: operator table lacks {key!r}")
    both = set(raw["supported"]) & set(raw["unsupported"])
    if both:
        raise ConfigError(f"{path}: listed as both supported and unsupported: {sorted(both)}")
    q = raw["quantization"]
    return OpTable(
        source=str(raw.get("source", path)), tensorrt=str(raw["tensorrt"]),
        opset_min=int(raw["opset"]["min"]), opset_max=int(raw["opset"]["max"]),
        domains=tuple(raw["domains"]),
        supported={op: tuple(types) for op, types in raw["supported"].items()},
        unsupported=frozenset(raw["unsupported"]),
        zero_point_ops=frozenset(q["zero_point_must_be_zero"]),
        dequantize_input_types=frozenset(q["dequantize_input_types"]),
    )


def _walk(graph, path: str = "") -> Iterator[tuple[Any, str, Any]]:
    """(node, where, graph it sits in) for every node, descending into subgraph attributes."""
    import onnx

    for node in graph.node:
        where = f"{path}{node.name or node.op_type}"
        yield node, where, graph
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g, f"{where}/{attr.name}/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for i, g in enumerate(attr.graphs):
                    yield from _walk(g, f"{where}/{attr.name}[{i}]/")


# ONNX tensor element type -> the parser matrix's type names (only the ones the matrix uses)
_TYPE_NAMES = {1: "FP32", 10: "FP16", 16: "BF16", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL",
               17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 22: "INT4", 23: "FP4", 11: "DOUBLE"}


def _constants(graph) -> dict[str, Any]:
    """name -> TensorProto for initializers and Constant-node outputs of this graph."""
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = attr.t
    return out


def _qdq_problems(node, where: str, constants: dict[str, Any], table: OpTable) -> list[str]:
    from onnx import numpy_helper

    problems = []
    if node.op_type in table.zero_point_ops and len(node.input) > 2 and node.input[2] in constants:
        zp = numpy_helper.to_array(constants[node.input[2]])
        if zp.size and (zp != 0).any():
            problems.append(f"{where}: {node.op_type} zero point must be 0 for TensorRT, found "
                            f"{zp.ravel()[:4].tolist()} (quantize with symmetric activations and weights)")
    if node.op_type == "DequantizeLinear" and node.input[0] in constants:
        dtype = _TYPE_NAMES.get(constants[node.input[0]].data_type, str(constants[node.input[0]].data_type))
        if dtype not in table.dequantize_input_types:
            problems.append(f"{where}: DequantizeLinear of a {dtype} tensor ({node.input[0]}); TensorRT takes "
                            f"{sorted(table.dequantize_input_types)} (keep biases in float: QuantizeBias=False)")
    return problems


def audit_model(model, table: OpTable) -> dict[str, Any]:
    """Report on `model` (a ModelProto): operator counts, opset, and every problem found (empty = passes)."""
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    default_opset = opsets.get("", opsets.get("ai.onnx"))
    problems: list[str] = []
    if default_opset is None or not table.opset_min <= default_opset <= table.opset_max:
        problems.append(f"default-domain opset {default_opset} outside TensorRT {table.tensorrt}'s range "
                        f"{table.opset_min}..{table.opset_max}")
    counts: Counter[str] = Counter()
    # per graph, built once (a graph of thousands of nodes was rescanned for each); the graph is kept beside its
    # table so that its id cannot be reused by another subgraph while the walk goes on
    constants_by_graph: dict[int, tuple[Any, dict[str, Any]]] = {}
    for node, where, graph in _walk(model.graph):
        domain = node.domain or ""
        name = node.op_type if domain in DEFAULT_DOMAINS else f"{domain}::{node.op_type}"
        counts[name] += 1
        if domain not in table.domains:
            problems.append(f"{where}: {name} is in domain {domain!r}; the TensorRT parser reads only "
                            f"{list(table.domains)} without plugins")
        elif node.op_type in table.unsupported:
            problems.append(f"{where}: {node.op_type} is listed as unsupported by the TensorRT {table.tensorrt} parser")
        elif node.op_type not in table.supported:
            problems.append(f"{where}: {node.op_type} is not in the TensorRT {table.tensorrt} parser's operator list")
        else:
            if id(graph) not in constants_by_graph:
                constants_by_graph[id(graph)] = (graph, _constants(graph))
            problems.extend(_qdq_problems(node, where, constants_by_graph[id(graph)][1], table))
    return {
        "op_table": table.source,
        "tensorrt": table.tensorrt,
        "opset": default_opset,
        "operators": dict(sorted(counts.items())),
        "problems": problems,
        "passed": not problems,
    }


def require_supported(report: dict[str, Any], what: str) -> None:
    if not report["passed"]:
        shown = "\n  ".join(report["problems"][:20])
        more = len(report["problems"]) - 20
        raise UnsupportedOperatorError(
            f"{what}: TensorRT {report['tensorrt']} could not parse this graph ({report['op_table']}):\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else ""))


def audit_file(path: str | os.PathLike, table_path: str | os.PathLike = DEFAULT_OP_TABLE) -> dict[str, Any]:
    """Load an ONNX file (structure only) and audit it; raises UnsupportedOperatorError when it fails."""
    import onnx

    path = Path(path)
    report = audit_model(onnx.load(str(path), load_external_data=False), load_op_table(table_path))
    require_supported(report, str(path))
    return report
