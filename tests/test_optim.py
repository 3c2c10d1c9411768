"""GuardedAdam, the foreach gradient clip, the non-finite flag and minibatch slicing, each against
torch's own implementation or an explicit computation."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from polopt.batch import chunk_slices
from polopt.guards import nonfinite_flag
from polopt.optim import GuardedAdam, clip_grad_norm


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))


def backward(net: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x, y = torch.randn(32, 5, generator=generator), torch.randn(32, 2, generator=generator)
    (net(x) - y).pow(2).mean().backward()


def guarded_steps(net: nn.Module, optimizer: GuardedAdam, steps: range) -> None:
    for step in steps:
        optimizer.zero_grad()
        backward(net, step)
        optimizer.guarded_step(torch.zeros(()))


def test_guarded_step_matches_torch_adam():
    ours, reference = make_net(), make_net()
    optimizer = GuardedAdam(ours.parameters(), lr=1e-2)
    torch_adam = torch.optim.Adam(reference.parameters(), lr=1e-2, fused=True)
    guarded_steps(ours, optimizer, range(20))
    for step in range(20):
        torch_adam.zero_grad()
        backward(reference, step)
        torch_adam.step()
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert float(optimizer.take_skipped()) == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_flagged_step_leaves_weights_and_moments_bitwise_unchanged(bad):
    net = make_net()
    optimizer = GuardedAdam(net.parameters(), lr=1e-2)
    guarded_steps(net, optimizer, range(3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    moments = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in net.parameters()]
    optimizer.zero_grad()
    backward(net, 3)
    next(net.parameters()).grad[0, 0] = bad
    optimizer.guarded_step(nonfinite_flag(optimizer.grads()))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    for p, saved in zip(net.parameters(), moments, strict=True):
        for k, v in saved.items():
            assert torch.equal(optimizer.state[p][k], v), k
    assert float(optimizer.take_skipped()) == 1.0
    assert float(optimizer.take_skipped()) == 0.0  # counted once


def test_state_dict_round_trip_continues_exactly():
    straight, resumed = make_net(), make_net()
    optimizer = GuardedAdam(straight.parameters(), lr=1e-2)
    guarded_steps(straight, optimizer, range(10))
    other = GuardedAdam(resumed.parameters(), lr=1e-2)
    guarded_steps(resumed, other, range(5))
    buffer = io.BytesIO()
    torch.save({"net": resumed.state_dict(), "opt": other.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    fresh = make_net(seed=1)
    fresh.load_state_dict(saved["net"])
    loaded = GuardedAdam(fresh.parameters(), lr=1e-2)
    loaded.load_state_dict(saved["opt"])
    guarded_steps(fresh, loaded, range(5, 10))
    for p, q in zip(straight.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    assert float(loaded.state[next(fresh.parameters())]["step"]) == 10.0


def test_zero_grad_and_missing_gradients():
    net = make_net()
    optimizer = GuardedAdam(net.parameters(), lr=1e-2)
    backward(net, 0)
    optimizer.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(RuntimeError, match="no gradient"):
        optimizer.guarded_step(torch.zeros(()))


def test_nonfinite_flag():
    finite = [torch.ones(3), torch.zeros(2, 2)]
    assert float(nonfinite_flag(finite)) == 0.0
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert float(nonfinite_flag([*finite, torch.tensor([1.0, bad])])) == 1.0
    assert float(nonfinite_flag([torch.tensor(float("nan"))])) == 1.0  # 0-dim, as a loss


@pytest.mark.parametrize("max_norm", [None, 0.1, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    ours, reference = make_net(), make_net()
    backward(ours, 0)
    backward(reference, 0)
    grads = [p.grad for p in ours.parameters()]
    norm = clip_grad_norm(grads, max_norm)
    expected = nn.utils.clip_grad_norm_(reference.parameters(), max_norm if max_norm is not None else float("inf"))
    torch.testing.assert_close(norm, expected)
    explicit = torch.cat([p.grad.flatten() for p in reference.parameters()]).norm()
    torch.testing.assert_close(torch.cat([g.flatten() for g in grads]).norm(),
                               explicit if max_norm is None else torch.clamp(explicit, max=max_norm))
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize(("size", "chunks"), [(2048, 32), (10, 3), (7, 7), (5, 8), (1, 1)])
def test_chunk_slices_cut_like_torch_chunk(size, chunks):
    expected = [c.tolist() for c in torch.arange(size).chunk(chunks)]
    assert [list(range(size))[s] for s in chunk_slices(size, chunks)] == expected


def test_batch_minibatches_partition_the_batch_with_rows_kept_together():
    from polopt.batch import Batch
    from polopt.distributions import GaussianParams

    n = 37
    rows = torch.arange(n, dtype=torch.float32)
    batch = Batch(obs=rows[:, None].repeat(1, 3), actions=rows[:, None], old_params=GaussianParams(rows[:, None],
                  -rows[:, None]), old_log_prob=rows, advantages=2 * rows, returns=3 * rows, old_values=4 * rows)
    parts = list(batch.minibatches(5, generator=torch.Generator().manual_seed(0)))
    assert [len(p) for p in parts] == [8, 8, 8, 8, 5]
    seen = torch.cat([p.old_log_prob for p in parts])
    assert sorted(seen.tolist()) == rows.tolist() and not torch.equal(seen, rows)  # shuffled, each row once
    for p in parts:  # every field of a row travels together
        idx = p.old_log_prob
        assert torch.equal(p.obs[:, 0], idx) and torch.equal(p.actions[:, 0], idx)
        assert torch.equal(p.old_params.mean[:, 0], idx) and torch.equal(p.old_params.log_std[:, 0], -idx)
        assert torch.equal(p.advantages, 2 * idx) and torch.equal(p.returns, 3 * idx)
        assert torch.equal(p.old_values, 4 * idx)
