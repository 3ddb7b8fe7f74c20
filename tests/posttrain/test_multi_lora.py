"""Several LoRA adapters over one base (lmstack/posttrain/peft/multi_lora.py): rows of one batch
run different adapters, and each row gets what the merged model (merge_lora) gives alone —
logits to float tolerance, greedy tokens exactly — through the model, the scheduler's mixed
batches and the prefix cache (keyed by adapter: sharing KV across adapters is the negative
control). Adapters of different ranks and targets, with random nonzero B so they matter."""

from __future__ import annotations

import copy

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.infer import prefix_cache as PC
from lmstack.infer.fuse import prepare_decode
from lmstack.infer.prefix_cache import PrefixCache
from lmstack.infer.variants import running, variant_id
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.peft import LoraConfig, apply_lora, load_adapter, save_adapter, unload_lora
from lmstack.posttrain.peft.multi_lora import MultiLoraLinear, attach_adapters, merge_adapter
from lmstack.serve.scheduler import Scheduler
from tests.posttrain.test_lora import LLAMA, V, randomize_b

torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared 2-core machine

ADAPTERS = {  # different ranks, scales and target layers
    "a": LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")),
    "b": LoraConfig(r=8, alpha=32, target_modules=("q_proj", "k_proj", "o_proj", "gate_proj", "down_proj")),
}


def base_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**LLAMA, **kw})).eval()


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory) -> dict[str, str]:
    root, base = tmp_path_factory.mktemp("multi-lora"), base_model()
    dirs = {}
    for i, (name, cfg) in enumerate(ADAPTERS.items()):
        model = apply_lora(copy.deepcopy(base), cfg)
        randomize_b(model, seed=10 + i)
        dirs[name] = str(save_adapter(model, root / name))
    return dirs


def merged(directory: str | None) -> GPT:
    """The base with one adapter merged (or the base), prepared for decoding as Engine.load does."""
    model = base_model()
    if directory is not None:
        model = unload_lora(load_adapter(model, directory))
    return prepare_decode(model)


@pytest.fixture(scope="module")
def multi(adapter_dirs) -> GPT:
    return prepare_decode(attach_adapters(base_model(), adapter_dirs))


def refs(adapter_dirs) -> list[GPT]:
    return [merged(None), merged(adapter_dirs["a"]), merged(adapter_dirs["b"])]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_mixed_rows_equal_each_merged_model(adapter_dirs, fuse):
    multi = prepare_decode(attach_adapters(base_model(), adapter_dirs), fuse=fuse)
    models = refs(adapter_dirs)
    x = torch.randint(0, V, (6, 10), generator=torch.Generator().manual_seed(3))
    rows = [0, 1, 2, 2, 0, 1]
    with torch.no_grad(), running(multi, rows):
        out = multi(x)                                                        # (6, 10, V)
    with torch.no_grad():
        for i, v in enumerate(rows):
            torch.testing.assert_close(out[i], models[v](x[i:i + 1])[0], atol=1e-5, rtol=1e-5)
        # The adapters matter (negative control): the base's logits are far from each adapter's.
        for v in (1, 2):
            assert (models[v](x) - models[0](x)).abs().max() > 1e-2
        assert multi(x).sub(models[0](x)).abs().max() < 1e-5   # outside `running`: the base
        with running(multi, [1] * 6):                          # rows that agree: plain matmuls
            torch.testing.assert_close(multi(x), models[1](x), atol=1e-5, rtol=1e-5)


def test_layers_hold_each_adapter_padded_and_fuse(multi, adapter_dirs):
    attn, mlp = (lambda b: (b.attn, b.mlp))(attach_adapters(base_model(), adapter_dirs).layers[0])
    q = attn.q_proj
    assert isinstance(q, MultiLoraLinear) and tuple(q.lora_A.shape) == (3, 8, LLAMA["n_embd"])
    assert not q.lora_A[0].any() and not q.lora_A[1, 4:].any()   # the base; a's rank 4 padded to 8
    assert q.adapted == {1, 2} and attn.v_proj.adapted == {1} and attn.k_proj.adapted == {2}
    # up_proj: no adapter targets it, but it fuses with gate_proj: a rank-0 update
    assert mlp.up_proj.lora_A.shape[1] == 0 and not mlp.up_proj.adapted
    # decoding fuses them: the ranks side by side, B block-diagonal
    qkv, gate_up = multi.layers[0].attn.qkv_proj, multi.layers[0].mlp.gate_up_proj
    assert isinstance(qkv, MultiLoraLinear) and tuple(qkv.lora_A.shape[:2]) == (3, 8 + 8 + 4)
    assert not qkv.lora_B[:, :q.out_features, 8:].any()          # q's outputs read q's ranks only
    assert isinstance(gate_up, MultiLoraLinear) and tuple(gate_up.lora_A.shape[:2]) == (3, 8)
    assert variant_id(multi, "b") == 2 and multi.row_variants.names == ("a", "b")


def run_batch(engine: Engine, jobs: list[tuple[list[int], int]], settings: dict, speculative=None) -> list:
    """Submit one (prompt, variant) per step into a running batch; each job's events."""
    scheduler = Scheduler(engine, max_batch=4, speculative=speculative)
    events: dict = {}
    requests = []
    with torch.inference_mode():
        for i, (prompt, variant) in enumerate(jobs):
            requests.append(scheduler.submit(prompt, engine.config(**settings),
                                             lambda e, i=i: events.setdefault(i, []).append(e),
                                             variant=variant))
            scheduler.step()
        while any(not r.done.is_set() for r in requests):
            scheduler.step()
    return [events[i] for i in range(len(jobs))]


PROMPTS = [[5, 9, 2, 33, 7, 1, 8, 40, 12, 3], [7, 7, 1], [5, 9, 2, 33, 7, 1, 8, 40, 12, 3, 60, 61]]
JOBS = [(PROMPTS[0], 0), (PROMPTS[0], 1), (PROMPTS[1], 2), (PROMPTS[0], 2), (PROMPTS[2], 1),
        (PROMPTS[2], 0), (PROMPTS[1], 1)]
SETTINGS = dict(temperature=0, max_new_tokens=8, ignore_eos=True, logprobs=True)


def check_against_merged(events: list, adapter_dirs) -> None:
    models = refs(adapter_dirs)
    for (prompt, variant), evs in zip(JOBS, events):
        alone = Engine(models[variant]).generate(prompt, **SETTINGS)
        assert sum((e.tokens for e in evs), []) == alone.tokens, (prompt, variant)
        torch.testing.assert_close(torch.tensor(sum((e.logprobs for e in evs), [])),
                                   torch.tensor(alone.logprobs), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("how", ["plain", "prefix-cache", "speculative"])
def test_scheduler_mixed_batch_equals_merged_models(multi, adapter_dirs, how):
    engine = Engine(multi, prefix_cache=PrefixCache(block_size=4) if how == "prefix-cache" else None)
    # prompt lookup drafts several tokens a row: forward passes of (B, T > 1) mixed rows
    spec = engine.speculative(prompt_lookup=1, gamma=3) if how == "speculative" else None
    events = run_batch(engine, JOBS, SETTINGS, spec)
    check_against_merged(events, adapter_dirs)
    if how == "prefix-cache":
        assert engine.prefix_cache.stats()["hit_tokens"] > 0   # some prefixes were reused


def test_prefix_cache_shared_across_adapters_would_be_wrong(multi, adapter_dirs, monkeypatch):
    """Negative control: a prefix cache that ignores the adapter hands one adapter's keys and
    values to another, and the test above would catch it."""
    unkeyed = PC.block_names
    monkeypatch.setattr(PC, "block_names", lambda tokens, size, variant=0: unkeyed(tokens, size))
    events = run_batch(Engine(multi, prefix_cache=PrefixCache(block_size=4)), JOBS, SETTINGS)
    with pytest.raises(AssertionError):
        check_against_merged(events, adapter_dirs)


def test_bad_adapters_are_refused(adapter_dirs, tmp_path):
    other = apply_lora(base_model(n_embd=48, intermediate_size=64), LoraConfig(r=4))
    save_adapter(other, tmp_path / "wide")
    with pytest.raises(ConfigError, match=r"adapter 'wide' .*another base"):
        attach_adapters(base_model(), {"a": adapter_dirs["a"], "wide": str(tmp_path / "wide")})
    with pytest.raises(ConfigError, match="no adapters"):
        attach_adapters(base_model(), {})
    model = attach_adapters(base_model(), {"a": adapter_dirs["a"]})
    with pytest.raises(ConfigError, match="already has adapters"):
        attach_adapters(model, {"b": adapter_dirs["b"]})
    with pytest.raises(ConfigError, match=r"no variant 'c'.*\['a'\]"):
        variant_id(model, "c")
    with pytest.raises(ConfigError, match="not one this model has loaded"):
        Scheduler(Engine(model), max_batch=2).submit([1, 2], Engine(model).config(), print, variant=2)


def test_merge_adapter_is_the_merged_model(adapter_dirs):
    model = merge_adapter(adapter_dirs["b"])(base_model())
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(prepare_decode(model)(x), merged(adapter_dirs["b"])(x))
    assert hasattr(model.layers[0].attn, "qkv_proj")  # plain layers again: fused as the base is
