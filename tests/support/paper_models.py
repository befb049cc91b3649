"""The paper's policies as the memory plan reads them (tests/unit/test_plan.py, tests/integration/test_plan_mode.py):
the fields of their config.json that `cluster.plan.ModelShape` uses."""

QWEN_1P5B = {  # DeepSeek-R1-Distill-Qwen-1.5B's config.json (the fields the plan reads)
    "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": False,
}  # fmt: skip
QWEN_7B = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False,
}  # fmt: skip
