"""Profiles: what one worker's iteration costs, layer by layer, as a plain JSON file.

A profile is the model's only description of compute. It lists the layers
(modules that own parameters) in forward order; the backward pass meets them
in reverse, which is the order gradients become ready. Per layer:

``name``, ``type``
    the module path and class (the runner's timeline labels a layer ``name (type)``)
``tensors``
    bytes of each parameter tensor's gradient (weight, bias, ...)
``forward_s``
    from this layer's forward pre-hook to the next layer's (so the
    parameter-free layers after it, ReLU or pooling, count here)
``backward_s``
    from the previous layer's gradient being complete to this one's (the first
    layer of backward also carries the loss's backward)
``update_s``
    applying this layer's update alone (the finiteness check and
    ``optimizer.step`` over its parameters), as ``layerwise`` does per layer

and per step (``step``): ``data_s`` (fetching a batch), ``zero_grad_s``,
``loss_s`` (the loss after the last layer), ``update_all_s`` (one update of
every parameter, as ``sync``/``delayed``/``ddp`` do), ``between_s`` (the
loop's bookkeeping between two iterations, outside the runner's t_iter); and
``memory``: ``copy_s_per_byte`` (packing gradients into a flat buffer and
back) and ``scale_s_per_byte`` (dividing by the world size).
``slowdown`` maps a number of such processes running at once on the
measuring machine to how much slower each computes (measured with
``asyncsgd-profile --concurrent``); ``cores`` is that machine's core count.

Only ``layers`` with ``name``, ``forward_s``, ``backward_s`` and either
``tensors`` or ``bytes`` are required: a hand-made profile for hardware one
does not have may leave the rest out (they count as 0) and says in ``source``
and ``sources`` where every number comes from. Times are seconds, sizes bytes.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

FORMAT = "asyncsgd-profile/1"


class ProfileError(ValueError):
    """A profile that cannot be used; the message is one line naming the file and field."""


@dataclass
class Layer:
    name: str
    tensors: List[int]  # bytes of each parameter tensor's gradient, registration order
    forward_s: float
    backward_s: float
    update_s: float = 0.0
    type: str = ""

    @property
    def nbytes(self) -> int:
        return int(sum(self.tensors))

    @property
    def label(self) -> str:
        """The runner's timeline label: ``name (Type)``."""
        return f"{self.name} ({self.type})" if self.type else self.name


STEP_KEYS = ("data_s", "zero_grad_s", "loss_s", "update_all_s", "between_s")
MEMORY_KEYS = ("copy_s_per_byte", "scale_s_per_byte")


@dataclass
class Profile:
    layers: List[Layer]
    name: str = ""
    model: str = ""
    input_shape: List[int] = field(default_factory=list)
    batch_size: Optional[int] = None
    threads: Optional[int] = None
    device: str = ""
    source: str = ""
    sources: Dict[str, str] = field(default_factory=dict)  # per field: where the number comes from
    step: Dict[str, float] = field(default_factory=dict)
    memory: Dict[str, float] = field(default_factory=dict)
    slowdown: Dict[int, float] = field(default_factory=dict)  # processes at once -> compute slowdown
    cores: Optional[int] = None  # cores of the measuring machine
    measurements: Dict[str, object] = field(default_factory=dict)  # raw numbers behind the medians

    # ------------------------------------------------------------------ totals
    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def get(self, key: str) -> float:
        """A step or memory constant; 0 when the profile does not give it."""
        return float(self.step.get(key, self.memory.get(key, 0.0)) or 0.0)

    @property
    def compute_s(self) -> float:
        """One iteration of compute with no communication: what ``nocomm`` measures."""
        layers = sum(l.forward_s + l.backward_s for l in self.layers)
        return layers + self.get("data_s") + self.get("zero_grad_s") + self.get("loss_s") + self.update_all_s

    @property
    def update_all_s(self) -> float:
        return self.get("update_all_s") or sum(l.update_s for l in self.layers)

    def slowdown_at(self, processes: int, threads: int = 1) -> float:
        """How much slower each of ``processes`` workers computes on the measuring machine.

        Measured where the profile has it; else the share of the cores each gets
        (no slowdown while every thread has a core of its own).
        """
        if processes in self.slowdown:
            return float(self.slowdown[processes])
        if self.cores:
            return max(1.0, processes * threads / self.cores)
        return 1.0

    # ------------------------------------------------------------------ variants
    def scaled(self, factor: float) -> "Profile":
        """Every compute time multiplied by ``factor`` (a faster or slower device; sensitivity bands)."""
        from dataclasses import replace

        return replace(self, name=f"{self.name} x{factor:g}",
                       layers=[replace(l, forward_s=l.forward_s * factor, backward_s=l.backward_s * factor,
                                       update_s=l.update_s * factor) for l in self.layers],
                       step={k: v * factor for k, v in self.step.items()},
                       memory={k: v * factor for k, v in self.memory.items()})

    def at_batch(self, batch: int) -> "Profile":
        """The same layers at another per-worker batch, forward, backward, loss and data scaled
        linearly with the batch (an assumption: small batches use a device less well than this says);
        updates and gradient bytes do not depend on the batch."""
        from dataclasses import replace

        if not self.batch_size:
            raise ProfileError(f"profile {self.name} has no batch_size to scale from")
        k = batch / self.batch_size
        step = dict(self.step)
        for key in ("data_s", "loss_s"):
            if key in step:
                step[key] *= k
        return replace(self, name=f"{self.name} at batch {batch}", batch_size=batch, step=step,
                       layers=[replace(l, forward_s=l.forward_s * k, backward_s=l.backward_s * k) for l in self.layers])

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        d = {"format": FORMAT, **asdict(self)}
        d["slowdown"] = {str(k): v for k, v in self.slowdown.items()}
        d["layers"] = [{k: v for k, v in asdict(layer).items()} for layer in self.layers]
        return d

    def save(self, path: Path) -> None:
        from ..io import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())


def _number(value, where: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ProfileError(f"{where} must be a number >= {minimum:g}, not {value!r}")
    return float(value)


def profile_from_dict(data: dict, where: str = "profile") -> Profile:
    """Check and build a profile; every problem is one line naming ``where`` and the field."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a JSON object with a 'layers' list")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise ProfileError(f"{where}: format {fmt!r} is not {FORMAT!r}")
    known = set(Profile.__dataclass_fields__) | {"format"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ProfileError(f"{where}: 'layers' must be a non-empty list of layers in forward order")
    layers = []
    for i, raw in enumerate(raw_layers):
        at = f"{where}: layers[{i}]"
        if not isinstance(raw, dict):
            raise ProfileError(f"{at} must be an object with name, forward_s, backward_s and tensors (or bytes)")
        extra = sorted(set(raw) - {"name", "type", "tensors", "bytes", "forward_s", "backward_s", "update_s"})
        if extra:
            raise ProfileError(f"{at}: unknown key(s) {', '.join(extra)}")
        for key in ("name", "forward_s", "backward_s"):
            if key not in raw:
                raise ProfileError(f"{at} has no {key}")
        if "tensors" in raw:
            if not isinstance(raw["tensors"], list) or not raw["tensors"]:
                raise ProfileError(f"{at}.tensors must be a non-empty list of byte counts")
            tensors = [int(_number(t, f"{at}.tensors[{j}]")) for j, t in enumerate(raw["tensors"])]
        elif "bytes" in raw:
            tensors = [int(_number(raw["bytes"], f"{at}.bytes"))]
        else:
            raise ProfileError(f"{at} has neither tensors nor bytes (gradient bytes of the layer)")
        layers.append(Layer(
            name=str(raw["name"]), type=str(raw.get("type", "")), tensors=tensors,
            forward_s=_number(raw["forward_s"], f"{at}.forward_s"),
            backward_s=_number(raw["backward_s"], f"{at}.backward_s"),
            update_s=_number(raw.get("update_s", 0.0), f"{at}.update_s"),
        ))
    names = [layer.name for layer in layers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProfileError(f"{where}: layer name(s) {', '.join(dupes)} appear more than once")
    step = data.get("step", {}) or {}
    memory = data.get("memory", {}) or {}
    for section, keys, values in (("step", STEP_KEYS, step), ("memory", MEMORY_KEYS, memory)):
        if not isinstance(values, dict):
            raise ProfileError(f"{where}: {section} must be an object with keys {', '.join(keys)}")
        bad = sorted(set(values) - set(keys))
        if bad:
            raise ProfileError(f"{where}: {section} has unknown key(s) {', '.join(bad)}; known: {', '.join(keys)}")
        for key, value in values.items():
            _number(value, f"{where}: {section}.{key}")
    slowdown = {}
    for key, value in (data.get("slowdown") or {}).items():
        try:
            processes = int(key)
        except (TypeError, ValueError):
            raise ProfileError(f"{where}: slowdown keys are process counts, not {key!r}") from None
        slowdown[processes] = _number(value, f"{where}: slowdown[{key}]", minimum=0.1)
    batch = data.get("batch_size")
    if batch is not None:
        batch = int(_number(batch, f"{where}: batch_size", minimum=1))
    return Profile(
        layers=layers, name=str(data.get("name", "")), model=str(data.get("model", "")),
        input_shape=list(data.get("input_shape") or []), batch_size=batch, threads=data.get("threads"),
        device=str(data.get("device", "")), source=str(data.get("source", "")), sources=dict(data.get("sources") or {}),
        step={k: float(v) for k, v in step.items()}, memory={k: float(v) for k, v in memory.items()},
        slowdown=slowdown, cores=data.get("cores"), measurements=dict(data.get("measurements") or {}),
    )


def builtin_profiles() -> Dict[str, Path]:
    """Profiles shipped with the package (``asyncsgd/projection/profiles/*.json``), by name."""
    import importlib.resources

    folder = importlib.resources.files("asyncsgd.projection").joinpath("profiles")
    if not folder.is_dir():
        return {}
    return {p.name[:-5]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json")}


def load_profile(path_or_name) -> Profile:
    """A profile from a JSON file, or by the name of a shipped one (``cnn-b32``)."""
    path = Path(path_or_name)
    if not path.exists():
        shipped = builtin_profiles()
        if str(path_or_name) in shipped:
            path = shipped[str(path_or_name)]
        else:
            names = ", ".join(sorted(shipped)) or "none"
            raise ProfileError(f"{path_or_name}: no such profile file, and not a shipped profile ({names})")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise ProfileError(f"{path}: not valid JSON ({exc})") from None
    profile = profile_from_dict(data, str(path))
    if not profile.name:
        profile.name = path.stem
    return profile
