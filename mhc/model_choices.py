"""The allowed values of the model's string options, each list defined once.

A leaf (it imports nothing from `mhc`): `mhc.config` validates against these lists and the model
code reads them, without `config` importing the `mhc.model` package, whose `__init__` runs the
transformer, which imports `config` (tests/test_layout.py counts such package edges).
"""
ATTENTION = ("mha", "mla")  # multi-head attention with RoPE; DeepSeek's latent attention (MLA)
FFN = ("dense", "moe")  # SwiGLU everywhere; shared + routed experts after n_dense_layers
DISPATCH = ("auto", "capacity", "ragged")  # MoE token dispatch (mhc.model.moe; auto: by platform)
