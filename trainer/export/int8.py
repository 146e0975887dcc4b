"""ONNX Runtime static INT8 quantization of the exported generator, and how it compares.

Static: activation ranges come from running the FP32 graph over calibration images (the
snapshot's own selfie crops, :mod:`trainer.export.calibration`), so nothing is measured
at inference time. Settings, and why:

- ``quant_pre_process(..., skip_symbolic_shape=True)`` first (ORT's recommended shape
  inference and graph clean-up; its symbolic shape pass fails on this graph).
- QDQ format, int8 weights per output channel, uint8 activations, MinMax calibration.
- Only ``Conv`` is quantized: the convolutions are nearly all of the compute, while the
  instance norms and the ``tanh(atanh(0.98 * base) + residual)`` tail stay float. On a
  default-size generator with a large residual (head drawn N(0, 0.02)), 256 px London-set
  crops, this cut the output difference of quantizing every op type ORT supports by about
  a quarter at the same speed (max 0.11 vs 0.15, mean 0.014 vs 0.018, outputs in
  [-1, 1]); also keeping the first and last conv in float, or Percentile calibration,
  changed it by under a fifth more (measured here on 2026-11-30).

Example::

    quantize_int8(Path("v7/model.onnx"), Path("v7/model.int8.onnx"), selfie, base)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.errors import ExportInputError
from trainer.export.onnx_export import OUTPUT_NAME

Array = npt.NDArray[np.float32]

#: Operator types quantized (see the module docstring for why only Conv).
OP_TYPES = ("Conv",)


def _calibration_reader(selfie: Array, base: Array) -> Any:
    """An ORT ``CalibrationDataReader`` yielding one image pair per call (batch 1: the
    graph's batch axis is dynamic, and one image at a time bounds calibration memory)."""
    from onnxruntime.quantization import CalibrationDataReader

    class SnapshotReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, Array]] = (
                {"selfie": selfie[i : i + 1], "base": base[i : i + 1]} for i in range(len(selfie))
            )

        def get_next(self) -> dict[str, Array] | None:
            return next(self._feeds, None)

    return SnapshotReader()


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    selfie: Array,
    base: Array,
    op_types: Sequence[str] = OP_TYPES,
) -> dict[str, Any]:
    """Write the static INT8 version of ``fp32_path`` to ``int8_path``, calibrated on the
    ``(N, 3, R, R)`` float32 inputs; returns the settings used (for export.json)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(selfie) == 0 or selfie.shape != base.shape:
        raise ExportInputError(
            f"INT8 calibration needs at least one (selfie, base) pair of equal shapes, got "
            f"{selfie.shape} and {base.shape}; pass calibration crops"
        )
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=int8_path.parent) as tmp:
        prepared = Path(tmp) / "model.pre.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _calibration_reader(selfie, base),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "format": "QDQ",
        "op_types": list(op_types),
        "weights": "int8 per channel",
        "activations": "uint8",
        "calibration": "MinMax",
        "calibration_images": len(selfie),
    }


def median_ms(
    runners: dict[str, Any], selfie: Array, base: Array, runs: int, warmup: int = 1
) -> dict[str, float]:
    """Median wall time in ms of each runner on the same inputs, runs interleaved.

    ``runners`` maps a name to ``f(selfie, base)``. Interleaving (a, b, a, b, ...) lets a
    shared machine's load fall on every runner alike, so their ratio holds even when the
    absolute times are noisy.
    """
    for _ in range(warmup):
        for run in runners.values():
            run(selfie, base)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(max(1, runs)):
        for name, run in runners.items():
            began = time.perf_counter()
            run(selfie, base)
            times[name].append((time.perf_counter() - began) * 1000)
    return {name: float(np.median(values)) for name, values in times.items()}


def onnx_runner(sess: Any) -> Any:
    """``f(selfie, base) -> output`` over an ORT session (for :func:`median_ms`)."""

    def run(selfie: Array, base: Array) -> Any:
        return sess.run([OUTPUT_NAME], {"selfie": selfie, "base": base})[0]

    return run
