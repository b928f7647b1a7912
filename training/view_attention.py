"""Self-attention across the views of one sample, as diffusers attention processors.

One scaffold, :class:`ViewGroupAttnProcessor`, mirrors diffusers ``AttnProcessor2_0``
(spatial norm, [B,C,H,W] tokens, group norm, q/k/v projections, q/k norms, scaled dot-product
attention, output projection, residual, rescale) and lets a subclass regroup q, k, v across
the batch, which is read as groups of ``num_views`` consecutive images (one object each):

* :class:`training.multiview.CrossViewAttnProcessor`: every token attends to every token of
  every view of its sample (ViewDiff);
* :class:`training.sampling.CrossFrameAttnProcessor`: keys/values from a reference view
  (MIRAGE, Text2Video-Zero).

With ``num_views = 1`` both equal ordinary self-attention (tested against ``AttnProcessor2_0``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


class ViewGroupAttnProcessor:
    """Scaffold: subclasses implement :meth:`regroup`. Self-attention only.

    Raises:
        ValueError: cross-attention or attention masks (unsupported), or a batch that is not
            a multiple of ``num_views``.
    """
    num_views: int = 1

    def regroup(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B*V, N, C] -> the token sequences attention runs on, [G, L, C] each
        (the attention output of q is read back as [B*V, N, C])."""
        raise NotImplementedError

    def _check(self, bv: int) -> int:
        if bv % self.num_views:
            raise ValueError(f"batch {bv} is not a multiple of num_views={self.num_views}")
        return bv // self.num_views

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{type(self).__name__} supports unmasked self-attention only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        bv, n, _ = hidden_states.shape
        self._check(bv)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, val = self.regroup(attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states))
        hd = k.shape[-1] // attn.heads
        q, k, val = (t.reshape(t.shape[0], t.shape[1], attn.heads, hd).transpose(1, 2) for t in (q, k, val))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, val, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(bv, n, attn.heads * hd).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
