"""Operator audit: graphs TensorRT's ONNX parser would refuse are refused at export, naming what and where."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline_src.config import ConfigError
from pipeline_src.export.op_audit import (
    UnsupportedOperatorError,
    audit_file,
    audit_model,
    load_op_table,
    require_supported,
)
from tests.export.conftest import OP_TABLE


@pytest.fixture(scope="module")
def table():
    return load_op_table(OP_TABLE)


def _model(nodes, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def test_the_table_is_the_tensorrt_10_parser_matrix(table):
    assert table.tensorrt.startswith("10.") and (table.opset_min, table.opset_max) == (9, 24)
    assert {"Conv", "ConvTranspose", "Pad", "Resize", "Slice", "QuantizeLinear", "DequantizeLinear",
            "GlobalAveragePool", "LeakyRelu", "Sigmoid"} <= set(table.supported)
    assert {"NonMaxSuppression", "LayerNormalization"} <= set(table.supported)
    assert {"QLinearConv", "ConvInteger", "Unique"} <= table.unsupported
    assert table.supported["Conv"] == ("FP32", "FP16", "BF16")


def test_a_graph_of_supported_operators_passes(table):
    report = audit_model(_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])]),
                         table)
    assert report["passed"] and report["operators"] == {"Relu": 1, "Sigmoid": 1} and report["opset"] == 17


def test_an_excluded_operator_is_refused_by_name(table):
    model = _model([helper.make_node("Unique", ["x"], ["y"], name="dedupe")], opset=17)
    report = audit_model(model, table)
    assert not report["passed"]
    assert report["problems"] == ["dedupe: Unique is listed as unsupported by the TensorRT 10.15 parser"]
    with pytest.raises(UnsupportedOperatorError, match="(?s)could not parse this graph.*dedupe: Unique"):
        require_supported(report, "model.onnx")


def test_a_made_up_operator_in_a_subgraph_is_found(table):
    then = helper.make_graph([helper.make_node("Twirl", ["x"], ["t"], name="twirl")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)
    report = audit_model(_model([node], [cond]), table)
    assert report["problems"] == ["branch/then_branch/twirl: Twirl is not in the TensorRT 10.15 parser's operator list"]


def test_an_operator_from_another_domain_is_refused(table):
    node = helper.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft", name="fused")
    report = audit_model(_model([node], extra_opsets=[helper.make_opsetid("com.microsoft", 1)]), table)
    assert report["operators"] == {"com.microsoft::FusedConv": 1}
    assert "in domain 'com.microsoft'" in report["problems"][0]


def test_an_opset_outside_the_parsers_range_is_refused(table):
    report = audit_model(_model([helper.make_node("Relu", ["x"], ["y"])], opset=8), table)
    assert report["problems"] == ["default-domain opset 8 outside TensorRT 10.15's range 9..24"]


def test_asymmetric_qdq_and_int32_bias_dequantize_are_refused(table):
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.int8), "zp"),
             numpy_helper.from_array(np.array([7, 8, 9], np.int32), "bias_q"),
             numpy_helper.from_array(np.array([0.1, 0.1, 0.1], np.float32), "bias_s"),
             numpy_helper.from_array(np.zeros(3, np.int32), "bias_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
             helper.make_node("DequantizeLinear", ["bias_q", "bias_s", "bias_zp"], ["b"], name="bias_dq"),
             helper.make_node("Identity", ["dq"], ["y"])]
    problems = audit_model(_model(nodes, inits), table)["problems"]
    assert len(problems) == 3
    assert problems[0].startswith("q: QuantizeLinear zero point must be 0") and "[3]" in problems[0]
    assert problems[1].startswith("dq: DequantizeLinear zero point must be 0")
    assert problems[2].startswith("bias_dq: DequantizeLinear of a INT32 tensor (bias_q)")


def test_audit_file_raises_for_the_file(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_model([helper.make_node("Unique", ["x"], ["y"])]), str(path))
    with pytest.raises(UnsupportedOperatorError, match="bad.onnx"):
        audit_file(path, OP_TABLE)


def test_the_exported_model_passes(exported):
    assert audit_file(exported / "model.onnx", OP_TABLE)["passed"]


def test_a_table_listing_an_operator_both_ways_is_refused(tmp_path):
    text = OP_TABLE.read_text().replace("unsupported: [AffineGrid,", "unsupported: [Conv, AffineGrid,")
    (tmp_path / "ops.yaml").write_text(text)
    with pytest.raises(ConfigError, match="both supported and unsupported: \\['Conv'\\]"):
        load_op_table(tmp_path / "ops.yaml")


def test_a_table_missing_a_section_is_refused(tmp_path):
    (tmp_path / "ops.yaml").write_text("tensorrt: '10.15'\nopset: {min: 9, max: 24}\n")
    with pytest.raises(ConfigError, match="lacks 'domains'"):
        load_op_table(tmp_path / "ops.yaml")
