"""Export a trained pix2pix-lora generator into a serving version directory.

The entry point the retrain cycle calls::

    export_version(
        base_dir: Path,                          # a base run: generator.safetensors + .json
        adapter_dir: Path | None,                # a lora run (or its adapter/), or None
        out_dir: Path,                           # the version directory, e.g. models/p2p/7
        calibration: Sequence[np.ndarray] | None,  # aligned selfie crops, RGB uint8 HxWx3
        options: ExportOptions | None = None,
        *, engine_builder: EngineBuilder | None = None,   # the TensorRT seam (tests)
    ) -> ExportReport

It loads the base, applies the adapter with peft and merges it (``merge_and_unload``),
then writes, in this order::

    out_dir/
      generator.safetensors   merged weights, the base run layout (a valid --base later)
      generator.json          the generator's shape (width, levels, res_blocks)
      model.onnx              FP32, dynamic batch axis, opset 20, one file
      model.int8.onnx         ONNX Runtime static INT8 (QDQ, Conv only), with calibration
      model.plan              TensorRT FP16 refittable engine (+ INT8), where tensorrt
                              imports and a CUDA GPU is present; skipped otherwise
      export.json             the report below; written last (no file: incomplete export)

**The serving contract is model.onnx + export.json** (serving runs them with ONNX Runtime
and never imports this package). The graph takes ``selfie`` and ``base``, float32 NCHW
``(batch, 3, R, R)`` RGB in [-1, 1] (``x / 127.5 - 1``; ``base`` is
``pix2pix_lora.model.stylise`` of the same crop; ``prepare(crop, R)`` makes both) and
returns ``anime`` of the same shape in (-1, 1). export.json holds ``format_version``,
``family``, ``generator``, ``resolution`` (``R``), ``opset``, ``io`` (names, shapes,
ranges), ``files`` (SHA-256 of each artifact), ``sources`` (base and adapter paths and
hashes), ``lora``, ``parity`` (max abs difference FP32 ONNX vs eager at batch 1 and 3,
and merged vs base + adapter), ``int8`` (max/mean abs difference vs FP32, median ms of
each and the speedup, or why it was skipped), ``tensorrt`` (built, or why skipped),
``versions`` and ``seconds``.

Export fails (:class:`~trainer.errors.ParityError`) when FP32 ONNX or the merge differs
from eager by more than ``ExportOptions.tolerance``; INT8's difference is measured and
recorded, never gating: whether serving uses INT8 is the caller's decision.

Example::

    crops = snapshot_calibration(read_manifest(dataset_dir, snapshot_id), BlobStore(blobs))
    report = export_version(Path("runs/base"), Path("runs/lora-7"), Path("models/p2p/7"), crops)
    report.parity.max_abs_diff, report.int8.speedup, report.tensorrt.skipped
"""

from trainer.export.calibration import generator_inputs, snapshot_calibration
from trainer.export.tensorrt import EngineResult, build_engine
from trainer.export.version import (
    EXPORT_JSON,
    MODEL_INT8,
    MODEL_ONNX,
    MODEL_PLAN,
    EngineBuilder,
    ExportOptions,
    ExportReport,
    Int8Report,
    ParityReport,
    export_version,
)

__all__ = [
    "EXPORT_JSON",
    "MODEL_INT8",
    "MODEL_ONNX",
    "MODEL_PLAN",
    "EngineBuilder",
    "EngineResult",
    "ExportOptions",
    "ExportReport",
    "Int8Report",
    "ParityReport",
    "build_engine",
    "export_version",
    "generator_inputs",
    "snapshot_calibration",
]
