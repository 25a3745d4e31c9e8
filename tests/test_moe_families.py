"""Routing families of real models against their ``transformers`` modules (small configs, random
weights): config and weights read with ``from_transformers``, the reference block and the sharded
block (eager and compiled) equal to the module's output; unsupported configs raise naming the
field; Hub-style per-expert state dicts load the same weights."""

import re

import pytest
import torch
from helpers.moe_experts_workers import run_sharded

from compile_ops.moe import MoEBlock, MoEConfig, MoEWeights

transformers = pytest.importorskip("transformers")
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as ds2  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds3  # noqa: E402
from transformers.models.mixtral import modeling_mixtral as mixtral  # noqa: E402
from transformers.models.qwen2_moe import modeling_qwen2_moe as qwen2  # noqa: E402
from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3  # noqa: E402

SMALL = {"hidden_size": 32, "num_attention_heads": 4, "experts_implementation": "eager"}
DEEPSEEK = {"moe_intermediate_size": 16, "n_routed_experts": 16, "num_experts_per_tok": 4}
FAMILIES = {
    "mixtral": (
        mixtral.MixtralSparseMoeBlock,
        transformers.MixtralConfig(
            intermediate_size=48, num_local_experts=8, num_experts_per_tok=2, **SMALL
        ),
    ),
    "qwen2_moe": (
        qwen2.Qwen2MoeSparseMoeBlock,
        transformers.Qwen2MoeConfig(
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_experts=8,
            num_experts_per_tok=3,
            norm_topk_prob=False,
            **SMALL,
        ),
    ),
    "qwen3_moe": (
        qwen3.Qwen3MoeSparseMoeBlock,
        transformers.Qwen3MoeConfig(
            moe_intermediate_size=24,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            **SMALL,
        ),
    ),
    "deepseek_v2": (
        ds2.DeepseekV2Moe,
        transformers.DeepseekV2Config(
            topk_method="greedy",
            n_shared_experts=2,
            routed_scaling_factor=1.5,
            **DEEPSEEK,
            **SMALL,
        ),
    ),
    "deepseek_v2_grouped": (
        ds2.DeepseekV2Moe,
        transformers.DeepseekV2Config(
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            n_shared_experts=1,
            routed_scaling_factor=16.0,
            **DEEPSEEK,
            **SMALL,
        ),
    ),
    "deepseek_v3": (
        ds3.DeepseekV3MoE,
        transformers.DeepseekV3Config(
            n_group=4,
            topk_group=2,
            n_shared_experts=1,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            **DEEPSEEK,
            **SMALL,
        ),
    ),
}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _module(name: str, seed: int = 0) -> torch.nn.Module:
    """The family's transformers block with random weights (its own init leaves them empty)."""
    cls, config = FAMILIES[name]
    torch.manual_seed(seed)
    module = cls(config).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, p.shape[-1] ** -0.5)
        for b in module.buffers():  # DeepSeek-V3's score correction bias
            b.normal_(0, 0.1)
    return module


@pytest.fixture(scope="module")
def cases():
    """Per family: (config, weights, tokens, the transformers module's output)."""
    out = {}
    for name in FAMILIES:
        module = _module(name)
        config = MoEConfig.from_transformers(FAMILIES[name][1])
        weights = MoEWeights.from_transformers(module, config)
        x = torch.randn(2 * 19, config.hidden, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            want = module(x.unsqueeze(0)).squeeze(0)
        out[name] = (config, weights, x, want)
    return out


def test_configs_are_read_as_the_families_route():
    read = {name: MoEConfig.from_transformers(config) for name, (_, config) in FAMILIES.items()}
    assert read["mixtral"].renormalize and read["mixtral"].scoring == "softmax"
    assert read["qwen2_moe"].shared_expert_gate and not read["qwen2_moe"].renormalize
    assert read["qwen3_moe"].renormalize and not read["qwen3_moe"].shared_intermediate
    assert read["deepseek_v2"].shared_intermediate == 32 and read["deepseek_v2"].expert_groups == 1
    assert (read["deepseek_v2_grouped"].expert_groups, read["deepseek_v2_grouped"].topk_groups) == (
        4,
        2,
    )
    v3 = read["deepseek_v3"]
    assert (v3.scoring, v3.router_bias, v3.group_score, v3.routed_scaling) == (
        "sigmoid",
        True,
        "top2_sum",
        2.5,
    )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_reference_block_equals_transformers(cases, name):
    config, weights, x, want = cases[name]
    with torch.no_grad():
        torch.testing.assert_close(MoEBlock(config, weights)(x), want, **TOL)


@pytest.mark.parametrize("backend", [None, "aot_eager"], ids=["eager", "compiled"])
def test_sharded_block_equals_transformers(world, cases, backend):
    """Every family through the EP-sharded block on 2 ranks (all_to_all), eager and compiled."""
    pool = world(2)
    for name, (config, weights, x, want) in cases.items():
        for rank, (outs, _, frames) in enumerate(
            pool.run(run_sharded, config, weights, [x], "ep", "all_to_all", backend)
        ):
            assert frames == (1 if backend else 0), name
            rows = want.shape[0] // 2
            torch.testing.assert_close(outs[0], want[rank * rows : (rank + 1) * rows], **TOL)


@pytest.mark.slow
def test_sharded_deepseek_v3_through_inductor(world, cases):
    config, weights, x, want = cases["deepseek_v3"]
    results = world(2).run(run_sharded, config, weights, [x], "tp", "agrs", "inductor")
    for rank, (outs, _, frames) in enumerate(results):
        assert frames == 1
        torch.testing.assert_close(outs[0], want.chunk(2)[rank], **TOL)


def _per_expert(state: dict, prefix: str, names: tuple[str, str, str]) -> dict:
    """A fused transformers state dict as the Hub stores it: one tensor per expert."""
    out = {}
    for key, value in state.items():
        if key == "experts.gate_up_proj":
            gate, up = value.chunk(2, dim=1)
            for e in range(value.shape[0]):
                out[f"{prefix}experts.{e}.{names[0]}.weight"] = gate[e]
                out[f"{prefix}experts.{e}.{names[1]}.weight"] = up[e]
        elif key == "experts.down_proj":
            for e in range(value.shape[0]):
                out[f"{prefix}experts.{e}.{names[2]}.weight"] = value[e]
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize(
    ("name", "names"),
    [("mixtral", ("w1", "w3", "w2")), ("deepseek_v3", ("gate_proj", "up_proj", "down_proj"))],
)
def test_hub_state_dict_with_a_prefix_loads_the_same_weights(cases, name, names):
    config, weights, _, _ = cases[name]
    state = _per_expert(_module(name).state_dict(), "model.layers.3.mlp.", names)
    loaded = MoEWeights.from_transformers(state, config, prefix="model.layers.3.mlp.")
    for field in weights.__dataclass_fields__:
        mine, theirs = getattr(weights, field), getattr(loaded, field)
        assert (mine is None and theirs is None) or torch.equal(mine, theirs), field


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        ("mixtral", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ("deepseek_v2", {"topk_method": "noaux_tc"}, "topk_method='noaux_tc'"),
        ("deepseek_v2", {"norm_topk_prob": True}, "norm_topk_prob=True"),
        ("deepseek_v2", {"mlp_bias": True}, "mlp_bias=True"),
        ("qwen3_moe", {"model_type": "llama"}, "model_type='llama'"),
    ],
)
def test_unsupported_config_raises_naming_the_field(name, change, field):
    config = FAMILIES[name][1].to_dict() | change
    with pytest.raises(ValueError, match=field):
        MoEConfig.from_transformers(type("Config", (), config))


def test_missing_weight_names_the_key(cases):
    config, _, _, _ = cases["qwen2_moe"]
    state = dict(_module("qwen2_moe").state_dict())
    del state["shared_expert_gate.weight"]
    with pytest.raises(KeyError, match=re.escape("'layer.shared_expert_gate.weight'")):
        MoEWeights.from_transformers({f"layer.{k}": v for k, v in state.items()}, config, "layer.")
