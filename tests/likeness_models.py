"""Small synthetic insightface-style ONNX models (built with onnx.helper) and matching test images.

Detector ("det_10g.onnx"): SCRFD layout insightface routes by its 9 outputs (score / bbox / kps for
strides 8, 16, 32, 2 anchors), dynamic input [1, 3, H, W]. Only stride 32 can fire: each 32×32
cell scores sigmoid(GAIN·(r − b) + BIAS) on the normalised blob, so a *red* square is a face and a
grey image has none; the box and the five landmarks sit at fixed offsets from the cell (a face
centred 3 cells right and below the cell's corner, eyes 1.2 cells apart). With `max_width`, the
score is multiplied by (input width ≤ max_width): the face is then found only at those det sizes.

Recognition ("w600k_r50.onnx"): input [1, 3, 112, 112] → per-channel mean → [r, g, b, 1, 0, …]
(512-d), with r, g, b = (channel − 127.5) / 127.5 of the aligned crop in RGB order. On a crop that
lies inside a uniformly coloured face the embedding is therefore known in closed form
(`expected_embedding`).
"""
from __future__ import annotations

import os

import numpy as np

onnx = __import__("pytest").importorskip("onnx", reason="onnx builds the synthetic face models")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

STRIDES = (8, 16, 32)
ANCHORS = 2
GAIN, BIAS = 10.0, -5.0
EMBED_DIM = 512
# landmarks in stride units from the cell's corner: eyes, nose, mouth corners
KPS = np.array([[2.4, 2.5], [3.6, 2.5], [3.0, 3.1], [2.5, 3.7], [3.5, 3.7]], np.float32)
BOX = np.array([-1.0, -1.0, 5.0, 5.0], np.float32)  # x1 = cx − d0 …: a 4-cell box around the face


def _head(nodes, inits, stride, channels, weight, bias, out_name, width):
    """AveragePool(stride) → 1×1 Conv → (1, h, w, C·A) → (h·w·A, width)."""
    pooled = f"pool{stride}_{out_name}"
    conv = f"conv{stride}_{out_name}"
    nodes.append(helper.make_node("AveragePool", ["input.1"], [pooled], kernel_shape=[stride, stride],
                                  strides=[stride, stride], name=f"pool_{out_name}"))
    inits.append(numpy_helper.from_array(weight.astype(np.float32).reshape(channels, 3, 1, 1), conv + "_w"))
    inits.append(numpy_helper.from_array(bias.astype(np.float32).reshape(channels), conv + "_b"))
    nodes.append(helper.make_node("Conv", [pooled, conv + "_w", conv + "_b"], [conv], name=f"c_{out_name}"))
    return conv


def build_detector(path: str, max_width: int | None = None) -> str:
    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    if max_width is not None:
        # gate = float(W <= max_width), from the input's runtime shape
        inits += [numpy_helper.from_array(np.array([3], np.int64), "w_index"),
                  numpy_helper.from_array(np.array([max_width + 1], np.int64), "w_limit")]
        nodes += [helper.make_node("Shape", ["input.1"], ["in_shape"], name="shape"),
                  helper.make_node("Gather", ["in_shape", "w_index"], ["in_w"], axis=0, name="gather"),
                  helper.make_node("Less", ["in_w", "w_limit"], ["w_ok"], name="less"),
                  helper.make_node("Cast", ["w_ok"], ["gate"], to=TensorProto.FLOAT, name="cast")]
    for stride in STRIDES:
        live = stride == 32
        # scores: r − b on both anchors (only stride 32 can fire)
        w = np.zeros((ANCHORS, 3), np.float32)
        if live:
            w[:, 0], w[:, 2] = GAIN, -GAIN
        logits = _head(nodes, inits, stride, ANCHORS, w, np.full(ANCHORS, BIAS if live else -30.0),
                       f"score{stride}", 1)
        nodes.append(helper.make_node("Sigmoid", [logits], [f"sig{stride}"], name=f"sig{stride}"))
        score_src = f"sig{stride}"
        if max_width is not None:
            nodes.append(helper.make_node("Mul", [score_src, "gate"], [f"gated{stride}"], name=f"gate{stride}"))
            score_src = f"gated{stride}"
        for kind, channels, bias in (("score", 1, None),
                                     ("bbox", 4, np.tile(BOX, ANCHORS)),
                                     ("kps", 10, np.tile(KPS.reshape(-1), ANCHORS))):
            src = score_src
            if kind != "score":
                src = _head(nodes, inits, stride, channels * ANCHORS, np.zeros((channels * ANCHORS, 3)), bias,
                            f"{kind}{stride}", channels)
            name = f"{kind}_{stride}"
            nodes.append(helper.make_node("Transpose", [src], [name + "_t"], perm=[0, 2, 3, 1], name=name + "_tr"))
            inits.append(numpy_helper.from_array(np.array([-1, channels], np.int64), name + "_shape"))
            nodes.append(helper.make_node("Reshape", [name + "_t", name + "_shape"], [name], name=name + "_rs"))
            outputs[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{stride}", channels]))
    graph = helper.make_graph(
        nodes, "synthetic_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_recognizer(path: str) -> str:
    w = np.zeros((3, EMBED_DIM), np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = 1.0
    b = np.zeros(EMBED_DIM, np.float32)
    b[3] = 1.0
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input.1"], ["means"], axes=[2, 3], keepdims=0, name="pool"),
         helper.make_node("MatMul", ["means", "W"], ["proj"], name="project"),
         helper.make_node("Add", ["proj", "B"], ["embedding"], name="bias")],
        "synthetic_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, EMBED_DIM])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_pack(folder: str, max_width: int | None = None) -> str:
    os.makedirs(folder, exist_ok=True)
    build_detector(os.path.join(folder, "det_10g.onnx"), max_width=max_width)
    build_recognizer(os.path.join(folder, "w600k_r50.onnx"))
    return folder


GREY = (128, 128, 128)


def face_image(color=(200, 60, 40), size=640, box=(120, 120, 560, 560), background=GREY) -> np.ndarray:
    """An RGB uint8 image with one uniformly coloured 'face' square."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = color
    return img


def expected_embedding(color) -> np.ndarray:
    """The recognition output for a crop entirely inside a face of `color`, L2-normalised."""
    v = np.zeros(EMBED_DIM, np.float64)
    v[:3] = (np.asarray(color, np.float64) - 127.5) / 127.5
    v[3] = 1.0
    return v / np.linalg.norm(v)
