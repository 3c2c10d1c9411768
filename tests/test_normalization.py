"""Running statistics against numpy over the same stream."""

from __future__ import annotations

import numpy as np
import torch

from polopt.normalization import ObsNormalizer, RewardScaler


def test_observation_normalizer_matches_numpy_over_a_stream():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 64, 3, 100)]
    normalizer = ObsNormalizer((4,), clip=1e9)
    for chunk in chunks:
        normalizer.update(torch.as_tensor(chunk))
    stream = np.concatenate(chunks)
    np.testing.assert_allclose(normalizer.mean.numpy(), stream.mean(0), rtol=1e-12)
    np.testing.assert_allclose(normalizer.var.numpy(), stream.var(0), rtol=1e-10)
    assert normalizer.count.item() == len(stream)
    x = torch.as_tensor(stream[:5], dtype=torch.float32)
    expected = (stream[:5] - stream.mean(0)) / np.sqrt(stream.var(0) + 1e-8)
    np.testing.assert_allclose(normalizer(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_normalizer_clips_and_survives_a_state_dict_round_trip():
    normalizer = ObsNormalizer((2,), clip=5.0)
    normalizer.update(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    assert normalizer(torch.tensor([[1e6, -1e6]])).tolist() == [[5.0, -5.0]]
    restored = ObsNormalizer((2,), clip=5.0)
    restored.load_state_dict(normalizer.state_dict())
    x = torch.tensor([[0.3, 1.7]])
    assert torch.equal(restored(x), normalizer(x))


def test_disabled_normalizer_is_the_identity():
    normalizer = ObsNormalizer((2,), enabled=False)
    normalizer.update(torch.tensor([[5.0, 5.0], [7.0, 9.0]]))
    x = torch.tensor([[3.0, 4.0]])
    assert torch.equal(normalizer(x), x)
    assert normalizer.count.item() == 0


def test_reward_scaler_divides_by_the_std_of_discounted_returns():
    rng = np.random.default_rng(1)
    gamma = 0.9
    scaler = RewardScaler(num_envs=2, gamma=gamma, clip=1e9)
    running = np.zeros(2)
    history = []
    for step in range(50):
        rewards = rng.normal(size=2)
        dones = np.array([step % 7 == 6, False])
        running = running * gamma + rewards
        history.append(running.copy())
        scaled = scaler(rewards, dones)
        np.testing.assert_allclose(scaled, rewards / np.sqrt(np.var(np.concatenate(history)) + 1e-8), rtol=1e-9)
        running[dones] = 0.0
