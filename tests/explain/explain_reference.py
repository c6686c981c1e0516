"""Batch-1 references of the explanation methods, written from the semantics of their authors' code.

Written here independently (nothing is copied or imported from those repositories):

- Transformer-Explainability (Chefer et al., CVPR 2021): ``baselines/ViT/ViT_explanation_generator.py``
  (``compute_rollout_attention``, ``generate_rollout``, ``generate_cam_attn``), ``ViT_LRP.py``
  (``relprop``: ``last_layer_attn``, ``transformer_attribution``), ``modules/layers_ours.py`` (the LRP rules,
  with relevance moved by ``torch.autograd.grad`` as their ``gradprop`` does);
- Transformer-MM-Explainability (ICCV 2021): the ViT notebook's ``avg_heads``, ``apply_self_attention_rules``,
  ``generate_relevance``;
- jacobgil/vit-explain ``vit_grad_rollout.grad_rollout`` (with rows normalized, see ``grad_rollout`` below).

The model runs through :func:`reference_forward`: an explicit pre-norm ViT forward from the block weights
(as their ``ViT_LRP.VisionTransformer`` computes it), which the tests check against the library's own logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class BlockWeights:
    ln1: torch.nn.Module
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    ln2: torch.nn.Module
    fc1_w: torch.Tensor
    fc1_b: torch.Tensor
    act: object
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor
    heads: int


@dataclass
class ViTWeights:
    blocks: list
    block_modules: list
    norm: torch.nn.Module
    head_w: torch.Tensor
    head_b: torch.Tensor


def weights_of(model) -> ViTWeights:
    """The blocks of a timm, Hugging Face or torchvision ViT classifier."""
    kind = type(model).__module__.split(".")[0]
    blocks = []
    if kind == "timm":
        for b in model.blocks:
            blocks.append(BlockWeights(b.norm1, b.attn.qkv.weight, b.attn.qkv.bias, b.attn.proj.weight, b.attn.proj.bias,
                                       b.norm2, b.mlp.fc1.weight, b.mlp.fc1.bias, b.mlp.act, b.mlp.fc2.weight,
                                       b.mlp.fc2.bias, b.attn.num_heads))
        return ViTWeights(blocks, list(model.blocks), model.norm, model.head.weight, model.head.bias)
    if kind == "transformers":
        vit = model.vit
        layers = vit.encoder.layer if hasattr(vit, "encoder") else vit.layers
        for layer in layers:
            if hasattr(layer.attention, "q_proj"):  # Transformers 5
                a, mlp = layer.attention, layer.mlp
                qkv, out, heads = [a.q_proj, a.k_proj, a.v_proj], a.o_proj, a.config.num_attention_heads
                fc1, act, fc2 = mlp.fc1, mlp.activation_fn, mlp.fc2
            else:
                a = layer.attention.attention
                qkv, out, heads = [a.query, a.key, a.value], layer.attention.output.dense, a.num_attention_heads
                fc1, act, fc2 = layer.intermediate.dense, layer.intermediate.intermediate_act_fn, layer.output.dense
            blocks.append(BlockWeights(layer.layernorm_before, torch.cat([m.weight for m in qkv]),
                                       torch.cat([m.bias for m in qkv]), out.weight, out.bias, layer.layernorm_after,
                                       fc1.weight, fc1.bias, act, fc2.weight, fc2.bias, heads))
        return ViTWeights(blocks, list(layers), vit.layernorm, model.classifier.weight, model.classifier.bias)
    for layer in model.encoder.layers:  # torchvision
        m = layer.self_attention
        blocks.append(BlockWeights(layer.ln_1, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias,
                                   layer.ln_2, layer.mlp[0].weight, layer.mlp[0].bias, layer.mlp[1], layer.mlp[3].weight,
                                   layer.mlp[3].bias, m.num_heads))
    return ViTWeights(blocks, list(model.encoder.layers), model.encoder.ln, model.heads.head.weight,
                      model.heads.head.bias)


def first_block_input(model, weights: ViTWeights, x: torch.Tensor) -> torch.Tensor:
    """The tokens entering block 0 (embedding, CLS, positions), taken from the model's own run."""
    seen = []
    handle = weights.block_modules[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


# --- layers_ours.py's rules, relevance moved by autograd as their gradprop does ---------------------------------

def safe_divide(a, b):
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def gradprop(outputs, inputs, grad_outputs):
    return torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=True)


def linear_relprop(x, w, relevance, alpha=1.0):
    """``layers_ours.Linear.relprop``: activator minus beta times inhibitor relevances, bias left out."""
    beta = alpha - 1
    x = x.detach().requires_grad_(True)
    pw, nw = torch.clamp(w, min=0), torch.clamp(w, max=0)
    px, nx = torch.clamp(x, min=0), torch.clamp(x, max=0)

    def f(w1, w2, x1, x2):
        z1, z2 = F.linear(x1, w1), F.linear(x2, w2)
        s1 = safe_divide(relevance, z1 + z2)
        s2 = safe_divide(relevance, z1 + z2)
        c1 = x1 * gradprop(z1, x1, s1)[0]
        c2 = x2 * gradprop(z2, x2, s2)[0]
        return c1 + c2

    return alpha * f(pw, nw, px, nx) - beta * f(nw, pw, px, nx)


def einsum_relprop(equation, operands, relevance):
    """``layers_ours.einsum.relprop`` (RelPropSimple over two operands)."""
    operands = [o.detach().requires_grad_(True) for o in operands]
    z = torch.einsum(equation, *operands)
    s = safe_divide(relevance, z)
    c = gradprop(z, operands, s)
    return operands[0] * c[0], operands[1] * c[1]


def add_relprop(inputs, relevance):
    """``layers_ours.Add.relprop``."""
    inputs = [i.detach().requires_grad_(True) for i in inputs]
    z = torch.add(*inputs)
    s = safe_divide(relevance, z)
    c = gradprop(z, inputs, s)
    a, b = inputs[0] * c[0], inputs[1] * c[1]
    a_sum, b_sum = a.sum(), b.sum()
    a_fact = safe_divide(a_sum.abs(), a_sum.abs() + b_sum.abs()) * relevance.sum()
    b_fact = safe_divide(b_sum.abs(), a_sum.abs() + b_sum.abs()) * relevance.sum()
    return a * safe_divide(a_fact, a.sum()), b * safe_divide(b_fact, b.sum())


def clone_relprop(x, relevances):
    """``layers_ours.Clone.relprop``."""
    x = x.detach().requires_grad_(True)
    zs = [x for _ in relevances]
    s = [safe_divide(r, z) for r, z in zip(relevances, zs)]
    c = gradprop(zs, x, s)[0]
    return x * c


# --- the forward their ViT_LRP computes, one image, everything saved --------------------------------------------

def reference_forward(weights: ViTWeights, tokens: torch.Tensor, cls: int = 0):
    """One image's logits and, per block, what relprop reads; ``attn`` tensors keep their gradients."""
    saved = []
    x = tokens
    for bw in weights.blocks:
        s = {"x": x}
        s["n1"] = bw.ln1(x)
        qkv = F.linear(s["n1"], bw.qkv_w, bw.qkv_b)
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, bw.heads, -1).permute(2, 0, 3, 1, 4)  # 'b n (qkv h d) -> qkv b h n d'
        s.update(q=q, k=k, v=v)
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
        attn = dots.softmax(dim=-1)
        attn.retain_grad()
        s["attn"] = attn
        out = torch.einsum("bhij,bhjd->bhid", attn, v)
        s["mixed"] = out.transpose(1, 2).reshape(b, n, -1)
        s["attn_out"] = F.linear(s["mixed"], bw.proj_w, bw.proj_b)
        s["xm"] = x + s["attn_out"]
        s["n2"] = bw.ln2(s["xm"])
        s["h"] = bw.act(F.linear(s["n2"], bw.fc1_w, bw.fc1_b))
        s["mlp"] = F.linear(s["h"], bw.fc2_w, bw.fc2_b)
        x = s["xm"] + s["mlp"]
        saved.append(s)
    normed = weights.norm(x)
    pooled = normed[:, cls]
    logits = F.linear(pooled, weights.head_w, weights.head_b)
    return logits, saved, normed


def lrp_attention_cams(weights: ViTWeights, saved: list, normed: torch.Tensor, one_hot: torch.Tensor, cls: int = 0):
    """``ViT_LRP.VisionTransformer.relprop`` down every block: each attention's ``attn_cam``."""
    pooled = normed[:, cls:cls + 1].detach().requires_grad_(True)  # IndexSelect's output, (1, 1, D)
    cam = linear_relprop(pooled[:, 0], weights.head_w, one_hot).unsqueeze(1)
    full = normed.detach().requires_grad_(True)
    z = torch.index_select(full, 1, torch.tensor([cls]))
    cam = full * gradprop(z, full, safe_divide(cam, z))[0]  # IndexSelect.relprop; the norm passes it on
    cams = [None] * len(saved)
    for i in range(len(saved) - 1, -1, -1):
        bw, s = weights.blocks[i], saved[i]
        cam1, cam2 = add_relprop([s["xm"], s["mlp"]], cam)
        cam2 = linear_relprop(s["n2"], bw.fc1_w, linear_relprop(s["h"], bw.fc2_w, cam2))
        cam = clone_relprop(s["xm"], [cam1, cam2])
        cam1, cam2 = add_relprop([s["x"], s["attn_out"]], cam)
        c = linear_relprop(s["mixed"], bw.proj_w, cam2)
        b, n, _ = c.shape
        c = c.reshape(b, n, bw.heads, -1).transpose(1, 2)
        cam_a, cam_v = einsum_relprop("bhij,bhjd->bhid", [s["attn"], s["v"]], c)
        cam_a, cam_v = cam_a / 2, cam_v / 2
        cams[i] = cam_a
        cam_q, cam_k = einsum_relprop("bhid,bhjd->bhij", [s["q"], s["k"]], cam_a)
        cam_q, cam_k = cam_q / 2, cam_k / 2
        cam_qkv = torch.stack([cam_q, cam_k, cam_v]).permute(1, 3, 0, 2, 4).reshape(b, n, -1)  # 'qkv b h n d -> b n (qkv h d)'
        cam2 = linear_relprop(s["n1"], bw.qkv_w, cam_qkv)
        cam = clone_relprop(s["x"], [cam1, cam2])
    return cams


# --- the methods, batch 1 ------------------------------------------------------------------------------------------

def compute_rollout_attention(matrices, start_layer=0, normalize=True):
    """ViT_explanation_generator's (rows normalized) and ViT_LRP's (``normalize=False``) rollout: full N×N products."""
    eye = torch.eye(matrices[0].shape[1], dtype=matrices[0].dtype).expand_as(matrices[0])
    matrices = [m + eye for m in matrices]
    if normalize:
        matrices = [m / m.sum(dim=-1, keepdim=True) for m in matrices]
    joint = matrices[start_layer]
    for i in range(start_layer + 1, len(matrices)):
        joint = matrices[i].bmm(joint)
    return joint


def last_layer_attn(attns):
    cam = attns[-1][0].mean(dim=0)
    return cam[0, 1:]


def generate_rollout(attns, start_layer=0):
    avg = [a.sum(dim=1) / a.shape[1] for a in attns]
    return compute_rollout_attention(avg, start_layer)[:, 0, 1:][0]


def generate_relevance(attns, grads):
    """Transformer-MM-Explainability: R = I; R += avg_heads(cam, grad) @ R per block."""
    n = attns[0].shape[-1]
    r = torch.eye(n, dtype=attns[0].dtype)
    for cam, grad in zip(attns, grads):
        cam = cam.reshape(-1, n, n)
        grad = grad.reshape(-1, n, n)
        cam = (grad * cam).clamp(min=0).mean(dim=0)
        r = r + torch.matmul(cam, r)
    return r[0, 1:]


def grad_rollout(attns, grads, discard_ratio):
    """vit-explain's grad_rollout, each map with its own layer's gradient and rows (not columns) normalized."""
    result = torch.eye(attns[0].size(-1), dtype=attns[0].dtype)
    for attention, grad in zip(attns, grads):
        fused = (attention * grad).mean(axis=1)
        fused[fused < 0] = 0
        flat = fused.view(fused.size(0), -1)
        _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
        flat[0, indices] = 0
        eye = torch.eye(fused.size(-1), dtype=fused.dtype)
        a = (fused + 1.0 * eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = torch.matmul(a, result)
    return result[0, 0, 1:]


def generate_cam_attn(attns, grads):
    cam = attns[-1][0, :, 0, 1:]
    grad = grads[-1][0, :, 0, 1:].mean(dim=1, keepdim=True)
    return (cam * grad).mean(0).clamp(min=0)


def transformer_attribution(cams, grads, start_layer=0):
    fused = []
    for cam, grad in zip(cams, grads):
        n = cam.shape[-1]
        c = (grad[0].reshape(-1, n, n) * cam[0].reshape(-1, n, n)).clamp(min=0).mean(dim=0)
        fused.append(c.unsqueeze(0))
    return compute_rollout_attention(fused, start_layer, normalize=False)[:, 0, 1:][0]


def all_methods(model, x: torch.Tensor, target: int, start_layer: int, discard_ratio: float) -> dict:
    """Every method's map for one image ``x`` (1, 3, H, W) and one class (``-1``: top-1), the originals' way."""
    weights = weights_of(model)
    tokens = first_block_input(model, weights, x)
    logits, saved, normed = reference_forward(weights, tokens)
    index = int(logits.argmax()) if target < 0 else target
    one_hot = torch.zeros_like(logits)
    one_hot[0, index] = 1
    model.zero_grad()
    (one_hot * logits).sum().backward(retain_graph=True)
    attns = [s["attn"].detach() for s in saved]
    grads = [s["attn"].grad for s in saved]
    cams = lrp_attention_cams(weights, saved, normed, one_hot)
    return {
        "logits": logits.detach()[0],
        "attention": last_layer_attn(attns),
        "rollout": generate_rollout(attns, start_layer),
        "gae": generate_relevance(attns, grads),
        "grad-rollout": grad_rollout(attns, grads, discard_ratio),
        "attn-gradcam": generate_cam_attn(attns, grads),
        "transformer-attribution": transformer_attribution([c.detach() for c in cams], grads, start_layer),
    }
