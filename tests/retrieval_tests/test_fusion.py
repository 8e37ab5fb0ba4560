"""ILD-FFN and projection heads: shapes, normalisation, gradient flow, rebuild from spec."""

from __future__ import annotations

import pytest
import torch

from retrieval.engine.fusion import ILDFFN, ProjectionHead, head_from_spec, head_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ildffn_output_is_l2_normalised_embedding():
    torch.manual_seed(0)
    head = ILDFFN(deep_dim=40, rad_dim=20, embed_dim=16)
    out = head(torch.rand(4, 40), torch.randn(4, 20))
    assert out.shape == (4, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


def test_correlation_feature_is_the_pooled_outer_product_map():
    head = ILDFFN(deep_dim=40, rad_dim=20, embed_dim=8)
    r = head.correlation(torch.rand(3, 40), torch.randn(3, 20))
    # three 2x2 poolings: 40 -> 5, 20 -> 3 (ceil)
    assert head.r_dim == 5 * 3 and r.shape == (3, 15)
    assert head.project.in_features == 40 + 20 + 15
    convs = [m for m in head.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert head.to_r.out_channels == 1 and head.to_r.kernel_size == (1, 1)


def test_gradient_reaches_every_parameter_and_both_inputs():
    torch.manual_seed(0)
    head = ILDFFN(deep_dim=24, rad_dim=12, embed_dim=8)
    x = torch.rand(4, 24, requires_grad=True)
    y = torch.randn(4, 12, requires_grad=True)
    (head(x, y) * torch.randn(4, 8)).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0


def test_reduced_variant_shrinks_the_correlation_map_only():
    head = ILDFFN(deep_dim=64, rad_dim=16, embed_dim=8, reduce_deep=16)
    assert head.r_dim == 2 * 2
    assert head.project.in_features == 64 + 16 + 4
    assert head(torch.rand(2, 64), torch.randn(2, 16)).shape == (2, 8)


def test_wrong_input_sizes_are_rejected():
    head = ILDFFN(deep_dim=8, rad_dim=4, embed_dim=4)
    with pytest.raises(ValueError, match="deep 8"):
        head(torch.rand(2, 9), torch.rand(2, 4))


def test_projection_head_and_spec_round_trip():
    torch.manual_seed(0)
    for head in (ProjectionHead(10, 6), ProjectionHead(10, 6, hidden=12), ILDFFN(16, 8, 4)):
        rebuilt = head_from_spec(head_spec(head))
        rebuilt.load_state_dict(head.state_dict())
        head.eval()
        rebuilt.eval()
        args = (
            (torch.rand(3, 10),)
            if isinstance(head, ProjectionHead)
            else (
                torch.rand(3, 16),
                torch.rand(3, 8),
            )
        )
        torch.testing.assert_close(head(*args), rebuilt(*args))
        torch.testing.assert_close(head(*args).norm(dim=1), torch.ones(3))
