"""Stage 1, sampling: k responses per prompt from the policy (`sample`), drawn by the built-in engine
(`engine`, with CUDA-graph decoding in `static_decode`), `model.generate` or vLLM (`vllm_sampler`)."""
