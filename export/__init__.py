"""Export: a training checkpoint -> a verified, self-describing ONNX bundle for the server.

onnx_graph.py (the decoder graph with KV cache), variants.py (FP16, INT8), verify.py
(parity checks), bundle.py (the bundle directory and its manifest).
"""
