"""Load generator: drives a running server and reports latency percentiles and throughput (README.md)."""
