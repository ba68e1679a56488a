"""Sibling LoRA layers that read the same input, computed as one: the training step's fused projections.

In a decoder block the query, key and value projections read the same hidden states, and so do the MLP's gate and
up projections. With PEFT's LoRA on each, a block's forward is 7 frozen products, 14 adapter products and 7 scalings
and additions; the backward as many again. Fused, each sibling group (`q_proj, k_proj, v_proj`; `gate_proj,
up_proj`) is one frozen product with the concatenated weight, one product with the concatenated A matrices, and per
member one `addmm` that adds its B product, scaled, to its slice: the input is read once instead of three times, the
key/value products are no longer skinny, and the scaling and the addition go into the product. The same arithmetic
(the sums of the same products, up to the blocking of the matrix product), the same parameters: the adapters stay
PEFT's, so their gradients, the optimiser and what is saved are unchanged (tests compare losses and gradients with
the unfused step).

`fused_siblings(model)` sets this up for the duration of a `with` block and undoes it: the frozen weights of a group
become views into one concatenated tensor (no extra memory) and are separate tensors again afterwards. A group is
fused only where every member is a plain PEFT LoRA `Linear` (one active adapter, no dropout, DoRA or LoRA bias, not
merged) on an `nn.Linear` with the same input size; anything else runs PEFT's forward unchanged, and so does a call
whose input is not the tensor the group's first member was called with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _Group:
    """One sibling group: the concatenated frozen weight (and bias), and the outputs of its last fused call."""

    def __init__(self, members: list[nn.Module]) -> None:
        self.members = members
        self.adapter = members[0].active_adapters[0]
        bases = [m.base_layer for m in members]
        self.sizes = [b.out_features for b in bases]
        self.weight = torch.cat([b.weight.detach() for b in bases])
        for b, w in zip(bases, self.weight.split(self.sizes), strict=True):
            b.weight.data = w  # a view into the concatenated weight: no second copy
        with_bias = [b.bias is not None for b in bases]
        self.bias = None
        if any(with_bias):
            self.bias = torch.cat(
                [b.bias.detach() if b.bias is not None else b.weight.new_zeros(n) for b, n in zip(bases, self.sizes)]
            )
        self.ranks = [m.lora_A[self.adapter].weight.shape[0] for m in members]
        self.scalings = [float(m.scaling[self.adapter]) for m in members]
        self.input: torch.Tensor | None = None
        self.outputs: list[torch.Tensor | None] = []

    def release(self) -> None:
        """The frozen weights as separate tensors again."""
        for b in (m.base_layer for m in self.members):
            b.weight.data = b.weight.data.clone()
        self.weight = self.bias = self.input = None
        self.outputs = []

    def compute(self, x: torch.Tensor) -> None:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        y = nn.functional.linear(x2, self.weight, self.bias)
        a = torch.cat([m.lora_A[self.adapter].weight for m in self.members])
        h = nn.functional.linear(x2, a)
        # split, not slices: the backward joins the members' gradients in one copy, not one zero-filled copy each
        parts = zip(self.members, y.split(self.sizes, 1), h.split(self.ranks, 1), self.scalings, strict=True)
        outputs = [
            torch.addmm(yi, hi, m.lora_B[self.adapter].weight.t(), alpha=s).view(*shape, yi.shape[1])
            for m, yi, hi, s in parts
        ]
        self.input, self.outputs = x, outputs


def _plain_lora(m: nn.Module) -> bool:
    """A PEFT LoRA Linear whose forward is exactly base(x) + B(A(x)) * scaling."""
    try:
        from peft.tuners.lora import Linear
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    if type(m) is not Linear or m.merged or m.disable_adapters or len(m.active_adapters) != 1:
        return False
    name = m.active_adapters[0]
    return (
        isinstance(m.base_layer, nn.Linear)
        and name in m.lora_A
        and isinstance(m.lora_dropout[name], nn.Identity)
        and name not in getattr(m, "lora_variant", {})
        and not getattr(m, "use_dora", {}).get(name, False)
        and m.lora_B[name].bias is None
        and not getattr(m, "lora_bias", {}).get(name, False)
    )


def _member_forward(group: _Group, i: int, plain):  # noqa: ANN001, ANN202
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        if args or kwargs:
            return plain(x, *args, **kwargs)
        if not (group.input is x and group.outputs[i] is not None):
            group.compute(x)
        out = group.outputs[i]
        group.outputs[i] = None  # each output once; the next call recomputes
        return out

    return forward


@contextlib.contextmanager
def fused_siblings(model: nn.Module) -> Iterator[int]:
    """Within the block, sibling LoRA projections run fused (module docstring); yields how many groups were fused."""
    groups: list[_Group] = []
    try:
        for parent in model.modules():
            for names in GROUPS:
                members = [getattr(parent, n, None) for n in names]
                if not all(m is not None and _plain_lora(m) for m in members):
                    continue
                adapters = {m.active_adapters[0] for m in members}
                inputs = {m.base_layer.in_features for m in members}
                dtypes = {m.base_layer.weight.dtype for m in members}
                if len(adapters) != 1 or len(inputs) != 1 or len(dtypes) != 1:
                    continue
                group = _Group(members)
                groups.append(group)
                for i, m in enumerate(members):
                    m.forward = _member_forward(group, i, type(m).forward.__get__(m))
        yield len(groups)
    finally:
        for group in groups:
            for m in group.members:
                m.__dict__.pop("forward", None)
            group.release()
