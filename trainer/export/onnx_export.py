"""The merged generator as an ONNX graph with a dynamic batch axis, and running it.

The graph (opset 20, torch's dynamo exporter, one self-contained file)::

    inputs   selfie  float32 (batch, 3, R, R)  the aligned RGB selfie crop, x / 127.5 - 1
             base    float32 (batch, 3, R, R)  pix2pix_lora.model.stylise of that crop,
                                               scaled the same way
    output   anime   float32 (batch, 3, R, R)  in (-1, 1); RGB uint8 = (y + 1) * 127.5

``R`` is fixed at export (the resolution the version serves, a multiple of
``2 ** (levels + 1)``); only the batch axis is dynamic. ``pix2pix_lora.model.prepare``
turns an RGB crop into both inputs. Everything else about the network (instance norm, so
each image is independent of the others in its batch) is inside the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from trainer.errors import ExportInputError
from trainer.families.pix2pix_lora.model import Generator

INPUT_NAMES = ("selfie", "base")
OUTPUT_NAME = "anime"
BATCH_AXIS = "batch"
#: The opset torch 2.14's dynamo exporter writes; ONNX Runtime 1.32 and TensorRT 10 read it.
OPSET = 20

Array = npt.NDArray[np.float32]


def check_resolution(generator: Generator, resolution: int) -> None:
    multiple = 2 ** (generator.config.levels + 1)
    if resolution % multiple or resolution < multiple:
        raise ExportInputError(
            f"resolution {resolution} must be a positive multiple of {multiple} "
            f"(2 ** (levels + 1) for this generator's {generator.config.levels} levels)"
        )


def export_onnx(generator: Generator, path: Path, resolution: int) -> dict[str, Any]:
    """Write ``generator`` (eval mode, CPU, float32) to ``path``; returns its I/O contract.

    The example batch has 2 images: with 1 the exporter could specialise the batch axis.
    """
    check_resolution(generator, resolution)
    generator = generator.eval()
    example = tuple(torch.zeros(2, 3, resolution, resolution) for _ in INPUT_NAMES)
    with torch.no_grad(), warnings.catch_warnings():
        # Both inputs share the batch dim; the exporter says so once per export, harmlessly.
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
        torch.onnx.export(
            generator,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=tuple({0: BATCH_AXIS} for _ in INPUT_NAMES),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # one file: serving and the INT8 tools load it by path
            verbose=False,
        )
    return io_contract(resolution)


def io_contract(resolution: int) -> dict[str, Any]:
    """The ``inputs``/``output`` entries of export.json for a graph of this resolution."""
    shape = [BATCH_AXIS, 3, resolution, resolution]
    return {
        "inputs": [
            {
                "name": "selfie",
                "shape": shape,
                "dtype": "float32",
                "range": [-1.0, 1.0],
                "layout": "NCHW, RGB",
                "meaning": "aligned selfie crop resized (area) to R, x / 127.5 - 1",
            },
            {
                "name": "base",
                "shape": shape,
                "dtype": "float32",
                "range": [-1.0, 1.0],
                "layout": "NCHW, RGB",
                "meaning": "pix2pix_lora.model.stylise of that crop, x / 127.5 - 1",
            },
        ],
        "output": {
            "name": OUTPUT_NAME,
            "shape": shape,
            "dtype": "float32",
            "range": [-1.0, 1.0],
            "layout": "NCHW, RGB",
            "meaning": "anime portrait; RGB uint8 = round((y + 1) * 127.5)",
        },
    }


def session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` (``threads`` intra-op threads; None: ORT's
    default, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess: Any, selfie: Array, base: Array) -> Array:
    """One ONNX Runtime run: float32 (N, 3, R, R) inputs -> (N, 3, R, R) output."""
    out = sess.run([OUTPUT_NAME], {"selfie": selfie, "base": base})[0]
    return np.asarray(out, dtype=np.float32)


@torch.no_grad()
def run_eager(model: torch.nn.Module, selfie: Array, base: Array) -> Array:
    """The same run in PyTorch eager (``model`` a Generator or its peft wrapper)."""
    out = model(torch.from_numpy(selfie), torch.from_numpy(base))
    return np.asarray(out.numpy(), dtype=np.float32)


def max_abs_diff(a: Array, b: Array) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
