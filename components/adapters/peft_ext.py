"""What medtune needs to add its own adapter methods to peft 0.21 the way peft adds its own.

peft's own tuners end their ``__init__.py`` with one ``register_peft_method(...)`` line; medtune's do the same
through :func:`register_method`, which first makes sure peft's ``PeftType`` enum has a member for the new method
(see :func:`ensure_peft_type` for why and how). :func:`lm_linear_targets` is the default target set shared by
all methods: every ``nn.Linear`` of the language model except its output head (METHODS.md §1, "Targets").

Nothing here runs at import; the tuner packages call it when they are imported.
"""

from __future__ import annotations

import threading
from typing import Any

from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.peft_types import PeftType, register_peft_method
from torch import nn

_LOCK = threading.Lock()


def ensure_peft_type(name: str) -> PeftType:
    """The ``PeftType`` member for method ``name`` (lower case), added to the enum if peft does not have it.

    Why: peft 0.21 keys every registry (config class, tuner class, state-dict prefix) by ``PeftType`` and
    ``register_peft_method`` refuses a name whose upper-cased form is not a member; adapter_config.json stores the
    member's value (``"HLORA"``) and ``PeftConfig.from_pretrained`` looks it up in those registries, so a member
    is the only way a custom method saves and loads through peft's own ``save_pretrained``/``from_pretrained``.

    How: Python enums are closed after class creation and have no public API to extend them, so the member is
    built the way ``enum`` itself builds one (``str.__new__`` for a ``str`` mixin, then ``_name_``/``_value_``)
    and entered in the three tables the enum machinery reads: ``_member_map_`` (``PeftType["X"]``, iteration via
    ``_member_names_``), ``_value2member_map_`` (``PeftType("X")``) and the class attribute (``PeftType.X``,
    set with ``type.__setattr__`` because ``EnumType.__setattr__`` forbids it). Idempotent (a second call
    returns the same member) and guarded by a lock; if a later peft adds the member itself, it is used as is.
    """
    if not name or name != name.lower() or name.endswith("_"):
        raise ValueError(f"peft method names are lower case without a trailing '_', got {name!r}")
    key = name.upper()
    with _LOCK:
        existing = PeftType.__members__.get(key)
        if existing is not None:
            return existing
        member = str.__new__(PeftType, key)
        member._name_ = key
        member._value_ = key
        member.__objclass__ = PeftType  # type: ignore[attr-defined]  # as enum sets it on every member
        member._sort_order_ = len(PeftType._member_names_)  # type: ignore[attr-defined]
        type.__setattr__(PeftType, key, member)
        PeftType._member_map_[key] = member
        PeftType._value2member_map_[key] = member
        PeftType._member_names_.append(key)
        return member


def register_method(
    *, name: str, config_cls: type[PeftConfig], model_cls: type[BaseTuner], prefix: str | None = None
) -> PeftType:
    """Register a medtune tuner with peft (``get_peft_model``, ``save_pretrained``, ``PeftModel.from_pretrained``).

    Idempotent: registering the same classes again (a second import, or ``importlib.reload`` of the tuner
    package, which makes new class objects with the same qualified names) replaces the entries instead of
    raising peft's "already a PEFT method" ``KeyError``; a *different* method under the same name still raises.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    peft_type = ensure_peft_type(name)
    prefix = prefix or f"{name}_"
    with _LOCK:
        known = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
        if known is not None:
            if _qualname(known) != _qualname(model_cls):
                raise KeyError(f"peft method {name!r} is already registered to {_qualname(known)}")
            PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
            PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
            PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix
            return peft_type
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    return peft_type


class LmTuner(BaseTuner):
    """What medtune's tuners (hlora, flix, elalora) share on top of peft's ``BaseTuner``: default targets taken from
    the model itself (:func:`lm_linear_targets`, resolved when the adapter is injected and stored as explicit names
    in the saved config), not from a per-architecture table; and putting a method's ``Linear`` wrapper in place.
    A subclass sets ``method_name`` (for messages) and implements ``_create_and_replace`` by building the layer
    kwargs for one module, then calling :meth:`_wrap_linear`."""

    method_name: str = "this method"
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict[str, Any]) -> PeftConfig:
        return peft_config  # the default targets need the model, not only its config: resolved in _prepare_model

    def _prepare_model(self, peft_config: PeftConfig, model: nn.Module) -> None:
        if getattr(peft_config, "target_modules", None) is None:
            peft_config.target_modules = set(lm_linear_targets(model))  # type: ignore[attr-defined]

    def _wrap_linear(
        self,
        linear_cls: type[nn.Module],
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        kwargs: dict[str, Any],
    ) -> None:
        """Add ``adapter_name`` to ``target``: to its wrapper when it is already one of ``linear_cls``, else wrap the
        ``nn.Linear`` in a new ``linear_cls``. An added adapter is not trainable until activated (peft's convention)."""
        if isinstance(target, linear_cls):
            target.update_layer(adapter_name, **kwargs)  # type: ignore[operator]
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{self.method_name} adapts nn.Linear only; {current_key} is {type(base).__name__}")
        new_module = linear_cls(target, adapter_name, **kwargs)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def lm_linear_targets(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` in ``model``'s language model, output head excluded (METHODS.md §1).

    The language model is ``model.get_decoder()`` where transformers provides it (``LlamaForCausalLM`` -> its
    ``LlamaModel``; ``LlavaForConditionalGeneration`` -> its ``language_model``, so the vision tower and the
    projectors are *not* targeted), else a ``language_model`` attribute, else the whole model. The output
    embeddings (``get_output_embeddings()``, i.e. ``lm_head``) are dropped even when they sit inside it.
    Names are full paths from ``model``, so they match exactly in peft's ``target_modules``; a layer another
    adapter already wraps is named by its wrapper, as peft expects when a second adapter is added.
    """
    decoder: nn.Module = model
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            found = get_decoder()
        except (AttributeError, NotImplementedError, ValueError):
            found = None
        if isinstance(found, nn.Module):
            decoder = found
    elif isinstance(getattr(model, "language_model", None), nn.Module):
        decoder = model.language_model  # type: ignore[assignment]
    head = None
    get_head = getattr(model, "get_output_embeddings", None)
    if callable(get_head):
        head = get_head()
    inside = {id(m) for m in decoder.modules()}
    names: list[str] = []
    wrapped: list[str] = []  # tuner layers already in the model (a second adapter): target the wrapper, not its insides
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrapped) or id(module) not in inside:
            continue
        if isinstance(module, BaseTunerLayer):
            wrapped.append(name)
            module = module.get_base_layer()
        if isinstance(module, nn.Linear) and module is not head:
            names.append(name)
    if not names:
        raise ValueError(f"no nn.Linear found in the language model of {type(model).__name__}; pass target_modules")
    return names
