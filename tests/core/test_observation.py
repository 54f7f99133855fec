import numpy as np
import pytest
import torch

from polar_rl.observation import ObservationSpec, context_mask, featurize, logit_lens, observe_programs


def test_layout_sizes_and_dim():
    spec = ObservationSpec(hidden_size=8, num_blocks=5, pooled=True, logit_lens=True)
    sizes = {k: s.stop - s.start for k, s in spec.layout.items()}
    assert sizes == {"hidden": 8, "pooled": 8, "logit_lens": 3, "block": 6, "compute": 1, "prev_action": 4}
    assert spec.dim == 30
    assert ObservationSpec.from_dict(spec.to_dict()) == spec


def test_featurize_clips_and_removes_nan():
    spec = ObservationSpec(hidden_size=3, num_blocks=2, logit_lens=False)
    h = torch.tensor([[1e6, float("nan"), -2.0]])
    out = featurize(spec, h, torch.tensor([1]), torch.tensor([0.5]), torch.tensor([-1]))
    assert out[0, :3].tolist() == [50.0, 0.0, -2.0]
    assert out[0, spec.layout["block"]].tolist() == [0, 1, 0]
    assert out[0, spec.layout["prev_action"]].tolist() == [1, 0, 0, 0]


def test_missing_optional_parts_raise():
    spec = ObservationSpec(hidden_size=2, num_blocks=1, pooled=True)
    with pytest.raises(ValueError, match="pooled"):
        featurize(spec, torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0.0]), torch.tensor([-1]))


def test_logit_lens_extremes():
    peaked = torch.tensor([[100.0, 0.0, 0.0, 0.0]])
    flat = torch.zeros(1, 4)
    p, f = logit_lens(peaked)[0], logit_lens(flat)[0]
    assert p[0] < 0.01 and p[1] > 0.99 and p[2] == 1.0
    assert f[0] == pytest.approx(1.0) and f[1] == pytest.approx(0.25) and f[2] == 0.0


def test_context_mask_covers_tokens_up_to_the_last_context_token():
    assert context_mask(torch.tensor([0, 2]), 4).tolist() == [[True, False, False, False], [True, True, True, False]]


@torch.inference_mode()
def test_observe_programs_reads_the_partial_programs():
    from polar_rl.block_step import PartialPrograms
    from tests.serving.helpers import tiny_lm

    lm = tiny_lm()
    spec = ObservationSpec(lm.hidden_size, num_blocks=4, pooled=True, logit_lens=True)
    hidden = torch.randn(3, 5, lm.hidden_size, generator=torch.Generator().manual_seed(0))  # (N, T, H)
    last = torch.tensor([4, 2, 0])
    progs = PartialPrograms.start(3)
    progs.record(np.array([2, 1, 0]), np.array([2, 1, 0]), block_size=1)
    progs.failed[2] = True
    obs = observe_programs(lm, spec, hidden, last, context_mask(last, 5), 1, progs)
    assert obs.shape == (3, spec.dim) and obs.dtype == np.float32
    lay = spec.layout
    np.testing.assert_allclose(obs[0, lay["hidden"]], lm.norm(hidden[0, 4]).numpy(), atol=1e-6)
    np.testing.assert_allclose(obs[1, lay["pooled"]], lm.norm(hidden[1, :3].mean(0)).numpy(), atol=1e-6)
    assert obs[0, lay["block"]].tolist() == [0, 1, 0, 0, 0]
    assert obs[:2, lay["compute"]].ravel().tolist() == [0.5, 0.25]
    assert obs[1, lay["prev_action"]].tolist() == [0, 0, 1, 0]
    assert (obs[2] == 0).all()  # a failed program observes zeros
    with pytest.raises(ValueError, match="context mask"):
        observe_programs(lm, spec, hidden, last, None, 1, progs)
