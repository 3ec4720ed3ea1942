"""Two local processes joined by jax.distributed (2 CPU devices each) run a sharded training
step together, and get the single-process losses."""
import os

import pytest
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhc import train_step
from mhc.config import Config, ModelConfig, TrainConfig
from mhc.model import Decoder

jit_step = nnx.jit(train_step.train_step_body)  # one device, state not donated

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_two_processes_run_a_sharded_step_together():
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "distributed_worker.py"),
                               str(port), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, err[-3000:]
        outputs.append([float(x) for x in out.split("losses", 1)[1].split()])
    assert outputs[0] == outputs[1]  # both processes see the same global loss
    cfg = Config(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64),
                 TrainConfig(batch_size=8, seq_len=16, lr=1e-2, warmup_steps=0))
    tokens = np.random.default_rng(0).integers(0, 256, (8, 17)).astype(np.int32)
    batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    optimizer = train_step.make_optimizer(model, cfg)
    reference = [float(jit_step(model, optimizer, batch)[0]["loss"]) for _ in range(2)]
    np.testing.assert_allclose(outputs[0], reference, atol=1e-5)
