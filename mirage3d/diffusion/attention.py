"""Cross-frame attention as a diffusers attention processor.

Batch layout (set per UNet call on a shared :class:`CrossFrameState`): the batch is ``G`` groups of ``V``
views, ``B = G·V``; in every group view 0 is the **reference** and views 1..V-1 are generated views. Groups
are the classifier-free-guidance branches (conditional / "no pose").

- The reference attends only to itself (plain self-attention), so its trajectory does not depend on the
  other views.
- A generated view in a ``"soft"`` group attends to ``concat(own, reference)`` keys/values (mode
  ``"concat"``), to the reference's only (mode ``"reference_only"``), or to every view of the group (mode
  ``"all"``: reference and all generated views). In a ``"self"`` group they attend only to themselves.

With ``views_per_group`` unset (``None``) or 1 the processor is exactly ``AttnProcessor2_0``.
Everything except how keys and values are gathered is copied from ``AttnProcessor2_0`` (diffusers 0.42.1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

CROSS_FRAME_MODES = ("concat", "reference_only", "all")


@dataclass
class CrossFrameState:
    """Per-call state shared by every installed processor (the pipeline sets it before each UNet call)."""

    views_per_group: int | None = None
    """V: views per group, reference first. None or 1: plain self-attention."""
    group_modes: list[str] = field(default_factory=list)
    """One of "soft" / "self" per group (len G). Empty: every group "soft"."""
    mode: str = "concat"
    """"concat" (own + reference keys/values), "reference_only" or "all" (every view of the group)."""


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)


class CrossFrameAttnProcessor2_0:
    """``AttnProcessor2_0`` whose generated views also attend to the reference view (see module docstring)."""

    def __init__(self, state: CrossFrameState):
        self.state = state

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (B, heads, N, D) → (B, heads, N, D), gathering keys/values as the state says."""
        st = self.state
        n_views = st.views_per_group
        if not n_views or n_views == 1:
            return _sdpa(q, k, v)
        b, h, n, d = q.shape
        if b % n_views:
            raise ValueError(f"batch {b} is not a multiple of views_per_group {n_views}")
        groups = b // n_views
        modes = st.group_modes or ["soft"] * groups
        if len(modes) != groups:
            raise ValueError(f"group_modes has {len(modes)} entries for {groups} groups")
        q, k, v = (t.reshape(groups, n_views, h, n, d) for t in (q, k, v))  # (G, V, heads, N, D)
        out = torch.empty_like(q)
        out[:, 0] = _sdpa(q[:, 0], k[:, 0], v[:, 0])  # the reference: only itself
        for g, mode in enumerate(modes):
            qg, kg, vg = q[g, 1:], k[g, 1:], v[g, 1:]  # (V-1, heads, N, D)
            k_ref = k[g, :1].expand_as(kg)
            v_ref = v[g, :1].expand_as(vg)
            if mode == "self":
                out[g, 1:] = _sdpa(qg, kg, vg)
            elif st.mode == "reference_only":
                out[g, 1:] = _sdpa(qg, k_ref, v_ref)
            elif st.mode == "all":  # every view of the group, the reference included: (V-1, heads, V·N, D)
                k_all = k[g].transpose(0, 1).reshape(1, h, n_views * n, d).expand(n_views - 1, -1, -1, -1)
                v_all = v[g].transpose(0, 1).reshape(1, h, n_views * n, d).expand(n_views - 1, -1, -1, -1)
                out[g, 1:] = _sdpa(qg, k_all, v_all)
            else:  # concat: own + reference, (V-1, heads, 2N, D)
                out[g, 1:] = _sdpa(qg, torch.cat([kg, k_ref], dim=2), torch.cat([vg, v_ref], dim=2))
        return out.reshape(b, h, n, d)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            # Not self-attention over image tokens: cross-frame gathering has no meaning here.
            raise ValueError("CrossFrameAttnProcessor2_0 only supports self-attention without a mask")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, D)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = self._attend(query, key, value)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


# --------------------------------------------------------------------------------------------------
# Choosing layers, installing and restoring
# --------------------------------------------------------------------------------------------------
def attention_layers(unet: torch.nn.Module) -> dict[str, Attention]:
    """Every ``Attention`` module of the UNet by name (e.g. ``"up_blocks.1.attentions.0"``)."""
    return {name: m for name, m in unet.named_modules() if isinstance(m, Attention)}


def select_layers(unet: torch.nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Resolve a layer spec to attention module names.

    ``layers``: "all", "none", or parts joined by "+" among "down", "mid", "up" (e.g. "mid+up"), or a list
    of module names / name prefixes (e.g. ``["up_blocks.1"]``).
    """
    names = list(attention_layers(unet))
    if isinstance(layers, str):
        spec = layers.strip().lower()
        if spec == "all":
            return names
        if spec in ("none", ""):
            return []
        parts = spec.split("+")
        prefix = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
        bad = [p for p in parts if p not in prefix]
        if bad:
            raise ValueError(f"unknown attention layer group {bad[0]!r}; use all, none, or down/mid/up joined by '+'")
        return [n for n in names if any(n.startswith(prefix[p]) for p in parts)]
    chosen = [n for n in names if any(n == s or n.startswith(s.rstrip(".") + ".") for s in layers)]
    missing = [s for s in layers if not any(n == s or n.startswith(s.rstrip(".") + ".") for n in names)]
    if missing:
        raise ValueError(f"attention layer {missing[0]!r} is not in this UNet; it has {names}")
    return chosen


@contextlib.contextmanager
def cross_frame_attention(
    unet: torch.nn.Module,
    layers: str | Sequence[str] = "all",
    state: CrossFrameState | None = None,
) -> Iterator[CrossFrameState]:
    """Install :class:`CrossFrameAttnProcessor2_0` on the chosen layers; restore the originals on exit.

    Yields the shared state; set ``views_per_group`` / ``group_modes`` on it before each UNet call.
    """
    state = state or CrossFrameState()
    modules = attention_layers(unet)
    chosen = set(select_layers(unet, layers))
    originals = {name: m.processor for name, m in modules.items()}
    try:
        for name, m in modules.items():
            if name in chosen:
                m.set_processor(CrossFrameAttnProcessor2_0(state))
        yield state
    finally:
        for name, m in modules.items():
            m.set_processor(originals[name])
