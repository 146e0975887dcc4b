"""Dataset snapshots and exports, LoRA training, evaluation, the model registry, ONNX and
TensorRT export and the scheduler's jobs. Arrives with the training issues; it depends on
``agents`` and ``schemas`` only."""
