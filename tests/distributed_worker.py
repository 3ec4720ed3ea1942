"""One process of the two-process jax.distributed test (run by tests/test_distributed.py).

usage: python distributed_worker.py PORT PROCESS_ID  -> prints 'losses <l1> <l2>' on success."""
import os
import sys

os.environ.pop("XLA_FLAGS", None)
os.environ["JAX_PLATFORMS"] = "cpu"

from mhc import sharding  # noqa: E402

port, process_id = sys.argv[1], int(sys.argv[2])
sharding.initialize_distributed(f"localhost:{port}", 2, process_id, local_devices=2)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mhc import train_step  # noqa: E402
from mhc.config import Config, ModelConfig, TrainConfig  # noqa: E402
from mhc.model import Decoder  # noqa: E402

assert jax.process_count() == 2 and len(jax.devices()) == 4, (jax.process_count(), jax.devices())
cfg = Config(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64),
             TrainConfig(batch_size=8, seq_len=16, lr=1e-2, warmup_steps=0))
tokens = np.random.default_rng(0).integers(0, 256, (8, 17)).astype(np.int32)
rows = slice(4 * process_id, 4 * process_id + 4)  # this process's half of the global batch
local = {"inputs": tokens[rows, :-1], "targets": tokens[rows, 1:]}
mesh = sharding.make_mesh("fsdp=4")
model = Decoder(cfg.model, rngs=nnx.Rngs(0))
optimizer = train_step.make_optimizer(model, cfg)
step, state = sharding.shard_step(lambda m, o, b: train_step.train_step_body(m, o, b)[0], model,
                                  optimizer, mesh)
losses = []
for _ in range(2):
    state, metrics = step(state, sharding.global_batch(local, mesh))
    losses.append(float(metrics["loss"]))
print("losses", *losses, flush=True)
jax.distributed.shutdown()
