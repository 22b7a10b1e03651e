"""The paper-size CLIPSep mask network on CPU: ONNX Runtime against PyTorch.

Exports a random-weight paper-size separator with ``clipsep.export_onnx`` (speed does not
depend on the weights), then times one mixture of ``--frames`` STFT frames (256 frames:
4.1 s at 16 kHz) with 4 queries, ``--repeats`` times after one warm-up, on the same
threads. Checks on the way that both give the same mask logits. Prints one JSON line.

    python benchmarks/onnx_speed.py [--frames 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

from clipcore.query import QueryEncoder
from clipsep.export_onnx import export_onnx
from clipsep.model import CLIPSep
from clipsep.separate import Separator


def seconds_per_call(call, repeats: int) -> float:
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = CLIPSep.paper().eval()
    separator = Separator(model, QueryEncoder.tiny(embed_dim=512))
    mag = torch.rand(1, 1, 513, args.frames)
    queries = torch.randn(1, 4, 512)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        paths = export_onnx(separator, folder)
        export_seconds = time.perf_counter() - started
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(paths["mask_network"]), options)
        feeds = {"mag_mix": mag.numpy(), "queries": queries.numpy()}
        with torch.no_grad():
            want = model(mag, queries)[0].numpy()
            got = session.run(["mask_logits"], feeds)[0]
            torch_s = seconds_per_call(lambda: model(mag, queries), args.repeats)
        onnx_s = seconds_per_call(lambda: session.run(None, feeds), args.repeats)
    print(json.dumps({
        "benchmark": "onnx_speed",
        "model": "CLIPSep paper size (random weights), 2 noise heads",
        "frames": args.frames,
        "queries": 4,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "export_s": round(export_seconds, 1),
        "max_abs_logit_difference": float(np.abs(got - want).max()),
        "pytorch_s_per_call": round(torch_s, 4),
        "onnxruntime_s_per_call": round(onnx_s, 4),
        "onnxruntime_speedup": round(torch_s / onnx_s, 2),
        "onnxruntime_version": ort.__version__,
    }))


if __name__ == "__main__":
    main()
