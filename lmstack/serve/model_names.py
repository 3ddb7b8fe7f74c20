"""Which model a request asks for: the base by its served name (variant 0), or a LoRA adapter
attached over it (`lmstack serve --lora NAME=DIR`: posttrain/peft/multi_lora.py) by its NAME, the
variant the scheduler runs its rows with (infer/variants.py). As vLLM does, GET /v1/models lists
the base, then each adapter with the base as its `parent`.

    >>> names = {"base": 0, "sql": 1}
    >>> variant_of(names, "sql"), variant_of(names, None)
    (1, 0)
    >>> [m.get("parent") for m in model_list(names, "base")["data"]]
    [None, 'base']

Tests: `pytest tests/serve/test_routes.py tests/serve/test_serve_lora.py lmstack/serve/model_names.py --doctest-modules`.
"""

from __future__ import annotations

from lmstack.errors import ConfigError
from lmstack.infer.variants import row_variants


class UnknownModel(LookupError):
    """A request named a model this server does not serve (the routes answer 404)."""


def served_models(model, base: str) -> dict[str, int]:
    """The model ids a client may ask for: the base's name (variant 0), then each LoRA adapter
    attached to the model by its name."""
    variants = row_variants(model)
    names = variants.names if variants is not None else ()
    if base in names:
        raise ConfigError(f"adapter name {base!r} is the base model's name too; rename the adapter "
                          "(--lora NAME=DIR) or the base (--served-model-name)")
    return {base: 0, **{name: i for i, name in enumerate(names, start=1)}}


def variant_of(served: dict[str, int], name: str | None) -> int:
    """The variant a request's `model` names; absent: the base. UnknownModel naming the served
    ones for any other name."""
    if name is None:
        return 0
    if name not in served:
        raise UnknownModel(f"the model {name!r} does not exist; this server serves "
                           f"{', '.join(map(repr, served))} (see GET /v1/models)")
    return served[name]


def model_list(served: dict[str, int], base: str) -> dict:
    """The body of GET /v1/models: the base model, then each adapter with the base as its parent."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "lmstack",
         **({"parent": base} if variant else {})} for name, variant in served.items()]}
