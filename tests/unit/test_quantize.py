"""export.quantize and its options on a small two-layer graph (real ONNX Runtime quantizer and
sessions): which MatMuls stay fp32, which weight types and ranges the int8 graph gets."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from deployments.fast_tier.training.export import QuantOptions, quantize


def _two_layer_graph(path):
    rng = np.random.default_rng(0)
    w0 = numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w0")
    w1 = numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w1")
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="/encoder/layer.0/attention/self/query/MatMul"),
        helper.make_node("MatMul", ["h", "w1"], ["y"], name="/encoder/layer.1/intermediate/dense/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        initializer=[w0, w1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def _quantized(tmp_path, options=None):
    src, dst = tmp_path / "g.onnx", tmp_path / "g.int8.onnx"
    _two_layer_graph(src)
    quantize(src, dst, options)
    return src, dst, onnx.load(str(dst)).graph


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_shipped_recipe_keeps_the_first_layer_fp32_and_quantizes_the_rest(tmp_path):
    *_, graph = _quantized(tmp_path)
    kinds = {n.name: n.op_type for n in graph.node}
    assert kinds["/encoder/layer.0/attention/self/query/MatMul"] == "MatMul"
    assert "/encoder/layer.1/intermediate/dense/MatMul" not in kinds  # replaced by an int8 MatMul
    weights = {i.name: i.data_type for i in graph.initializer}
    assert TensorProto.INT8 in weights.values() and weights["w0"] == TensorProto.FLOAT


def test_the_shipped_recipe_stays_close_to_fp32_where_8_bit_weights_saturate(tmp_path):
    """The second layer's inputs span a wide range (unnormalized Gaussian products), so 8-bit
    weights overflow the 16-bit pair sums of ONNX Runtime's AVX2 u8s8 kernel: on a CPU without
    VNNI the full-range graph was off by 27% of the output range here (7-bit: 1.1%). The shipped
    7-bit recipe must stay close on any CPU."""
    src, dst, _ = _quantized(tmp_path)
    x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    ref, got = _run(src, x), _run(dst, x)
    assert not np.array_equal(ref, got)  # int8 rounds ...
    assert np.abs(got - ref).max() < 0.03 * np.abs(ref).max()  # ... a little, never a saturated sum


def test_options_choose_the_fp32_nodes_the_weight_type_and_the_range(tmp_path):
    *_, every = _quantized(tmp_path, QuantOptions(fp32_nodes=()))
    assert not [n for n in every.node if n.op_type == "MatMul"]
    *_, unsigned = _quantized(tmp_path, QuantOptions(weight_type="uint8"))
    assert TensorProto.UINT8 in {i.data_type for i in unsigned.initializer}
    assert TensorProto.INT8 not in {i.data_type for i in unsigned.initializer}
    for options, widest in ((QuantOptions(), 64), (QuantOptions(reduce_range=False), 127)):
        *_, graph = _quantized(tmp_path, options)
        ints = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == TensorProto.INT8]
        w = max(ints, key=np.size)  # the weights, not their (zero) zero points
        assert np.abs(w.astype(np.int32)).max() == widest  # 7-bit by default, 8-bit on request


def test_an_empty_fp32_pattern_is_refused():
    with pytest.raises(ValidationError, match="empty pattern"):
        QuantOptions(fp32_nodes=("",))
