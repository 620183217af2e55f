"""The generative LM policy (the xRouter paper's design): a Hugging Face causal LM that reads the
conversation, a ``call_<model>`` tool per pool model and ``select_response``, and writes Hermes-style
``<tool_call>`` blocks or a direct answer. Generation runs with transformers (CPU or GPU) or through
an OpenAI-compatible completions server such as vLLM; every token it generates is recorded, so the
same episodes train it with GRPO (training/xrouter_training/lm_train.py)."""
