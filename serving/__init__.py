"""The gRPC Convert server, its engines (TensorRT, ONNX Runtime, PyTorch), hot-swap and a
client. Arrives with the serving issue; it reuses ``agents`` stages for preprocessing."""
