"""spark-build: a validated vLLM wheel for new NVIDIA hardware, from one resumable command."""
