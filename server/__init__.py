"""The serving stack: bundle -> runtime (ONNX Runtime, KV cache) -> engine (scheduler,
sampler) -> api (FastAPI routes). It never imports torch or transformers."""
