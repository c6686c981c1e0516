"""AoANet (Huang et al., "Attention on Attention for Image Captioning", ICCV 2019).

Written here from the paper and the public checkpoint layout: every module and
parameter name matches the checkpoints that the original training code saves
(``refiner.layers.0.self_attn.linears.0.weight``, ``core.att_lstm.weight_ih``,
...), so ``load_state_dict(strict=True)`` works with no key mapping. The
arithmetic follows the original too, because users compare captions word for
word:

- ``LayerNorm`` divides by the *unbiased* standard deviation plus ``eps``.
- Padded regions (``att_masks``) are zero after the region embedding (the
  original packs the valid prefix of each row), get ``-1e9`` scores in the
  dot-product attention and are renormalised away in the additive one.
- Word id 0 is BOS, EOS and padding; the last id is ``UNK``.
- The decoder keeps two state layers whatever ``opt.num_layers`` says.

Every attention module keeps its last softmax weights in ``.attn``
(``(B, heads, Q, K)``) so that the decoding loops and the ONNX export can
return them.

Loading is in :mod:`attnvis.captioning.checkpoint`, decoding in
:mod:`attnvis.captioning.decoding`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnvis.errors import ModelError

# Words after which the original forbids EOS when ``remove_bad_endings`` is on
# (models/AttModel.py's list; decode_sequence trims with a different one).
BAD_ENDINGS = ("a", "an", "the", "in", "for", "at", "of", "with", "before", "after", "on",
               "upon", "near", "to", "is", "are", "am")
NUM_REFINER_LAYERS = 6
STATE_LAYERS = 2  # AoAModel sets num_layers = 2 whatever the options say


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class AoAConfig:
    """The options of ``infos['opt']`` that shape the network.

    Fields without a default are read with plain attribute access in the
    original code, so a checkpoint's options always carry them; the others use
    the original's ``getattr`` defaults.
    """

    vocab_size: int
    input_encoding_size: int
    rnn_size: int
    att_hid_size: int
    fc_feat_size: int
    att_feat_size: int
    drop_prob_lm: float
    num_heads: int
    multi_head_scale: int
    use_multi_head: int
    refine: int
    refine_aoa: int
    use_ff: int
    mean_feats: int = 1
    dropout_aoa: float = 0.3
    ctx_drop: int = 0
    out_res: int = 0
    decoder_type: str = "AoA"
    use_bn: int = 0
    logit_layers: int = 1
    max_length: int | None = 20
    seq_length: int | None = None

    @classmethod
    def from_opt(cls, opt: Any) -> "AoAConfig":
        """Read an ``SimpleNamespace`` (or dict) of the original's options.

        Raises:
            ModelError: a required option is missing or unsupported.
        """
        values = dict(opt) if isinstance(opt, dict) else dict(vars(opt))
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in values:
                kwargs[f.name] = values[f.name]
            elif f.default is dataclasses.MISSING:
                raise ModelError(f"infos 'opt' has no {f.name!r}: is this an AoANet infos file?")
        config = cls(**kwargs)
        config.check()
        return config

    def check(self) -> None:
        """Reject option values the original code cannot run either."""
        if self.logit_layers != 1:
            raise ModelError(f"logit_layers={self.logit_layers} is not supported (only 1, as in AoANet)")
        if (self.rnn_size * self.multi_head_scale) % self.num_heads:
            raise ModelError(f"rnn_size*multi_head_scale={self.rnn_size * self.multi_head_scale} "
                             f"is not divisible by num_heads={self.num_heads}")
        if self.use_multi_head != 2 and self.multi_head_scale != 1:
            raise ModelError("multi_head_scale must be 1 with additive attention (use_multi_head != 2)")

    @property
    def decode_length(self) -> int:
        """Maximum caption length: ``max_length`` (default 20), else ``seq_length``."""
        return int(self.max_length or self.seq_length or 20)

    @property
    def decoder_heads(self) -> int:
        return self.num_heads if self.use_multi_head == 2 else 1

    def to_opt(self, **extra: Any) -> SimpleNamespace:
        """An options namespace as the original's ``infos['opt']``."""
        return SimpleNamespace(caption_model="aoa", num_layers=STATE_LAYERS, **asdict(self), **extra)


# ---------------------------------------------------------------- building blocks


class LayerNorm(nn.Module):
    """Layer norm of the Annotated Transformer: ``a_2 * (x - mean) / (std + eps) + b_2``.

    ``std`` is unbiased (``torch.std``), unlike ``nn.LayerNorm``.
    """

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))
        self.b_2 = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.a_2 * (x - mean) / (std + self.eps) + self.b_2


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """``n`` independent deep copies of ``module``."""
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class SublayerConnection(nn.Module):
    """Pre-norm residual: ``x + dropout(sublayer(norm(x)))``."""

    def __init__(self, size: int, dropout: float) -> None:
        super().__init__()
        self.norm = LayerNorm(size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        return x + self.dropout(sublayer(self.norm(x)))


class PositionwiseFeedForward(nn.Module):
    """``w_2(dropout(relu(w_1(x))))``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


def dot_attention(query, key, value, mask=None, dropout=None):
    """Scaled dot-product attention; masked keys get a score of ``-1e9``.

    Returns:
        ``(output, weights)`` with weights ``(B, heads, Q, K)``.
    """
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)
    p_attn = F.softmax(scores, dim=-1)
    if dropout is not None:
        p_attn = dropout(p_attn)
    return torch.matmul(p_attn, value), p_attn


class MultiHeadedDotAttention(nn.Module):
    """Multi-head dot-product attention with optional AoA gate (refiner and decoder).

    Note the argument order ``(query, value, key)``: the decoder passes the
    first half of the projected features as ``value``, as the original does.
    """

    def __init__(self, h, d_model, dropout=0.1, scale=1, project_k_v=1, use_output_layer=1,
                 do_aoa=0, norm_q=0, dropout_aoa=0.3) -> None:
        super().__init__()
        self.d_k = d_model * scale // h
        self.h = h
        self.project_k_v = project_k_v
        self.norm = LayerNorm(d_model) if norm_q else nn.Identity()
        self.linears = clones(nn.Linear(d_model, d_model * scale), 1 + 2 * project_k_v)
        self.use_aoa = do_aoa
        if do_aoa:
            self.aoa_layer = nn.Sequential(nn.Linear((1 + scale) * d_model, 2 * d_model), nn.GLU())
            self.dropout_aoa = nn.Dropout(p=dropout_aoa) if dropout_aoa > 0 else nn.Identity()
        # AoA replaces the output projection; so does use_output_layer=0
        self.output_layer = nn.Linear(d_model * scale, d_model) if use_output_layer and not do_aoa else nn.Identity()
        self.dropout = nn.Dropout(p=dropout)
        self.attn: torch.Tensor | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, heads*d_k) -> (B, heads, L, d_k)
        return x.reshape(x.size(0), -1, self.h, self.d_k).transpose(1, 2)

    def forward(self, query, value, key, mask=None):
        if mask is not None:
            mask = (mask.unsqueeze(-2) if mask.dim() == 2 else mask).unsqueeze(1)  # (B, 1, 1|Q, K)
        single_query = query.dim() == 2
        if single_query:
            query = query.unsqueeze(1)
        query = self.norm(query)
        if self.project_k_v:
            q, k, v = (self._split(lin(x)) for lin, x in zip(self.linears, (query, key, value)))
        else:
            q, k, v = self._split(self.linears[0](query)), self._split(key), self._split(value)
        x, self.attn = dot_attention(q, k, v, mask=mask, dropout=self.dropout)
        x = x.transpose(1, 2).contiguous().view(query.size(0), -1, self.h * self.d_k)
        if self.use_aoa:
            x = self.aoa_layer(self.dropout_aoa(torch.cat([x, query], -1)))
        x = self.output_layer(x)
        return x.squeeze(1) if single_query else x


class Attention(nn.Module):
    """Additive (single-head) attention, used when ``use_multi_head != 2``."""

    def __init__(self, rnn_size: int, att_hid_size: int) -> None:
        super().__init__()
        self.rnn_size = rnn_size
        self.att_hid_size = att_hid_size
        self.h2att = nn.Linear(rnn_size, att_hid_size)
        self.alpha_net = nn.Linear(att_hid_size, 1)
        self.attn: torch.Tensor | None = None

    def forward(self, h, att_feats, p_att_feats, att_masks=None):
        att_size = att_feats.size(1)
        att = p_att_feats.view(-1, att_size, self.att_hid_size)      # (B, N, hid)
        dot = torch.tanh(att + self.h2att(h).unsqueeze(1))            # (B, N, hid)
        dot = self.alpha_net(dot.view(-1, self.att_hid_size)).view(-1, att_size)  # (B, N)
        weight = F.softmax(dot, dim=1)
        if att_masks is not None:
            # softmax first, then zero the padding and renormalise (as the original)
            weight = weight * att_masks.view(-1, att_size).float()
            weight = weight / weight.sum(1, keepdim=True)
        self.attn = weight[:, None, None, :]                           # (B, 1, 1, N)
        return torch.bmm(weight.unsqueeze(1), att_feats).squeeze(1)   # (B, rnn)


# ---------------------------------------------------------------- refiner and decoder


class AoA_Refiner_Layer(nn.Module):  # noqa: N801 (checkpoint name)
    """Self-attention (AoA-gated or not) and an optional feed-forward, pre-norm residual."""

    def __init__(self, size: int, self_attn: nn.Module, feed_forward: nn.Module | None, dropout: float) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.use_ff = int(feed_forward is not None)
        self.sublayer = clones(SublayerConnection(size, dropout), 1 + self.use_ff)
        self.size = size

    def forward(self, x, mask):
        x = self.sublayer[0](x, lambda y: self.self_attn(y, y, y, mask))
        return self.sublayer[-1](x, self.feed_forward) if self.use_ff else x


class AoA_Refiner_Core(nn.Module):  # noqa: N801
    """Six refiner layers and a final LayerNorm over the embedded regions."""

    def __init__(self, cfg: AoAConfig) -> None:
        super().__init__()
        attn = MultiHeadedDotAttention(cfg.num_heads, cfg.rnn_size, project_k_v=1, scale=cfg.multi_head_scale,
                                       do_aoa=cfg.refine_aoa, norm_q=0, dropout_aoa=cfg.dropout_aoa)
        ff = PositionwiseFeedForward(cfg.rnn_size, 2048, 0.1) if cfg.use_ff else None
        layer = AoA_Refiner_Layer(cfg.rnn_size, attn, ff, 0.1)
        self.layers = clones(layer, NUM_REFINER_LAYERS)
        self.norm = LayerNorm(layer.size)

    def forward(self, x, mask):
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)

    def attention_maps(self) -> list[torch.Tensor]:
        """The last call's self-attention weights, one ``(B, heads, N, N)`` per layer."""
        return [layer.self_attn.attn for layer in self.layers]


class AoA_Decoder_Core(nn.Module):  # noqa: N801
    """Attention LSTM, attention over regions, then AoA / LSTM / linear context layer."""

    def __init__(self, cfg: AoAConfig) -> None:
        super().__init__()
        d, scale = cfg.rnn_size, cfg.multi_head_scale
        self.d_model = d
        self.use_multi_head = cfg.use_multi_head
        self.multi_head_scale = scale
        self.out_res = cfg.out_res
        self.decoder_type = cfg.decoder_type
        self.att_lstm = nn.LSTMCell(cfg.input_encoding_size + d, d)
        self.out_drop = nn.Dropout(cfg.drop_prob_lm)
        ctx_in = d * scale + d
        if cfg.decoder_type == "AoA":
            self.att2ctx = nn.Sequential(nn.Linear(ctx_in, 2 * d), nn.GLU())
        elif cfg.decoder_type == "LSTM":
            self.att2ctx = nn.LSTMCell(ctx_in, d)
        else:  # "base"
            self.att2ctx = nn.Sequential(nn.Linear(ctx_in, d), nn.ReLU())
        if cfg.use_multi_head == 2:
            self.attention = MultiHeadedDotAttention(cfg.num_heads, d, project_k_v=0, scale=scale,
                                                     use_output_layer=0, do_aoa=0, norm_q=1)
        else:
            self.attention = Attention(d, cfg.att_hid_size)
        self.ctx_drop = nn.Dropout(cfg.drop_prob_lm) if cfg.ctx_drop else nn.Identity()

    def forward(self, xt, mean_feats, att_feats, p_att_feats, state, att_masks=None):
        h, c = state  # each (2, B, D); h[1] is the previous context vector
        h_att, c_att = self.att_lstm(torch.cat([xt, mean_feats + self.ctx_drop(h[1])], 1), (h[0], c[0]))
        if self.use_multi_head == 2:
            width = self.multi_head_scale * self.d_model
            att = self.attention(h_att, p_att_feats.narrow(2, 0, width), p_att_feats.narrow(2, width, width),
                                 att_masks)
        else:
            att = self.attention(h_att, att_feats, p_att_feats, att_masks)
        ctx_input = torch.cat([att, h_att], 1)
        if self.decoder_type == "LSTM":
            output, c_logic = self.att2ctx(ctx_input, (h[1], c[1]))
            state = (torch.stack((h_att, output)), torch.stack((c_att, c_logic)))
        else:
            output = self.att2ctx(ctx_input)
            state = (torch.stack((h_att, output)), torch.stack((c_att, c[1])))
        if self.out_res:
            output = output + h_att
        return self.out_drop(output), state


# ---------------------------------------------------------------- the model


class AoAModel(nn.Module):
    """AoANet captioning model (checkpoint-compatible with the original ``AoAModel``).

    Args:
        cfg: network options (see :class:`AoAConfig`).
        vocab: id string → word, as ``infos['vocab']``.
    """

    def __init__(self, cfg: AoAConfig, vocab: dict[str, str]) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab = dict(vocab)
        self.vocab_size = cfg.vocab_size
        self.rnn_size = cfg.rnn_size
        self.num_layers = STATE_LAYERS
        self.seq_length = cfg.decode_length
        self.bad_endings_ix = [int(k) for k, v in self.vocab.items() if v in BAD_ENDINGS]
        self.embed = nn.Sequential(nn.Embedding(cfg.vocab_size + 1, cfg.input_encoding_size), nn.ReLU(),
                                   nn.Dropout(cfg.drop_prob_lm))
        self.use_mean_feats = cfg.mean_feats
        if not cfg.mean_feats:
            self.fc_embed = nn.Sequential(nn.Linear(cfg.fc_feat_size, cfg.rnn_size), nn.ReLU(),
                                          nn.Dropout(cfg.drop_prob_lm))
        self.att_embed = _att_embed(cfg)
        self.logit = nn.Linear(cfg.rnn_size, cfg.vocab_size + 1)
        proj = 2 * cfg.multi_head_scale * cfg.rnn_size if cfg.use_multi_head == 2 else cfg.att_hid_size
        self.ctx2att = nn.Linear(cfg.rnn_size, proj)
        self.refiner = AoA_Refiner_Core(cfg) if cfg.refine else None
        self.core = AoA_Decoder_Core(cfg)

    def init_hidden(self, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero state ``(h, c)``, each ``(2, bsz, rnn_size)``."""
        weight = next(self.parameters())
        return (weight.new_zeros(STATE_LAYERS, bsz, self.rnn_size), weight.new_zeros(STATE_LAYERS, bsz, self.rnn_size))

    def prepare_feature(self, fc_feats, att_feats, att_masks=None):
        """Embed (and refine) the regions; project them for the decoder's attention.

        ``att_masks`` must already be clipped to its longest row (see
        :func:`clip_att`). Returns ``(mean_feats, att_feats, p_att_feats, att_masks)``
        with shapes ``(B, D)``, ``(B, N, D)``, ``(B, N, P)``, ``(B, N)`` or None.
        """
        att_feats = self.att_embed(att_feats)  # (B, N, D)
        if att_masks is not None:
            # the original packs each row's first sum(mask) regions: the rest become 0
            lengths = att_masks.long().sum(1, keepdim=True)
            valid = torch.arange(att_feats.size(1), device=att_feats.device)[None, :] < lengths
            att_feats = att_feats * valid.unsqueeze(-1).to(att_feats.dtype)
        if self.refiner is not None:
            att_feats = self.refiner(att_feats, att_masks)
        if not self.use_mean_feats:
            mean_feats = self.fc_embed(fc_feats)
        elif att_masks is None:
            mean_feats = torch.mean(att_feats, dim=1)
        else:
            mask = att_masks.unsqueeze(-1)
            mean_feats = torch.sum(att_feats * mask, 1) / torch.sum(mask, 1)
        return mean_feats, att_feats, self.ctx2att(att_feats), att_masks

    def get_logprobs_state(self, it, mean_feats, att_feats, p_att_feats, att_masks, state):
        """One decoder step: word ids ``(B,)`` → log-probs ``(B, V+1)`` and the new state."""
        output, state = self.core(self.embed(it), mean_feats, att_feats, p_att_feats, state, att_masks)
        return F.log_softmax(self.logit(output), dim=1), state

    def refiner_maps(self) -> list[torch.Tensor]:
        """Refiner self-attention of the last :meth:`prepare_feature` call (empty when refine is off)."""
        return [] if self.refiner is None else self.refiner.attention_maps()

    def decoder_map(self) -> torch.Tensor:
        """Decoder attention of the last step, ``(B, heads, N)``."""
        return self.core.attention.attn[:, :, 0, :]

    def forward(self, fc_feats, att_feats, seq, att_masks=None):
        """Teacher forcing (training): log-probs ``(B, T-1, V+1)`` for ``seq`` ``(B, T)``."""
        att_feats, att_masks = clip_att(att_feats, att_masks)
        feats = self.prepare_feature(fc_feats, att_feats, att_masks)
        state = self.init_hidden(fc_feats.size(0))
        outputs = []
        for i in range(seq.size(1) - 1):
            logprobs, state = self.get_logprobs_state(seq[:, i], *feats, state)
            outputs.append(logprobs)
        return torch.stack(outputs, 1)


def _att_embed(cfg: AoAConfig) -> nn.Sequential:
    """Region embedding, with the original's optional BatchNorm layers (``use_bn``)."""
    layers: list[nn.Module] = [nn.BatchNorm1d(cfg.att_feat_size)] if cfg.use_bn else []
    layers += [nn.Linear(cfg.att_feat_size, cfg.rnn_size), nn.ReLU(), nn.Dropout(cfg.drop_prob_lm)]
    if cfg.use_bn == 2:
        layers.append(nn.BatchNorm1d(cfg.rnn_size))
    if cfg.use_bn:
        return _RowwiseSequential(*layers)
    return nn.Sequential(*layers)


class _RowwiseSequential(nn.Sequential):
    """Applies its layers to ``(B, N, C)`` as rows ``(B*N, C)`` (BatchNorm1d needs 2-D input)."""

    def forward(self, x):
        shape = x.shape
        y = super().forward(x.reshape(-1, shape[-1]))
        return y.reshape(*shape[:-1], y.shape[-1])


def clip_att(att_feats, att_masks):
    """Drop the trailing regions that are masked in every row (as the original)."""
    if att_masks is None:
        return att_feats, None
    max_len = int(att_masks.long().sum(1).max())
    return att_feats[:, :max_len].contiguous(), att_masks[:, :max_len].contiguous()
