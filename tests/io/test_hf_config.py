"""`model: {hf_config: PATH}`: a Hugging Face config.json becomes the model spec. config.json files shaped like the
presets' models (written here from the presets' published values, only the keys moesim reads plus a few it
ignores) map to exactly the presets' specs; bad files are one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moesim.cli import main
from moesim.io.hf_config import hf_model_fields
from moesim.loader import load_scenario
from moesim.spec.errors import SpecError
from moesim.spec.model import Activation, MoeModelSpec
from moesim.spec.presets import MODEL_PRESETS

# Config.json shapes of the preset models, as their files spell them (values: moesim/spec/presets.py sources).
CONFIGS = {
    "deepseek-v3": {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
        "num_attention_heads": 128, "num_key_value_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1, "q_lora_rank": 1536,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "num_nextn_predict_layers": 1, "vocab_size": 129280, "hidden_act": "silu", "tie_word_embeddings": False,
        "n_group": 8, "topk_group": 4, "scoring_func": "sigmoid", "routed_scaling_factor": 2.5,
        "rope_scaling": {"type": "yarn", "factor": 40}, "max_position_embeddings": 163840,
    },
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
        "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
        "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 48, "vocab_size": 151936, "hidden_act": "silu",
        "tie_word_embeddings": False, "norm_topk_prob": True,
    },
    "qwen3-235b-a22b": {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 4096,
        "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_hidden_layers": 94,
        "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
        "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 94, "vocab_size": 151936, "hidden_act": "silu",
        "tie_word_embeddings": False,
    },
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None, "vocab_size": 32000,
        "hidden_act": "silu", "tie_word_embeddings": False, "router_aux_loss_coef": 0.02,
    },
    "mixtral-8x22b": {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 6144,
        "intermediate_size": 16384, "num_hidden_layers": 56, "num_attention_heads": 48, "num_key_value_heads": 8,
        "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None, "vocab_size": 32000,
        "hidden_act": "silu", "tie_word_embeddings": False,
    },
    "gpt-oss-120b": {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880,
        "intermediate_size": 2880, "num_hidden_layers": 36, "num_attention_heads": 64, "num_key_value_heads": 8,
        "head_dim": 64, "num_local_experts": 128, "num_experts_per_tok": 4, "experts_per_token": 4,
        "sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"] * 18, "vocab_size": 201088,
        "hidden_act": "silu", "tie_word_embeddings": False, "swiglu_limit": 7.0,
    },
    "gpt-oss-20b": {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880,
        "intermediate_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8,
        "head_dim": 64, "num_local_experts": 32, "experts_per_token": 4, "sliding_window": 128,
        "vocab_size": 201088, "hidden_act": "silu", "tie_word_embeddings": False,  # no layer_types: the default
    },
    "olmoe-1b-7b": {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_size": 2048,
        "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
        "num_experts": 64, "num_experts_per_tok": 8, "vocab_size": 50304, "hidden_act": "silu",
        "tie_word_embeddings": False,
    },
}
_LABELS = {"name", "source", "preset"}
SCENARIO = {"cluster": {"profile": "dgx-h100", "nodes": 1},
            "training": {"global_batch_size": 8, "seq_len": 1024, "micro_batch_size": 1},
            "layout": {"tp": 1, "pp": 1, "dp": 8, "ep": 8}}


def _shape(spec: MoeModelSpec) -> dict:
    return {k: v for k, v in spec.model_dump().items() if k not in _LABELS}


def _write_config(folder: Path, config: dict, name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def _write_scenario(path: Path, model: dict, **sections) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**SCENARIO, "model": model, **sections}, sort_keys=False), encoding="utf-8")
    return path


def _error_line(path: Path, capsys) -> str:
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


@pytest.mark.parametrize("preset", sorted(CONFIGS))
def test_a_config_of_a_preset_model_maps_to_the_preset(tmp_path, preset):
    _write_config(tmp_path / "models" / preset, CONFIGS[preset])
    path = _write_scenario(tmp_path / "scenario.yaml", {"hf_config": f"models/{preset}/config.json"})
    spec = load_scenario(path).model
    assert _shape(spec) == _shape(MODEL_PRESETS[preset])
    assert spec.name == preset  # the folder the Hub file came in
    assert spec.source == f"Hugging Face config.json models/{preset}/config.json (model_type " \
                          f"{CONFIGS[preset]['model_type']})"


def test_the_scenario_overrides_the_config_and_its_path_is_relative_to_the_scenario(tmp_path, monkeypatch):
    _write_config(tmp_path / "cfg", CONFIGS["deepseek-v3"], "ds.json")
    path = _write_scenario(tmp_path / "runs" / "s.yaml", {"hf_config": "../cfg/ds.json", "num_layers": 4,
                                                          "name": "ds-4"})
    monkeypatch.chdir(tmp_path / "cfg")  # the working directory does not matter
    spec = load_scenario(path).model
    assert (spec.num_layers, spec.name, spec.kv_lora_rank, spec.first_k_dense) == (4, "ds-4", 512, 3)
    assert spec.num_mtp_layers == 1


@pytest.mark.parametrize("first, freq, layers", [(0, 1, 6), (3, 1, 61), (1, 2, 9), (3, 2, 12), (2, 3, 11),
                                                 (5, 1, 6)])
def test_deepseek_moe_layer_rule_is_reproduced_exactly(first, freq, layers):
    config = {**CONFIGS["deepseek-v3"], "num_hidden_layers": layers, "first_k_dense_replace": first,
              "moe_layer_freq": freq}
    spec = MoeModelSpec(**hf_model_fields(config, "config.json").fields)
    hf_rule = [i >= first and i % freq == 0 for i in range(layers)]
    assert [spec.is_moe_layer(i) for i in range(layers)] == hf_rule


@pytest.mark.parametrize("step, dense_layers, layers", [(1, [], 8), (2, [], 8), (3, [], 10), (1, [0, 1], 8),
                                                         (2, [1], 8), (1, [0, 1, 2], 8)])
def test_qwen_moe_layer_rule_is_reproduced_exactly(step, dense_layers, layers):
    config = {**CONFIGS["qwen3-30b-a3b"], "num_hidden_layers": layers, "decoder_sparse_step": step,
              "mlp_only_layers": dense_layers}
    spec = MoeModelSpec(**hf_model_fields(config, "config.json").fields)
    hf_rule = [i not in dense_layers and (i + 1) % step == 0 for i in range(layers)]
    assert [spec.is_moe_layer(i) for i in range(layers)] == hf_rule
    assert spec.dense_ffn_size == (6144 if not all(hf_rule) else 0)


def test_qwen2_moe_shared_expert_sliding_windows_and_gelu():
    config = {"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
              "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24,
              "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4, "vocab_size": 151936,
              "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 0, "hidden_act": "gelu"}
    spec = MoeModelSpec(**hf_model_fields(config, "config.json").fields)
    assert (spec.num_shared_experts, spec.num_kv_heads, spec.head_dim) == (4, 16, 128)
    assert (spec.sliding_window, spec.full_attention_every, spec.num_windowed_layers) == (4096, None, 24)
    assert spec.activation is Activation.GEGLU


def test_window_patterns_of_layer_types():
    base = {**CONFIGS["gpt-oss-120b"], "num_hidden_layers": 12}
    every_third = ["sliding_attention", "sliding_attention", "full_attention"] * 4
    spec = MoeModelSpec(**hf_model_fields({**base, "layer_types": every_third}, "c.json").fields)
    assert spec.full_attention_every == 3
    assert [spec.is_windowed_layer(i) for i in range(12)] == [t == "sliding_attention" for t in every_third]
    full = MoeModelSpec(**hf_model_fields({**base, "layer_types": ["full_attention"] * 12}, "c.json").fields)
    assert full.sliding_window is None and full.num_windowed_layers == 0
    mistral_like = {**CONFIGS["mixtral-8x7b"], "sliding_window": 4096}
    assert MoeModelSpec(**hf_model_fields(mistral_like, "c.json").fields).num_windowed_layers == 32


def test_a_config_without_model_type_is_named_by_its_architectures():
    config = {k: v for k, v in CONFIGS["mixtral-8x7b"].items() if k != "model_type"}
    assert hf_model_fields(config, "c.json").fields["num_experts"] == 8


def _bad(config_edit=None, remove=(), raw: str | None = None):
    def make(tmp_path: Path) -> Path:
        config = {k: v for k, v in CONFIGS["deepseek-v3"].items() if k not in remove}
        config.update(config_edit or {})
        folder = tmp_path / "model"
        folder.mkdir()
        (folder / "config.json").write_text(raw if raw is not None else json.dumps(config), encoding="utf-8")
        return folder / "config.json"
    return make


BAD_FILES = [
    pytest.param(_bad({"model_type": "llama"}), "model_type: got 'llama'; expected one of: deepseek_v2",
                 id="unknown-architecture"),
    pytest.param(_bad(remove=("model_type", "architectures")), "model_type: got null; expected one of:",
                 id="no-architecture"),
    pytest.param(_bad(remove=("n_routed_experts",)), "n_routed_experts: got null; expected an integer >= 1 (the "
                 "key is required)", id="missing-key"),
    pytest.param(_bad({"hidden_size": "7168"}), "hidden_size: got '7168'; expected an integer >= 1",
                 id="string-number"),
    pytest.param(_bad({"num_hidden_layers": 10**6}), "num_hidden_layers: got 1000000; expected an integer in "
                 "[1, 4096]", id="too-many-layers"),
    pytest.param(_bad(remove=("q_lora_rank",)), "q_lora_rank: got null; expected an integer >= 1, or null for a "
                 "plain query projection (the key is required)", id="missing-q-lora"),
    pytest.param(_bad({"num_key_value_heads": 64}), "num_key_value_heads: got 64; expected num_attention_heads "
                 "(128)", id="spec-refuses-a-value"),
    pytest.param(_bad({"moe_layer_freq": 0}), "moe_layer_freq: got 0; expected an integer >= 1",
                 id="zero-frequency"),
    pytest.param(_bad({"first_k_dense_replace": 61}), "first_k_dense_replace: got 61; expected a pattern with at "
                 "least one MoE layer", id="no-moe-layer"),
    pytest.param(_bad({"layer_types": [["sliding_attention"]] * 61}), "...; expected a list of 61 (num_hidden_layers) "
                 "entries, each sliding_attention or full_attention", id="layer-types"),
    pytest.param(_bad({"hidden_act": "relu"}), "hidden_act: got 'relu'; expected one of: silu", id="activation"),
    pytest.param(_bad({"tie_word_embeddings": "no"}), "tie_word_embeddings: got 'no'; expected true or false",
                 id="bool"),
    pytest.param(_bad(raw='{"model_type": "mixtral",}'), "at line 1 column 2", id="bad-json"),
    pytest.param(_bad(raw='{"hidden_size": NaN}'), "<top level>: got 'NaN'; expected JSON numbers only",
                 id="nan"),
    pytest.param(_bad(raw='{"hidden_size": 1, "hidden_size": 2}'), "hidden_size: got 2; expected each key once",
                 id="duplicate-key"),
    pytest.param(_bad(raw="[1, 2]"), "<top level>: got [1, 2]; expected a JSON object of keys", id="not-object"),
    pytest.param(_bad(raw="model_type: mixtral"), "<top level>: got Expecting value at line 1 column 1; expected "
                 "a JSON object (a Hugging Face config.json)", id="not-json"),
]


@pytest.mark.parametrize("make, expected", BAD_FILES)
def test_a_bad_config_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, make, expected):
    config = make(tmp_path)
    path = _write_scenario(tmp_path / "s.yaml", {"hf_config": "model/config.json"})
    line = _error_line(path, capsys)
    assert line.startswith(f"moesim: error: {config}: ")
    assert expected in line


def test_irregular_layouts_are_refused_naming_their_key(tmp_path):
    gpt = {**CONFIGS["gpt-oss-120b"], "num_hidden_layers": 4,
           "layer_types": ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]}
    with pytest.raises(SpecError, match=r"c\.json: layer_types: got SFFS \(S sliding, F full\); expected full "
                                        r"attention in every n-th layer"):
        hf_model_fields(gpt, "c.json")
    qwen = {**CONFIGS["qwen3-30b-a3b"], "num_hidden_layers": 8, "mlp_only_layers": [0, 5]}
    with pytest.raises(SpecError, match=r"c\.json: mlp_only_layers: got \[0, 5\]; expected MoE layers from some "
                                        r"layer k on, every n-th"):
        hf_model_fields(qwen, "c.json")
    last_dense = {**qwen, "mlp_only_layers": [7]}
    with pytest.raises(SpecError, match=r"mlp_only_layers: got \[7\]; .* these give MoE layers \[0, 1, 2, 3, 4, 5, "
                                        r"6\]$"):
        hf_model_fields(last_dense, "c.json")
    qwen_windows = {**qwen, "mlp_only_layers": [], "use_sliding_window": True, "sliding_window": 512,
                    "max_window_layers": 4}
    with pytest.raises(SpecError, match="max_window_layers: got FFFFSSSS"):
        hf_model_fields(qwen_windows, "c.json")
    uneven = {"model_type": "qwen2_moe", **{k: v for k, v in qwen.items() if k != "model_type"},
              "mlp_only_layers": [], "shared_expert_intermediate_size": 1000}
    with pytest.raises(SpecError, match="shared_expert_intermediate_size: got 1000; expected a multiple of "
                                        r"moe_intermediate_size \(768\)"):
        hf_model_fields(uneven, "c.json")


def test_scenario_level_mistakes_name_the_scenario(tmp_path, capsys):
    missing = _write_scenario(tmp_path / "a.yaml", {"hf_config": "nowhere/config.json"})
    line = _error_line(missing, capsys)
    assert line == (f"moesim: error: {missing}: model.hf_config: got 'nowhere/config.json'; expected an existing "
                    f"Hugging Face config.json file, relative to the scenario file")
    (tmp_path / "folder").mkdir()
    folder = _write_scenario(tmp_path / "b.yaml", {"hf_config": "folder"})
    assert "model.hf_config: got 'folder' (a directory)" in _error_line(folder, capsys)
    _write_config(tmp_path / "m", CONFIGS["mixtral-8x7b"])
    both = _write_scenario(tmp_path / "c.yaml", {"hf_config": "m/config.json", "preset": "mixtral-8x7b"})
    assert "model.hf_config: got 'm/config.json'; expected either preset or hf_config" in _error_line(both, capsys)
    override = _write_scenario(tmp_path / "d.yaml", {"hf_config": "m/config.json", "num_kv_heads": 5})
    assert _error_line(override, capsys).startswith(f"moesim: error: {override}: model.num_kv_heads: got 5")
    typo = _write_scenario(tmp_path / "e.yaml", {"hf_conifg": "m/config.json"})
    assert "model.hf_conifg: got 'm/config.json'; expected no such key (did you mean 'hf_config'?)" in \
        _error_line(typo, capsys)


def test_the_schema_lists_hf_config(capsys):
    assert main(["schema", "scenario"]) == 0
    model = json.loads(capsys.readouterr().out)["properties"]["model"]
    assert "hf_config" in model["properties"]
    assert {"required": ["hf_config"]} in model["anyOf"]
