"""Running the exported decoder: ONNX Runtime sessions and the batch KV cache."""
