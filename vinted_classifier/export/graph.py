"""What a SavedModel's graph computes in, read from ``saved_model.pb`` without loading it."""

from __future__ import annotations

from pathlib import Path

from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

COMPUTE_OPS = ("Conv2D", "MatMul", "BatchMatMulV2", "DepthwiseConv2dNative", "_FusedConv2D", "_FusedMatMul")


def compute_op_dtypes(version_dir: str | Path) -> dict[str, set[str]]:
    """Dtypes of the convolutions and matrix products in a SavedModel's graph, by op type.

    Reads ``saved_model.pb`` (graph and function library), no TensorFlow session: a float32
    export shows only ``float32``, a bfloat16 export shows ``bfloat16``.
    """
    proto = saved_model_pb2.SavedModel.FromString((Path(version_dir) / "saved_model.pb").read_bytes())
    found: dict[str, set[str]] = {}
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
        for node in nodes:
            if node.op in COMPUTE_OPS and "T" in node.attr:
                name = types_pb2.DataType.Name(node.attr["T"].type).removeprefix("DT_").lower()
                found.setdefault(node.op, set()).add({"half": "float16", "float": "float32"}.get(name, name))
    return found
