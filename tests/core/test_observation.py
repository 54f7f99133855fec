import pytest
import torch

from polar_rl.observation import ObservationSpec, featurize, logit_lens


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
