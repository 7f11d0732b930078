"""The cross-frame attention processor against AttnProcessor2_0 and a slow float64 reference."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from test_pipeline_views import tiny_unet  # the same 8² UNet (res 8, 3 channels, seed 0)

from mirage3d.diffusion.attention import CrossFrameAttnProcessor2_0, CrossFrameState, attention_layers, cross_frame_attention, select_layers


def attn_module(dtype: torch.dtype = torch.float32) -> Attention:
    torch.manual_seed(1)
    # The block UNet2DModel's AttnDownBlock2D builds: group norm, residual connection, 4-D input.
    return (
        Attention(
            16, heads=4, dim_head=4, norm_num_groups=4, residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True
        )
        .to(dtype)
        .eval()
    )


@pytest.mark.parametrize("views", [None, 1])
def test_single_view_matches_stock_processor(views: int | None) -> None:
    attn = attn_module()
    x = torch.randn(3, 16, 4, 4)
    with torch.no_grad():
        ref = AttnProcessor2_0()(attn, x)
        out = CrossFrameAttnProcessor2_0(CrossFrameState(views_per_group=views))(attn, x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def slow_reference(attn: Attention, x: torch.Tensor, views: int, modes: list[str], mode: str) -> torch.Tensor:
    """Per-view loop with explicit softmax in float64."""
    b, c, h, w = x.shape
    hs = attn.group_norm(x.view(b, c, h * w)).transpose(1, 2)  # (B, N, C)
    q, k, v = attn.to_q(hs), attn.to_k(hs), attn.to_v(hs)
    heads, d = attn.heads, c // attn.heads
    split = lambda t: t.view(b, -1, heads, d).transpose(1, 2)  # (B, heads, N, D)
    q, k, v = split(q), split(k), split(v)
    out = torch.zeros_like(q)
    for i in range(b):
        g, j = divmod(i, views)
        r = g * views
        if j == 0 or modes[g] == "self":
            kk, vv = k[i], v[i]
        elif mode == "reference_only":
            kk, vv = k[r], v[r]
        elif mode == "all":  # every view of the group, in order
            kk, vv = torch.cat(list(k[r : r + views]), 1), torch.cat(list(v[r : r + views]), 1)
        else:
            kk, vv = torch.cat([k[i], k[r]], 1), torch.cat([v[i], v[r]], 1)
        out[i] = torch.softmax(q[i] @ kk.transpose(-1, -2) / d**0.5, -1) @ vv
    o = attn.to_out[0](out.transpose(1, 2).reshape(b, -1, c)).transpose(1, 2).reshape(b, c, h, w)
    return o + x


@pytest.mark.parametrize("mode", ["concat", "reference_only", "all"])
def test_cross_frame_matches_slow_reference(mode: str) -> None:
    attn = attn_module(torch.float64)
    views, modes = 3, ["soft", "soft", "self"]
    x = torch.randn(views * len(modes), 16, 4, 4, dtype=torch.float64)
    state = CrossFrameState(views_per_group=views, group_modes=modes, mode=mode)
    with torch.no_grad():
        out = CrossFrameAttnProcessor2_0(state)(attn, x)
        ref = slow_reference(attn, x, views, modes, mode)
        stock = AttnProcessor2_0()(attn, x)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    # References (view 0 of each group) attend only to themselves: same as stock attention.
    torch.testing.assert_close(out[::views], stock[::views], atol=1e-10, rtol=1e-10)
    assert (out[1:views] - stock[1:views]).abs().max() > 1e-3  # generated views did change


def test_install_and_restore_leave_outputs_unchanged() -> None:
    unet = tiny_unet()
    x, t, c = torch.randn(3, 3, 8, 8), torch.tensor([500] * 3), torch.tensor([1, 2, 3])
    originals = {n: m.processor for n, m in attention_layers(unet).items()}
    with torch.no_grad():
        before = unet(x, t, class_labels=c).sample
        with cross_frame_attention(unet, "all") as state:
            assert all(isinstance(m.processor, CrossFrameAttnProcessor2_0) for m in attention_layers(unet).values())
            state.views_per_group = 1  # every image its own group: plain self-attention
            installed = unet(x, t, class_labels=c).sample
            state.views_per_group, state.group_modes = 3, ["soft"]
            crossed = unet(x, t, class_labels=c).sample
        after = unet(x, t, class_labels=c).sample
    assert {n: m.processor for n, m in attention_layers(unet).items()} == originals
    torch.testing.assert_close(installed, before, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, before)
    torch.testing.assert_close(crossed[0], before[0], atol=1e-5, rtol=1e-5)  # the reference is unaffected
    assert (crossed[1:] - before[1:]).abs().max() > 1e-4


def test_restore_after_exception() -> None:
    unet = tiny_unet()
    originals = {n: m.processor for n, m in attention_layers(unet).items()}
    with pytest.raises(RuntimeError), cross_frame_attention(unet, "up"):
        raise RuntimeError("boom")
    assert {n: m.processor for n, m in attention_layers(unet).items()} == originals


def test_select_layers() -> None:
    unet = tiny_unet()
    names = list(attention_layers(unet))
    assert select_layers(unet, "all") == names
    assert select_layers(unet, "none") == []
    assert all(n.startswith("up_blocks.") for n in select_layers(unet, "up")) and select_layers(unet, "up")
    assert set(select_layers(unet, "mid+up")) == {n for n in names if not n.startswith("down_blocks.")}
    assert select_layers(unet, ["down_blocks.1"]) == ["down_blocks.1.attentions.0"]
    with pytest.raises(ValueError, match="sideways"):
        select_layers(unet, "up+sideways")
    with pytest.raises(ValueError, match="not in this UNet"):
        select_layers(unet, ["up_blocks.7"])
