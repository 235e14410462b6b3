"""The model-family protocol, declared once per family, and the registry `generate` and its callers use.

A family is everything arkern needs to know to sample a kind of model (docs/design.md, "Model families"):
which sampling methods it offers here (and why the others are unavailable), the size argument of a run
(``length`` of sequences or ``shape`` of images), the shape of the uniforms a run consumes, what its
conditioning looks like, how the model packs its weights for its fused op, and the sampler itself.
:func:`arkern.sampling.generate`, the CLI, :func:`arkern.load`, :mod:`arkern.distributed` and
:mod:`arkern.bench` ask the model's family (:func:`family_of`) and never look at the model's class.

Adding a family: subclass :class:`ModelFamily` in one module and :func:`register_family` an instance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from arkern.decode.methods import METHODS

__all__ = ["ModelFamily", "METHODS", "register_family", "family_of", "families", "checkpoint_model_type",
           "checkpoint_type_name", "checkpoint_type_names"]

SIZE_ARGUMENTS = ("length", "shape")


class ModelFamily:
    """How arkern samples one family of models. Subclasses set the attributes and override the methods.

    Attributes:
        name: short name ("wavenet", "pixelcnn", ...).
        model_types: the model classes of the family (subclasses included).
        checkpoint_types: the classes that can be saved and loaded (:mod:`arkern.pretrained`), under
            their class names.
        size_argument: "length" (sequences of T steps) or "shape" (images of (H, W)): the argument
            :func:`arkern.sampling.generate` requires.
    """

    name: str = ""
    model_types: tuple[type[nn.Module], ...] = ()
    checkpoint_types: tuple[type[nn.Module], ...] = ()
    size_argument: str = "length"

    # ------------------------------------------------------------------ methods
    def method_reasons(self, model: nn.Module) -> dict[str, str]:
        """Why each unavailable method cannot sample `model` here: {method: reason}; {} when all can."""
        return {}

    def methods(self, model: nn.Module) -> tuple[str, ...]:
        """The methods that can sample `model` here, fastest first (the first is the default)."""
        unavailable = self.method_reasons(model)
        return tuple(m for m in METHODS if m not in unavailable)

    # ------------------------------------------------------------------ one run's inputs
    def check_size(self, model: nn.Module, size: object) -> int | tuple[int, int]:
        """Validate the size argument (a length >= 0, or (H, W)) -> the normalised size."""
        name = type(model).__name__
        if self.size_argument == "shape":
            if not (isinstance(size, (tuple, list)) and len(size) == 2
                    and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
                raise ValueError(f"generate: shape must be (height, width) with ints >= 1, got {size!r}")
            return int(size[0]), int(size[1])
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"generate: length must be an int >= 0, got {size!r} ({name})")
        return size

    def noise_shape(self, model: nn.Module, batch_size: int, size: int | tuple[int, int]) -> tuple[int, ...]:
        """The float64 uniforms one run of `batch_size` rows of `size` consumes (first dimension: the rows)."""
        raise TypeError(f"{type(self).__name__} must define noise_shape")

    def prepare_condition(self, model: nn.Module, condition: object, batch_size: int) -> object:
        """The conditioning as given to ``generate`` -> what :meth:`sample` takes (validated)."""
        if condition is not None:
            raise ValueError(f"generate: {type(model).__name__} is unconditional: condition must be None")
        return None

    def num_labels(self, model: nn.Module) -> int | None:
        """How many class labels the model is conditioned on (None: not class-conditional)."""
        return None

    # ------------------------------------------------------------------ weights and sampler
    def pack(self, model: nn.Module, **options: object) -> object:
        """The model's weights packed for its fused op (cached per model and weights version)."""
        raise TypeError(f"the {self.name} family has no fused op to pack for")

    def fused_weight_dtypes(self, model: nn.Module) -> tuple[torch.dtype, ...]:
        """The dtypes :meth:`pack` can store the model's weights in for its fused op (empty: no fused op)."""
        return ()

    def sample(self, model: nn.Module, noise: torch.Tensor, *, size: int | tuple[int, int], method: str,
               temperature: float, top_k: int | None, top_p: float | None, condition: object,
               callback: Callable | None, progress: Callable[[int], None] | None, **options: object) -> object:
        """Draw the samples of one run from `noise` (validated arguments; condition from
        :meth:`prepare_condition`). `progress(n)` is called with the number of steps (sequences) or rows
        (images) done."""
        raise TypeError(f"{type(self).__name__} must define sample")

    def check_items(self, model: nn.Module, x: torch.Tensor, levels: int | None, what: str, name: str) -> None:
        """Raise ValueError naming both sides unless the int items `x` (first dimension: the items) fit the
        model; `levels` is the data's number of levels if known, `what` / `name` name the data and the model."""
        raise TypeError(f"evaluate: the {self.name} family cannot evaluate data")

    def log_prob(self, model: nn.Module, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """log p(item) in nats of each checked item of `x` (teacher-forced, no sampling) -> (N,)."""
        raise TypeError(f"evaluate: the {self.name} family has no likelihood")

    def constructor_kwargs(self, model: nn.Module) -> dict | None:
        """The constructor arguments that rebuild `model`, if the model knows them (else None)."""
        return None


_registry: list[ModelFamily] = []


def register_family(family: ModelFamily) -> None:
    """Make `generate` (and the CLI, load, distributed, bench) sample the family's model types; a family
    registered later wins for the same class."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family: expected a ModelFamily, got {type(family).__name__}")
    if family.size_argument not in SIZE_ARGUMENTS:
        raise ValueError(f"register_family: size_argument must be one of {SIZE_ARGUMENTS}, "
                         f"got {family.size_argument!r}")
    _registry.insert(0, family)


def families() -> tuple[ModelFamily, ...]:
    """Every registered family, the latest registered first."""
    return tuple(_registry)


def family_of(model: object) -> ModelFamily:
    """The family of `model`: the one declaring the nearest class of its type's MRO."""
    for cls in type(model).__mro__:
        for family in _registry:
            if cls in family.model_types:
                return family
    raise TypeError(f"generate: no model family for {type(model).__name__}; register one with "
                    f"arkern.families.register_family")


def checkpoint_model_type(name: str) -> type[nn.Module] | None:
    """The model class a checkpoint's model type names (None when no family declares it)."""
    for family in _registry:
        for cls in family.checkpoint_types:
            if cls.__name__ == name:
                return cls
    return None


def checkpoint_type_names() -> tuple[str, ...]:
    """Every model type a checkpoint may name, sorted."""
    return tuple(sorted({cls.__name__ for family in _registry for cls in family.checkpoint_types}))


def checkpoint_type_name(model: nn.Module) -> str | None:
    """The checkpoint model type of `model`: its class name if a family declares exactly its class."""
    for family in _registry:
        if type(model) in family.checkpoint_types:
            return type(model).__name__
    return None
