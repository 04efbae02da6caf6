"""A Hugging Face config.json -> the fields of a MoeModelSpec, for `model: {hf_config: PATH}`.

The architectures read are named by `model_type` (or, without it, by `architectures`): those of the models moesim
has presets for. Which key carries what follows transformers' configuration_<model_type>.py and modeling code
(../shared/specs/interfaces.md §4):

  model_type                experts            expert width            MoE layer i
  mixtral, gpt_oss          num_local_experts  intermediate_size       every layer
  olmoe                     num_experts        intermediate_size       every layer
  qwen2_moe, qwen3_moe      num_experts        moe_intermediate_size   i not in mlp_only_layers and
                                                                       (i+1) % decoder_sparse_step == 0
  deepseek_v2, deepseek_v3  n_routed_experts   moe_intermediate_size   i >= first_k_dense_replace and
                                                                       i % moe_layer_freq == 0

Dense layers (Qwen, DeepSeek) are intermediate_size wide. Shared experts: DeepSeek n_shared_experts, Qwen2-MoE one
of shared_expert_intermediate_size (a whole number of experts). Attention: num_key_value_heads (absent or null:
num_attention_heads, as every one of these config classes does), head_dim (absent or null: hidden_size / heads),
DeepSeek's multi-head latent attention (q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim),
sliding windows from layer_types (sliding_attention / full_attention) or, without it, from sliding_window (Mixtral:
every layer; Qwen: with use_sliding_window, layers >= max_window_layers; GPT-OSS: transformers' default alternation
starting with a windowed layer 0), GPT-OSS's attention sinks. num_nextn_predict_layers gives DeepSeek-V3's
multi-token prediction (absent: none, as transformers' own DeepSeek-V3 model builds none). hidden_act: silu / swish
-> swiglu, a GELU variant -> geglu (every architecture here has a gated FFN). tie_word_embeddings: absent = false
(the default of each of these classes). Per-layer layouts that first_k_dense / moe_every or full_attention_every
cannot express, and keys of a wrong type, are one error line naming the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from moesim.io.strict import is_file, path_kind
from moesim.spec.bounds import MAX_LAYERS
from moesim.spec.errors import SpecError, Verbatim
from moesim.spec.model import Activation

MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is kilobytes; quantization exclude lists make some ~100 KB
_ARCHITECTURES = {"MixtralForCausalLM": "mixtral", "OlmoeForCausalLM": "olmoe", "GptOssForCausalLM": "gpt_oss",
                  "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3MoeForCausalLM": "qwen3_moe",
                  "DeepseekV2ForCausalLM": "deepseek_v2", "DeepseekV3ForCausalLM": "deepseek_v3"}
MODEL_TYPES = tuple(sorted(set(_ARCHITECTURES.values())))
_EXPERTS_KEY = {"mixtral": "num_local_experts", "gpt_oss": "num_local_experts", "olmoe": "num_experts",
                "qwen2_moe": "num_experts", "qwen3_moe": "num_experts", "deepseek_v2": "n_routed_experts",
                "deepseek_v3": "n_routed_experts"}
_SILU, _GELU = ("silu", "swish"), ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu")


@dataclass(frozen=True)
class HfModel:
    """MoeModelSpec fields read from one config.json, and for each field the file's key it came from (so that a
    value the spec refuses is reported under the file's name for it)."""

    fields: dict[str, Any]
    keys: dict[str, str]
    source: str  # the file as the scenario names it


def read_hf_config(path: Path, shown: str) -> HfModel:
    """The model of the config.json at `path` (resolved); `shown` is the path as the scenario wrote it. Every
    problem in the file is a SpecError naming the file and its key."""
    source = str(path)
    if not is_file(path):
        kind = path_kind(path)
        raise SpecError("model.hf_config", shown if kind is None else Verbatim(f"{shown!r} ({kind})"),
                        "an existing Hugging Face config.json file, relative to the scenario file")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise SpecError("", exc.strerror or type(exc).__name__, "a readable config.json", source=source) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise SpecError("", f"a file of more than {MAX_CONFIG_BYTES} bytes",
                        f"a config.json of at most {MAX_CONFIG_BYTES // 2**20} MiB", source=source)
    config = _parse_json(data, source)
    return hf_model_fields(config, source, name=_default_name(Path(shown)), shown=shown)


def _parse_json(data: bytes, source: str) -> dict:
    def no_constant(text: str) -> Any:  # json accepts NaN and Infinity, which are not JSON
        raise SpecError("", text, "JSON numbers only (NaN and Infinity are not JSON)", source=source)

    def unique(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise SpecError(key, value, "each key once per object (it is given twice)", source=source)
            out[key] = value
        return out

    try:
        config = json.loads(data.decode("utf-8"), parse_constant=no_constant, object_pairs_hook=unique)
    except UnicodeDecodeError as exc:
        raise SpecError("", f"{type(exc).__name__} at byte {exc.start}", "a UTF-8 JSON file",
                        source=source) from None
    except json.JSONDecodeError as exc:
        raise SpecError("", Verbatim(f"{exc.msg} at line {exc.lineno} column {exc.colno}"),
                        "a JSON object (a Hugging Face config.json)", source=source) from None
    except RecursionError:
        raise SpecError("", Verbatim("JSON nested too deeply to read"), "a Hugging Face config.json",
                        source=source) from None
    if not isinstance(config, dict):
        raise SpecError("", config, "a JSON object of keys at the top (a Hugging Face config.json)",
                        source=source)
    return config


def _default_name(path: Path) -> str:
    """The model's name: the folder of a file named config.json (as downloaded from the Hub), else the stem."""
    name = path.parent.name if path.stem == "config" and path.parent.name not in ("", ".", "..") else path.stem
    return name or "hf-config"


class _Config:
    """Typed reads of one config.json's keys, each error naming the file and the key."""

    def __init__(self, config: Mapping, source: str):
        self.config, self.source = config, source

    def error(self, key: str, value: Any, expected: str) -> SpecError:
        return SpecError(key, value, expected, source=self.source)

    def has(self, key: str) -> bool:
        return self.config.get(key) is not None

    def int(self, key: str, minimum: int = 1, default: Any = ...) -> Any:
        """An integer >= minimum; `default` when the key is absent (or null): `...` means required."""
        value = self.config.get(key)
        if value is None:
            if default is ...:
                raise self.error(key, value, f"an integer >= {minimum} (the key is required)")
            return default
        if type(value) is not int or value < minimum:
            raise self.error(key, value, f"an integer >= {minimum}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if value is None:
            return default
        if type(value) is not bool:
            raise self.error(key, value, "true or false")
        return value

    def int_list(self, key: str, length: int) -> list[int]:
        value = self.config.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or any(type(v) is not int or not 0 <= v < length for v in value):
            raise self.error(key, value, f"a list of layer indices in [0, {length - 1}]")
        return value


def hf_model_fields(config: Mapping, source: str, name: str = "hf-config", shown: str | None = None) -> HfModel:
    """A parsed config.json -> MoeModelSpec fields. Pure: `source` names the file in messages, `shown` (default:
    `source`) in the spec's own `source`, where it stays the same wherever the scenario's folder is."""
    c = _Config(config, source)
    model_type = _model_type(c)
    fields: dict[str, Any] = {"name": name, "source": f"Hugging Face config.json {shown or source} (model_type "
                                                      f"{model_type})"}
    keys: dict[str, str] = {}

    def put(field: str, value: Any, key: str) -> None:
        fields[field], keys[field] = value, key

    layers = c.int("num_hidden_layers")
    if layers > MAX_LAYERS:  # checked before the per-layer patterns below loop over the layers
        raise c.error("num_hidden_layers", layers, f"an integer in [1, {MAX_LAYERS}]")
    put("num_layers", layers, "num_hidden_layers")
    put("hidden_size", c.int("hidden_size"), "hidden_size")
    heads = c.int("num_attention_heads")
    put("num_attention_heads", heads, "num_attention_heads")
    put("num_kv_heads", c.int("num_key_value_heads", default=heads), "num_key_value_heads")
    put("vocab_size", c.int("vocab_size"), "vocab_size")
    put("tie_word_embeddings", c.bool("tie_word_embeddings", False), "tie_word_embeddings")
    put("activation", _activation(c), "hidden_act")
    experts_key = _EXPERTS_KEY[model_type]
    put("num_experts", c.int(experts_key), experts_key)
    top_k_key = "experts_per_token" if model_type == "gpt_oss" and not c.has("num_experts_per_tok") \
        else "num_experts_per_tok"
    put("top_k", c.int(top_k_key), top_k_key)
    expert_key = "moe_intermediate_size" if model_type.startswith(("qwen", "deepseek")) else "intermediate_size"
    put("expert_ffn_size", c.int(expert_key), expert_key)

    moe_layers, pattern_key = _moe_layers(c, model_type, layers)
    first, every = _fit_moe_pattern(c, moe_layers, layers, pattern_key)
    put("first_k_dense", first, pattern_key)
    put("moe_every", every, pattern_key)
    if len(moe_layers) < layers:  # dense layers: intermediate_size is their width
        put("dense_ffn_size", c.int("intermediate_size"), "intermediate_size")
    _shared_experts(c, model_type, fields, put)
    _attention(c, model_type, layers, put)
    if model_type == "deepseek_v3":
        put("num_mtp_layers", c.int("num_nextn_predict_layers", minimum=0, default=0), "num_nextn_predict_layers")
    return HfModel(fields, keys, source)


def _model_type(c: _Config) -> str:
    model_type = c.config.get("model_type")
    if model_type is None:  # older files name only the class
        archs = c.config.get("architectures")
        known = [_ARCHITECTURES[a] for a in archs if isinstance(a, str) and a in _ARCHITECTURES] \
            if isinstance(archs, list) else []
        if not known:
            raise c.error("model_type", None, f"one of: {', '.join(MODEL_TYPES)} (or `architectures` naming "
                                              f"{', '.join(sorted(_ARCHITECTURES))})")
        return known[0]
    if model_type not in MODEL_TYPES:
        raise c.error("model_type", model_type, f"one of: {', '.join(MODEL_TYPES)} (the MoE architectures moesim "
                                                f"reads; spell the model out under `model:` otherwise)")
    return model_type


def _activation(c: _Config) -> Activation:
    act = c.config.get("hidden_act", "silu")
    if act in _SILU:
        return Activation.SWIGLU
    if act in _GELU:
        return Activation.GEGLU
    raise c.error("hidden_act", act, f"one of: {', '.join(_SILU + _GELU)} (a gated FFN: swiglu or geglu)")


def _moe_layers(c: _Config, model_type: str, layers: int) -> tuple[list[int], str]:
    """The MoE layers' indices by the architecture's rule, and the key that decides them."""
    if model_type.startswith("qwen"):
        step = c.int("decoder_sparse_step", default=1)
        dense = set(c.int_list("mlp_only_layers", layers))
        key = "mlp_only_layers" if dense else "decoder_sparse_step"
        return [i for i in range(layers) if i not in dense and (i + 1) % step == 0], key
    if model_type.startswith("deepseek"):
        first = c.int("first_k_dense_replace", minimum=0)
        freq = c.int("moe_layer_freq", default=1)
        return [i for i in range(layers) if i >= first and i % freq == 0], "first_k_dense_replace"
    return list(range(layers)), "num_hidden_layers"


def _fit_moe_pattern(c: _Config, moe: list[int], layers: int, key: str) -> tuple[int, int]:
    """(first_k_dense, moe_every) giving exactly the layers `moe`: layer i >= k is MoE when (i - k) % n == 0."""
    if not moe:
        raise c.error(key, c.config.get(key), "a pattern with at least one MoE layer")
    first = moe[0]
    every = moe[1] - first if len(moe) > 1 else max(1, layers - first)  # one MoE layer: n beyond the last one
    expected = list(range(first, layers, every))
    if moe != expected:
        shown = ", ".join(map(str, moe[:16])) + (", ..." if len(moe) > 16 else "")
        raise c.error(key, c.config.get(key), f"MoE layers from some layer k on, every n-th (moesim's "
                                              f"first_k_dense, moe_every); these give MoE layers [{shown}]")
    return first, every


def _shared_experts(c: _Config, model_type: str, fields: dict, put) -> None:
    if model_type.startswith("deepseek"):
        put("num_shared_experts", c.int("n_shared_experts", minimum=0), "n_shared_experts")
    elif model_type == "qwen2_moe":  # one shared expert of this width, gated: a whole number of routed widths
        width = c.int("shared_expert_intermediate_size", minimum=0)
        expert = fields["expert_ffn_size"]
        if width % expert:
            raise c.error("shared_expert_intermediate_size", width, f"a multiple of moe_intermediate_size "
                                                                    f"({expert}): moesim models shared experts "
                                                                    f"as num_shared_experts routed-width experts")
        put("num_shared_experts", width // expert, "shared_expert_intermediate_size")


def _attention(c: _Config, model_type: str, layers: int, put) -> None:
    if model_type.startswith("deepseek"):  # multi-head latent attention: no single head width
        if "q_lora_rank" not in c.config:  # transformers' default is a rank (1536), so absent is not "none"
            raise c.error("q_lora_rank", None, "an integer >= 1, or null for a plain query projection (the key "
                                               "is required)")
        put("q_lora_rank", c.int("q_lora_rank", default=None), "q_lora_rank")
        for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            put(key, c.int(key), key)
    else:
        put("head_dim", c.int("head_dim", default=None), "head_dim")
    windowed = _windowed_layers(c, model_type, layers)
    if windowed:
        put("sliding_window", c.int("sliding_window"), "sliding_window")
        put("full_attention_every", _fit_window_pattern(c, windowed, layers), "layer_types")
    if model_type == "gpt_oss":
        put("attention_sinks", True, "model_type")  # every GPT-OSS attention layer has a sink logit per head


def _windowed_layers(c: _Config, model_type: str, layers: int) -> list[bool]:
    """Per layer, whether it attends through a sliding window; [] when none does."""
    types = c.config.get("layer_types")
    if types is not None:
        kinds = {"sliding_attention": True, "full_attention": False}
        if not isinstance(types, list) or len(types) != layers or \
                any(not isinstance(t, str) or t not in kinds for t in types):
            raise c.error("layer_types", types, f"a list of {layers} (num_hidden_layers) entries, each "
                                                f"sliding_attention or full_attention")
        windowed = [kinds[t] for t in types]
    elif model_type == "gpt_oss":  # GptOssConfig's default when the file has no layer_types
        windowed = [i % 2 == 0 for i in range(layers)]
    elif model_type.startswith("qwen"):  # Qwen2/3-MoE: only with use_sliding_window, from max_window_layers on
        on = c.bool("use_sliding_window", False) and c.has("sliding_window")
        start = c.int("max_window_layers", minimum=0, default=0) if on else layers
        windowed = [i >= start for i in range(layers)]
    else:  # Mixtral: a sliding_window applies to every layer
        windowed = [c.has("sliding_window")] * layers
    return windowed if any(windowed) else []


def _fit_window_pattern(c: _Config, windowed: list[bool], layers: int) -> int | None:
    """full_attention_every giving exactly these windowed layers (None: all windowed), as Megatron's
    --window-attn-skip-freq: layer i keeps full attention when (i + 1) % n == 0."""
    full = [i for i, w in enumerate(windowed) if not w]
    if not full:
        return None
    every = full[0] + 1
    if every >= 2 and full == list(range(every - 1, layers, every)):
        return every
    shown = Verbatim("".join("S" if w else "F" for w in windowed[:64]) + ("..." if layers > 64 else "")
                     + " (S sliding, F full)")
    key = "layer_types" if c.config.get("layer_types") is not None else "max_window_layers"
    raise SpecError(key, shown, "full attention in every n-th layer (layers n-1, 2n-1, ...) and the sliding "
                                "window in the others (moesim's full_attention_every, Megatron's "
                                "--window-attn-skip-freq); or every layer windowed", source=c.source)
