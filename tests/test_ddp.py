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


def test_two_process_checkpoint_resumes_in_one_process(tmp_path):
    """The checkpoint does not depend on the number of processes: 2 ranks stop after step 3, one process resumes
    to step 6 and ends where a single uninterrupted process does."""
    from dataclasses import asdict

    from dsv3_edu.check import synthetic_stream
    from dsv3_edu.data import TokenDataset
    from dsv3_edu.distributed import _ddp_train_worker
    from dsv3_edu.parallel.launch import spawn_run
    from dsv3_edu.train import TrainConfig, train
    stream = synthetic_stream(6000, 8192)
    ds = TokenDataset(stream[:5000], stream[5000:])
    tc = TrainConfig(preset="nano", steps=6, batch_size=4, seq_len=32, warmup_steps=2, log_every=1,
                     eval_every=10 ** 9, eval_batches=1, dtype="fp32", mfu=False, out_dir=None, plots=False,
                     device="cpu")
    ref = train(tc, dataset=ds, progress=False)
    spawn_run(2, _ddp_train_worker, asdict(tc), stream[:5000], stream[5000:], 3, str(tmp_path), False, backend="gloo")
    tc.out_dir = str(tmp_path)
    res = train(tc, dataset=ds, progress=False, resume=str(tmp_path))
    assert json.loads((tmp_path / "checkpoint" / "train_config.json").read_text())["world_size"] == 1
    assert [r["loss"] for r in res.history] == pytest.approx([r["loss"] for r in ref.history], abs=1e-5)
    for (k, a), b in zip(res.model.state_dict().items(), ref.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0, msg=k)
