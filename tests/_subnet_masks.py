"""Which entries of each super-parameter a subnet uses, worked out from the arch alone."""

import torch


def used_mask(name, shape, arch, space):
    """Boolean mask of the entries of super-parameter ``name`` (of ``shape``) that subnet ``arch`` uses."""
    e, used = arch.embed_dim, torch.zeros(shape, dtype=torch.bool)
    if not name.startswith("blocks."):
        top = {"patch_weight": (slice(0, e),), "head_weight": (slice(None), slice(0, e)), "head_bias": (slice(None),)}
        used[top.get(name, (..., slice(0, e)))] = True
        return used
    _, i, pname = name.split(".")
    inner, m = arch.num_heads[int(i)] * space.head_dim, arch.mlp_hidden(int(i))
    if pname.startswith("qkv"):
        inner_max = space.max_heads * space.head_dim
        for g in range(3):
            used[(slice(g * inner_max, g * inner_max + inner),) + (slice(0, e),) * (len(shape) - 1)] = True
        return used
    block = {
        "proj_weight": (slice(0, e), slice(0, inner)),
        "fc1_weight": (slice(0, m), slice(0, e)),
        "fc1_bias": (slice(0, m),),
        "fc2_weight": (slice(0, e), slice(0, m)),
    }
    used[block.get(pname, (slice(0, e),))] = True
    return used
