"""Search spaces of ViT subnets: what a subnet is (`Arch`) and what it costs.

A subnet of the weight-sharing supernet is an :class:`Arch`: a global embedding
width and depth, and per block a number of attention heads and an MLP ratio
(docs/method.md). A :class:`SearchSpace` lists the allowed values, samples and
validates archs, and counts their FLOPs and parameters analytically.

FLOPs convention (the papers'): multiply-accumulates (MACs) of every linear and
conv layer plus the two attention matmuls (``2 * N^2 * h * head_dim`` per block),
reported as "FLOPs". LayerNorm, softmax, GELU, additions and the position
embedding are not counted. An independent counter that counts 2 per MAC (such as
``torch.utils.flop_counter``) reports exactly twice this number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


@dataclass(frozen=True)
class Arch:
    """One subnet.

    Attributes:
        embed_dim: token width ``e`` shared by all blocks.
        depth: number of blocks ``d`` used (the first ``d`` of the supernet).
        num_heads: heads per block, length ``depth``.
        mlp_ratio: MLP hidden ratio per block, length ``depth``; hidden width is
            ``int(embed_dim * mlp_ratio[i])``.
    """

    embed_dim: int
    depth: int
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth"):
            v = _plain(getattr(self, name))
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"Arch.{name}={v!r} must be an int")
            object.__setattr__(self, name, v)
        heads = tuple(_plain(h) for h in self.num_heads)
        ratios = tuple(float(_plain(r)) for r in self.mlp_ratio)
        if any(isinstance(h, bool) or not isinstance(h, int) for h in heads):
            raise TypeError(f"Arch.num_heads={heads!r} must be a sequence of ints")
        object.__setattr__(self, "num_heads", heads)
        object.__setattr__(self, "mlp_ratio", ratios)
        for name, seq in (("num_heads", heads), ("mlp_ratio", ratios)):
            if len(seq) != self.depth:
                raise ValueError(
                    f"Arch.{name} has {len(seq)} entries; it must have depth={self.depth}"
                )

    def mlp_hidden(self, block: int) -> int:
        """Hidden width of block ``block``'s MLP."""
        return int(self.embed_dim * self.mlp_ratio[block])

    def to_dict(self) -> dict[str, Any]:
        return {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": list(self.num_heads),
            "mlp_ratio": list(self.mlp_ratio),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Arch":
        fields = {"embed_dim", "depth", "num_heads", "mlp_ratio"}
        if not isinstance(d, dict) or set(d) != fields:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"Arch dict must have exactly the keys {sorted(fields)}, got {got}")
        return cls(d["embed_dim"], d["depth"], tuple(d["num_heads"]), tuple(d["mlp_ratio"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> "Arch":
        return cls.from_dict(json.loads(s))

    def __str__(self) -> str:
        heads = ",".join(map(str, self.num_heads))
        ratios = ",".join(f"{r:g}" for r in self.mlp_ratio)
        return f"e{self.embed_dim}-d{self.depth}-h[{heads}]-r[{ratios}]"


@dataclass(frozen=True)
class SearchSpace:
    """The allowed values of every decision, and the fixed shape of the ViT.

    Attributes:
        name: preset name or a user label.
        embed_dims, mlp_ratios, num_heads, depths: allowed values, ascending.
        image_size, patch_size: input side and patch side in pixels.
        in_chans: input channels.
        num_classes: classifier outputs (counted in FLOPs/params).
        head_dim: channels per attention head.
    """

    name: str
    embed_dims: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    num_heads: tuple[int, ...]
    depths: tuple[int, ...]
    image_size: int
    patch_size: int
    in_chans: int = 3
    num_classes: int = 1000
    head_dim: int = 64

    def __post_init__(self) -> None:
        for name in ("embed_dims", "mlp_ratios", "num_heads", "depths"):
            vals = tuple(sorted(getattr(self, name)))
            if not vals or len(set(vals)) != len(vals) or any(v <= 0 for v in vals):
                raise ValueError(
                    f"SearchSpace.{name}={getattr(self, name)!r} must be distinct positive values"
                )
            object.__setattr__(self, name, vals)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"SearchSpace.image_size={self.image_size} must be a multiple of "
                f"patch_size={self.patch_size}"
            )

    # -- presets -----------------------------------------------------------------
    @staticmethod
    def preset_names() -> tuple[str, ...]:
        return tuple(_PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SearchSpace":
        """A named preset (docs/method.md), optionally with fields replaced (e.g. ``num_classes``)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown search space {name!r}; presets: {', '.join(_PRESETS)}")
        return dataclasses.replace(_PRESETS[name], **overrides)

    # -- geometry ----------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Patches plus the CLS token."""
        return self.num_patches + 1

    @property
    def max_embed(self) -> int:
        return self.embed_dims[-1]

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def max_heads(self) -> int:
        return self.num_heads[-1]

    @property
    def max_mlp_hidden(self) -> int:
        return max(int(e * r) for e in self.embed_dims for r in self.mlp_ratios)

    # -- archs -------------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` if every field is allowed here, else raise ``ValueError`` naming it."""
        if not isinstance(arch, Arch):
            raise TypeError(f"expected an Arch, got {type(arch).__name__}")
        checks = (("embed_dim", [arch.embed_dim], self.embed_dims), ("depth", [arch.depth], self.depths))
        checks += (("num_heads", arch.num_heads, self.num_heads), ("mlp_ratio", arch.mlp_ratio, self.mlp_ratios))
        for field, values, allowed in checks:
            for i, v in enumerate(values):
                if not any(math.isclose(v, a) for a in allowed):
                    where = f"[{i}]" if field in ("num_heads", "mlp_ratio") else ""
                    raise ValueError(
                        f"Arch.{field}{where}={v!r} is not in space {self.name!r}; "
                        f"allowed: {list(allowed)}"
                    )
        return arch

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random arch: depth and width first, then each block's choices."""
        depth = rng.choice(self.depths)
        embed = rng.choice(self.embed_dims)
        ratios = tuple(rng.choice(self.mlp_ratios) for _ in range(depth))
        heads = tuple(rng.choice(self.num_heads) for _ in range(depth))
        return Arch(embed, depth, heads, ratios)

    def _uniform(self, pick: Callable[[tuple], Any]) -> Arch:
        d = pick(self.depths)
        return Arch(pick(self.embed_dims), d, (pick(self.num_heads),) * d, (pick(self.mlp_ratios),) * d)

    def smallest(self) -> Arch:
        """The arch taking the smallest value of every decision."""
        return self._uniform(lambda v: v[0])

    def largest(self) -> Arch:
        """The arch taking the largest value of every decision."""
        return self._uniform(lambda v: v[-1])

    def middle(self) -> Arch:
        """The arch taking the middle value of every decision."""
        return self._uniform(lambda v: v[len(v) // 2])

    # -- costs -------------------------------------------------------------------
    def block_macs(self, embed_dim: int, num_heads: int, mlp_hidden: int) -> int:
        """MACs of one block for one image: qkv, attention matmuls, projection, MLP."""
        n, inner = self.num_tokens, num_heads * self.head_dim
        qkv = n * embed_dim * 3 * inner
        attn = 2 * n * n * inner
        proj = n * inner * embed_dim
        mlp = 2 * n * embed_dim * mlp_hidden
        return qkv + attn + proj + mlp

    def flops(self, arch: Arch) -> int:
        """FLOPs (MACs, papers' convention; see module docstring) for one image."""
        self.validate(arch)
        e = arch.embed_dim
        total = self.num_patches * e * self.in_chans * self.patch_size**2
        for i in range(arch.depth):
            total += self.block_macs(e, arch.num_heads[i], arch.mlp_hidden(i))
        return total + e * self.num_classes

    def params(self, arch: Arch) -> int:
        """Exact parameter count of the subnet (= its exported model's parameter count)."""
        self.validate(arch)
        e = arch.embed_dim
        total = e * self.in_chans * self.patch_size**2 + e  # patch conv + bias
        total += e + self.num_tokens * e  # cls token + position embedding
        for i in range(arch.depth):
            inner, m = arch.num_heads[i] * self.head_dim, arch.mlp_hidden(i)
            total += 2 * e  # norm1
            total += 3 * inner * e + 3 * inner  # qkv
            total += inner * e + e  # proj
            total += 2 * e  # norm2
            total += e * m + m + m * e + e  # fc1, fc2
        total += 2 * e  # final norm
        return total + e * self.num_classes + self.num_classes

    def cost(self, arch: Arch, metric: str) -> float:
        """``flops`` or ``params`` of ``arch``."""
        if metric == "flops":
            return float(self.flops(arch))
        if metric == "params":
            return float(self.params(arch))
        raise ValueError(f"cost metric {metric!r} is not analytic; allowed: flops, params")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SearchSpace fields {sorted(unknown)}; allowed: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _autoformer(name: str, embeds: Sequence[int], ratios: Sequence[float], heads: Sequence[int],
                depths: Sequence[int], image: int = 224, patch: int = 16, classes: int = 1000) -> SearchSpace:
    return SearchSpace(name, tuple(embeds), tuple(ratios), tuple(heads), tuple(depths),
                       image_size=image, patch_size=patch, num_classes=classes)


_PRESETS: dict[str, SearchSpace] = {
    "autoformer-t": _autoformer("autoformer-t", (192, 216, 240), (3.5, 4.0), (3, 4), (12, 13, 14)),
    "autoformer-s": _autoformer("autoformer-s", (320, 384, 448), (3.0, 3.5, 4.0), (5, 6, 7), (12, 13, 14)),
    "autoformer-b": _autoformer("autoformer-b", (528, 576, 624), (3.0, 3.5, 4.0), (8, 9, 10), (14, 15, 16)),
    "cifar-t": _autoformer("cifar-t", (192, 216, 240), (3.5, 4.0), (3, 4), (12, 13, 14),
                           image=32, patch=4, classes=100),
    # Ours: 8x8 single-channel digits, 17 tokens; trains on 2 CPU cores in minutes.
    "digits": SearchSpace("digits", (32, 48, 64), (2.0, 3.0, 4.0), (2, 3, 4), (2, 3, 4),
                          image_size=8, patch_size=2, in_chans=1, num_classes=10, head_dim=16),
}


SPACE_FILE_SUFFIXES = (".yaml", ".yml", ".json")
_SPACE_FILE_LISTS = ("embed_dims", "mlp_ratios", "num_heads", "depths")
_SPACE_FILE_SIZES = ("image_size", "patch_size", "in_chans", "head_dim")


def is_space_file(spec: str) -> bool:
    """Whether ``--space`` names a space file (by its suffix) rather than a preset."""
    return str(spec).lower().endswith(SPACE_FILE_SUFFIXES)


def read_space_file(path: str) -> tuple[SearchSpace, frozenset[str]]:
    """A search space from a YAML or JSON file, and the fields the file sets.

    The file is a mapping of :class:`SearchSpace` fields: the choices ``embed_dims``, ``mlp_ratios``,
    ``num_heads``, ``depths`` (lists), ``image_size``, ``patch_size``, ``in_chans``, ``head_dim``
    (positive integers) and ``name`` (default: the file's stem); ``preset: NAME`` starts from a
    preset, whose fields the others replace. Without a preset the choices, ``image_size`` and
    ``patch_size`` are required. ``num_classes`` comes from the data, never from the file. Keys
    may use ``-`` for ``_``. Raises ``ValueError`` in one line naming the file, the field, the
    value and what is allowed::

        preset: digits        # optional
        image_size: 28
        patch_size: 4
        embed_dims: [32, 48, 64]
    """
    where = f"space file {str(path)!r}"
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise ValueError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if str(path).lower().endswith(".json"):
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{where} is not valid JSON: {' '.join(str(exc).split())}") from None
    else:
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must hold a mapping of field: value, got {type(raw).__name__}")
    given = {str(k).replace("-", "_"): v for k, v in raw.items()}
    allowed = ("preset", "name", *_SPACE_FILE_LISTS, *_SPACE_FILE_SIZES)
    if "num_classes" in given:
        raise ValueError(f"{where}: num_classes={given['num_classes']!r} comes from the data; remove it")
    for key in given:
        if key not in allowed:
            raise ValueError(f"{where}: unknown field {key!r}; allowed: {', '.join(allowed)}")
    preset = given.pop("preset", None)
    if preset is not None and preset not in _PRESETS:
        raise ValueError(f"{where}: preset={preset!r} is unknown; allowed: {', '.join(_PRESETS)}")
    if preset is None:
        for key in (*_SPACE_FILE_LISTS, "image_size", "patch_size"):
            if key not in given:
                raise ValueError(f"{where}: field {key!r} is missing (or give preset: NAME to start from one; "
                                 f"presets: {', '.join(_PRESETS)})")
    fields: dict[str, Any] = {}
    for key, value in given.items():
        if key == "name":
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: name={value!r} must be a non-empty string")
            fields[key] = value
        elif key in _SPACE_FILE_LISTS:
            fields[key] = _choices(where, key, value, number=float if key == "mlp_ratios" else int)
        else:
            fields[key] = _positive_int(where, key, value)
    base = _PRESETS[preset] if preset is not None else SearchSpace(
        "", (1,), (1.0,), (1,), (1,), image_size=fields["image_size"], patch_size=fields["patch_size"])
    merged = {**dataclasses.asdict(base), "name": fields.pop("name", None) or _stem(path), **fields}
    if merged["image_size"] % merged["patch_size"]:
        raise ValueError(f"{where}: image_size={merged['image_size']} must be a multiple of "
                         f"patch_size={merged['patch_size']}")
    return SearchSpace(**merged), frozenset(given)


def _stem(path: str) -> str:
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0]


def _positive_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: {key}={value!r} must be a positive integer")
    return value


def _choices(where: str, key: str, value: Any, number: type) -> tuple:
    kind = "positive numbers" if number is float else "positive integers"
    ok = isinstance(value, list) and value and all(
        not isinstance(v, bool) and isinstance(v, (int, float) if number is float else int) and v > 0 for v in value)
    if not ok or len(set(value)) != len(value):
        raise ValueError(f"{where}: {key}={value!r} must be a non-empty list of distinct {kind}")
    return tuple(sorted(number(v) for v in value))
