"""Running the exported decoder, for everyone who runs it (docs/architecture.md, "The runtime").

- runner.py       the `Runner` protocol every model runner satisfies (ONNX here, PyTorch in training/)
- onnx_runner.py  one bundle variant in an ONNX Runtime session, with IO binding
- padding.py      left padding of a batch of prompts
- kv_cache.py     the running batch's KV cache (cache_graph.py: its surgery as an ONNX graph)
- sampler.py      sampling: the host sampler and the device sampler (sampler_graph.py) behind one interface
- decode.py       the one decode loop (`generate`): evaluation, export checks, the bench, warm-up
- detokenize.py   incremental detokenization for streaming

The arrows run one way: contract <- runtime <- {server, export, training}. Nothing here imports torch.
"""
