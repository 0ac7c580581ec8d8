"""Data-parallel training: 2 gloo processes give the same losses and weights as one process at the same global
batch, keep the same selection biases on every rank, resume exactly, and record world_size."""
import json

import pytest
import torch

from dsv3_edu.distributed import DistEnv, ShardedBatches, check_global_batch, ddp_check


def test_two_processes_match_one_and_resume(tmp_path):
    r = ddp_check(world_size=2, backend="gloo", quick=True, resume_at=3, out_dir=str(tmp_path))
    assert (r["world_size"], r["backend"], r["resumed_at"], r["steps"]) == (2, "gloo", 3, 6)
    # the parallel run stopped after step 3, resumed from rank 0's checkpoint, and still equals one process
    assert r["max_loss_err"] < 1e-5, r
    assert r["max_weight_err"] < 2e-5, r
    assert r["same_biases_on_all_ranks"]
    saved = json.loads((tmp_path / "checkpoint" / "train_config.json").read_text())
    assert saved["world_size"] == 2 and saved["batch_size"] == 4      # the global batch is what is saved
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 7))         # rank 0 alone wrote the metrics, once each


def test_sharded_batches_take_this_ranks_rows():
    class Stream:
        def __init__(self):
            self.n = 0

        def __next__(self):
            self.n += 1
            x = torch.arange(12).view(6, 2) + 100 * self.n                # (B=6, T=2)
            return x, x + 1

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, st):
            self.n = st["n"]

    shards = [ShardedBatches(Stream(), DistEnv(rank=r, world_size=3)) for r in range(3)]
    xs = [next(s)[0] for s in shards]
    assert torch.equal(torch.cat(xs), torch.arange(12).view(6, 2) + 100)   # the ranks' rows make the global batch
    assert shards[1].state_dict() == {"n": 1}
    with pytest.raises(ValueError, match="divisible by the number of processes 4"):
        check_global_batch(6, 4)
