"""GPT training workload: plain PyTorch, runnable with or without Ray."""
