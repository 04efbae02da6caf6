"""A Megatron-LM training command line or arguments file -> a scenario document (`moesim import megatron`).

The file is read as a shell would split it: backslash-newline continues a line, quotes group, `#` starts a comment,
`NAME=value` before the launcher is an environment setting, `;` `&&` `||` `|` and newlines end a command, and
redirections (`2>&1`, `> log`) are dropped. The training command is the one naming a `.py` script (`torchrun ...
pretrain_gpt.py --flag value ...`); lines holding only flags (an arguments file) join it; other commands (`export`,
`cd`) are reported and skipped. Flags are matched whole, as Megatron-LM's parser (allow_abbrev=False) matches them;
`--flag=value` equals `--flag value`; a flag given twice keeps its last value, as argparse does.

What is read follows Megatron-LM's defaults where a flag is absent (interfaces.md §1: etp = tp, dispatcher allgather,
top-k 2, fp32 without --bf16/--fp16) and its renames (old names read with a warning). The world size comes from
`--nodes` (times the profile's GPUs per node) or from torchrun's --nnodes x --nproc-per-node; dp = world / (tp x cp x
pp). Errors, one line naming the flag: a value that is not what the flag takes, flags that contradict each other,
and what a scenario cannot hold (a --pipeline-model-parallel-layout, an unmappable --moe-layer-freq). Rules only
Megatron-LM enforces, which moesim simulates anyway, are warnings (megatron_refusals), so that what
moesim.export.megatron writes for any valid scenario reads back. Flags the importer does not map are returned
(`unmapped`) for the caller to report (moesim.export.megatron_flags.flag_line).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.io.profile import available_profiles, load_profile, resolve_profile
from moesim.io.scenario import parse_scenario
from moesim.io.strict import is_file, not_a_file
from moesim.spec.bounds import MAX_LAYERS
from moesim.spec.comm import TokenDispatcher
from moesim.spec.dtype import Dtype
from moesim.spec.errors import SpecError
from moesim.spec.presets import MODEL_PRESETS
from moesim.spec.scenario import Scenario
from moesim.spec.training import Recompute, RecomputeModule

MAX_ARGS_BYTES = 2**20  # a launch script is kilobytes
MAX_TOKENS = 100_000
DEFAULT_PROFILE = "dgx-h100"
_SEPARATORS = (";;", "&&", "||", ";", "&", "|")

# Every flag the importer reads, with how many values it takes (0: a switch; "+": one or more).
_SWITCHES = ("--sequence-parallel --group-query-attention --multi-latent-attention --swiglu --quick-geglu "
             "--squared-relu --untie-embeddings-and-output-weights --disable-bias-linear --moe-grouped-gemm "
             "--moe-shared-expert-overlap --moe-pad-expert-input-to-capacity --moe-router-enable-expert-bias "
             "--overlap-moe-expert-parallel-comm --delay-wgrad-compute --bf16 --fp16 --grad-reduce-in-bf16 "
             "--accumulate-allreduce-grads-in-fp32 --use-precision-aware-optimizer --use-distributed-optimizer "
             "--overlap-grad-reduce --overlap-param-gather --tp-comm-overlap --use-tp-pp-dp-mapping "
             "--recompute-activations --moe-router-force-load-balancing --account-for-embedding-in-pipeline-split "
             "--account-for-loss-in-pipeline-split --moe-extended-tp --moe-enable-deepep --moe-layer-recompute "
             "--checkpoint-activations").split()
_LISTS = ("--recompute-modules", "--moe-router-load-balancing-type", "--moe-aux-loss-coeff")
_SINGLES = ("--tensor-model-parallel-size --pipeline-model-parallel-size --context-parallel-size "
            "--expert-model-parallel-size --expert-tensor-parallel-size --num-layers-per-virtual-pipeline-stage "
            "--num-virtual-stages-per-pipeline-rank --decoder-first-pipeline-num-layers "
            "--decoder-last-pipeline-num-layers --pipeline-model-parallel-layout --micro-batch-size "
            "--global-batch-size --seq-length --num-layers --hidden-size --num-attention-heads --ffn-hidden-size "
            "--num-query-groups --kv-channels --q-lora-rank --kv-lora-rank --qk-head-dim --qk-pos-emb-head-dim "
            "--v-head-dim --vocab-size --padded-vocab-size --make-vocab-size-divisible-by --num-experts "
            "--moe-router-topk --moe-ffn-hidden-size --moe-shared-expert-intermediate-size --moe-layer-freq "
            "--moe-expert-capacity-factor --moe-token-drop-policy --moe-token-dispatcher-type "
            "--moe-flex-dispatcher-backend --fp8-format --fp8-recipe --fp4-format --recompute-granularity "
            "--recompute-method --recompute-num-layers --mtp-num-layers --max-position-embeddings "
            "--main-grads-dtype --main-params-dtype --exp-avg-dtype --exp-avg-sq-dtype --optimizer "
            "--position-embedding-type --normalization --window-size --window-attn-skip-freq --softmax-type "
            "--batch-size --model-parallel-size --virtual-pipeline-model-parallel-size").split()
ARITY: dict[str, int | str] = {**dict.fromkeys(_SWITCHES, 0), **dict.fromkeys(_LISTS, "+"),
                               **dict.fromkeys(_SINGLES, 1)}
MAPPED_FLAGS = frozenset(ARITY)
_RENAMES = {"--batch-size": "--micro-batch-size", "--model-parallel-size": "--tensor-model-parallel-size",
            "--virtual-pipeline-model-parallel-size": "--num-virtual-stages-per-pipeline-rank"}
# scenario key path -> the flag that set it, to name the flag in an error the spec validation raises
_FLAG_OF_PATH = {
    "layout.tp": "--tensor-model-parallel-size", "layout.pp": "--pipeline-model-parallel-size",
    "layout.cp": "--context-parallel-size", "layout.ep": "--expert-model-parallel-size",
    "layout.etp": "--expert-tensor-parallel-size", "layout.vpp": "--num-virtual-stages-per-pipeline-rank",
    "layout.first_stage_layers": "--decoder-first-pipeline-num-layers",
    "layout.last_stage_layers": "--decoder-last-pipeline-num-layers", "layout.order": "--use-tp-pp-dp-mapping",
    "model.num_layers": "--num-layers", "model.hidden_size": "--hidden-size",
    "model.num_attention_heads": "--num-attention-heads", "model.num_kv_heads": "--num-query-groups",
    "model.head_dim": "--kv-channels", "model.q_lora_rank": "--q-lora-rank", "model.kv_lora_rank": "--kv-lora-rank",
    "model.qk_nope_head_dim": "--qk-head-dim", "model.qk_rope_head_dim": "--qk-pos-emb-head-dim",
    "model.v_head_dim": "--v-head-dim", "model.dense_ffn_size": "--ffn-hidden-size",
    "model.expert_ffn_size": "--moe-ffn-hidden-size", "model.num_experts": "--num-experts",
    "model.top_k": "--moe-router-topk", "model.num_shared_experts": "--moe-shared-expert-intermediate-size",
    "model.vocab_size": "--vocab-size", "model.first_k_dense": "--moe-layer-freq",
    "model.moe_every": "--moe-layer-freq", "model.num_mtp_layers": "--mtp-num-layers",
    "model.sliding_window": "--window-size", "model.full_attention_every": "--window-attn-skip-freq",
    "training.global_batch_size": "--global-batch-size", "training.micro_batch_size": "--micro-batch-size",
    "training.seq_len": "--seq-length", "training.recompute_modules": "--recompute-modules",
    "training.dtype": "--bf16/--fp16/--fp8-format", "training.fp8_recipe": "--fp8-recipe",
    "gate.capacity_factor": "--moe-expert-capacity-factor",
    "gate.pad_to_capacity": "--moe-pad-expert-input-to-capacity", "comm.dispatcher": "--moe-token-dispatcher-type",
    "comm.overlap_param_gather": "--overlap-param-gather", "comm.tp_comm_overlap": "--tp-comm-overlap",
    "comm.moe_a2a_overlap": "--overlap-moe-expert-parallel-comm",
    "comm.shared_expert_overlap": "--moe-shared-expert-overlap",
}


@dataclass(frozen=True)
class MegatronImport:
    doc: dict  # the scenario document written to YAML (plain str / int / float / bool / None / dict / list)
    scenario: Scenario  # the document, validated
    warnings: tuple[str, ...]  # one line each, naming the flag or line
    flags: tuple[str, ...]  # every flag given, in order of first appearance
    unmapped: tuple[str, ...]  # flags given but not read, for the caller to describe


@dataclass(frozen=True)
class _Token:
    text: str
    line: int


# ------------------------------------------------------------------------------------------------- reading

def read_args_text(path: Path) -> str:
    """The file's text: a regular UTF-8 file of at most MAX_ARGS_BYTES without NUL bytes."""
    if not is_file(path):
        raise not_a_file(path, "Megatron-LM arguments")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_ARGS_BYTES + 1)
    except OSError as exc:
        raise SpecError("", exc.strerror or type(exc).__name__, "a readable file", source=str(path)) from None
    if len(data) > MAX_ARGS_BYTES:
        raise SpecError("", f"a file of more than {MAX_ARGS_BYTES} bytes",
                        f"a Megatron-LM arguments file of at most {MAX_ARGS_BYTES} bytes", source=str(path))
    if b"\0" in data:
        raise SpecError("", f"a NUL byte at byte {data.index(0)}", "a text file (a shell command line)",
                        source=str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"{type(exc).__name__} at byte {exc.start}", "a UTF-8 text file",
                        source=str(path)) from None


def tokenize(text: str, source: str) -> list[list[_Token]]:
    """Shell words of `text`, one list per command (POSIX quoting; no expansion: `$X` stays as written)."""
    lexer = _Lexer(text, source)
    lexer.run()
    return [c for c in lexer.commands if c]


class _Lexer:
    def __init__(self, text: str, source: str):
        self.text, self.source = text, source
        self.i, self.line = 0, 1
        self.commands: list[list[_Token]] = [[]]
        self.word: list[str] | None = None
        self.word_line, self.words = 1, 0

    def error(self, what: str, expected: str) -> SpecError:
        return SpecError(f"line {self.line}", what, expected, source=self.source)

    def end_word(self) -> None:
        if self.word is not None:
            self.commands[-1].append(_Token("".join(self.word), self.word_line))
            self.words += 1
            if self.words > MAX_TOKENS:
                raise self.error(f"more than {MAX_TOKENS} words", "a command line of a training run")
        self.word = None

    def add(self, chars: str) -> None:
        if self.word is None:
            self.word, self.word_line = [], self.line
        self.word.append(chars)

    def run(self) -> None:
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if c == "\\":
                self.backslash()
            elif c == "'":
                end = text.find("'", self.i + 1)
                if end < 0:
                    raise self.error("an unterminated ' quote", "quotes that close")
                self.add(text[self.i + 1:end])
                self.line += text.count("\n", self.i, end)
                self.i = end + 1
            elif c == '"':
                self.double_quoted()
            elif c == "#" and self.word is None:
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            elif c in " \t\r\n":
                self.end_word()
                if c == "\n":
                    self.commands.append([])
                    self.line += 1
                self.i += 1
            elif c in ";&|":
                self.operator()
            elif c in "<>":
                self.redirection()
            else:
                self.add(c)
                self.i += 1
        self.end_word()

    def backslash(self) -> None:
        nxt = self.text[self.i + 1:self.i + 2]
        if nxt == "\n":  # line continuation
            self.line += 1
        elif nxt:
            self.add(nxt)
        self.i += 2

    def double_quoted(self) -> None:
        text, i, chars = self.text, self.i + 1, []
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and text[i + 1:i + 2] in ("$", "`", '"', "\\", "\n"):
                if text[i + 1] != "\n":
                    chars.append(text[i + 1])
                i += 2
                continue
            chars.append(text[i])
            i += 1
        if i >= len(text):
            raise self.error('an unterminated " quote', "quotes that close")
        self.add("".join(chars))
        self.line += text.count("\n", self.i, i)
        self.i = i + 1

    def operator(self) -> None:
        self.end_word()
        op = next(s for s in _SEPARATORS if self.text.startswith(s, self.i))
        self.i += len(op)
        self.commands.append([])

    def redirection(self) -> None:
        """`2>&1`, `> log.txt`, `< in`: the descriptor and target are dropped."""
        if self.word is not None and "".join(self.word).isdigit():
            self.word = None
        self.end_word()
        self.i += 1
        while self.i < len(self.text) and self.text[self.i] in ">&":
            self.i += 1
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1
        while self.i < len(self.text) and self.text[self.i] not in " \t\r\n;&|":
            self.i += 1


def split_command(commands: list[list[_Token]], source: str) -> tuple[list[_Token], list[_Token], list[str]]:
    """(launcher words before the script, Megatron-LM flags, notes about skipped commands)."""
    scripts = [c for c in commands if not c[0].text.startswith("--") and any(t.text.endswith(".py") for t in c)]
    if len(scripts) > 1:
        raise SpecError(f"line {scripts[1][0].line}", " ".join(t.text for t in scripts[1])[:60],
                        f"one training command (another names a script on line {scripts[0][0].line})", source=source)
    launcher: list[_Token] = []
    flags: list[_Token] = []
    notes = []
    for command in commands:
        if command is (scripts[0] if scripts else None):
            at = next(i for i, t in enumerate(command) if t.text.endswith(".py"))
            launcher, flags = command[:at], flags + command[at + 1:]
        elif command[0].text.startswith("--"):
            flags = flags + command
        else:
            notes.append(f"line {command[0].line}: skipped `{' '.join(t.text for t in command)[:60]}` "
                         "(not the training command)")
    return launcher, flags, notes


def parse_flags(tokens: list[_Token], source: str) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """({flag: values of its last occurrence}, flags in order of first appearance, warnings)."""
    values: dict[str, list[str]] = {}
    order, warnings = [], []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.text.startswith("--") or tok.text == "--":
            after = f" (after {tokens[i - 1].text})" if i else ""
            raise SpecError(f"line {tok.line}", tok.text, f"a flag (--name){after}: Megatron-LM takes no positional "
                            "arguments, and moesim expands no shell variables (write the values out)", source=source)
        name, eq, inline = tok.text.partition("=")
        arity = ARITY.get(name)
        given = [inline] if eq else []
        i += 1
        while not eq and arity != 0 and i < len(tokens) and not tokens[i].text.startswith("--") \
                and (arity != 1 or not given):
            given.append(tokens[i].text)
            i += 1
        if arity == 0 and given:
            raise SpecError(name, inline, "no value (a switch)", source=source)
        if (arity == 1 and len(given) != 1) or (arity == "+" and not given):
            raise SpecError(name, None, "one value" if arity == 1 else "one or more values", source=source)
        if name in values and values[name] != given:
            warnings.append(f"{name}: given more than once; the last value counts, as in Megatron-LM")
        if name not in values:
            order.append(name)
        values[name] = given
    return values, order, warnings


# ------------------------------------------------------------------------------------------------ launcher

def launcher_world(launcher: list[_Token], source: str) -> tuple[int | None, int | str | None, str]:
    """(nnodes, nproc per node, description) from torchrun / python -m torch.distributed.run|launch words."""
    words = [t.text for t in launcher if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", t.text)]
    if not any(w in ("torchrun", "torch.distributed.run", "torch.distributed.launch") or w.endswith("/torchrun")
               for w in words):
        return None, None, ""
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        key = name.replace("_", "-")
        if key in ("--nnodes", "--nproc-per-node"):
            found[key] = value if eq else (words[i + 1] if i + 1 < len(words) else "")
        elif key == "--standalone":
            found.setdefault("--nnodes", "1")
    nnodes, nproc = found.get("--nnodes", "1"), found.get("--nproc-per-node", "1")
    if not nnodes.isdigit() or int(nnodes) < 1:
        raise SpecError("torchrun --nnodes", nnodes, "a fixed number of nodes >= 1 (or pass --nodes N to moesim "
                                                     "import)", source=source)
    if nproc in ("gpu", "auto"):
        return int(nnodes), nproc, f"torchrun --nnodes {nnodes} --nproc-per-node {nproc}"
    if not nproc.isdigit() or int(nproc) < 1:
        raise SpecError("torchrun --nproc-per-node", nproc, "a number of processes >= 1, gpu or auto",
                        source=source)
    return int(nnodes), int(nproc), f"torchrun --nnodes {nnodes} --nproc-per-node {nproc}"


# ------------------------------------------------------------------------------------------------ values

_REQUIRED = object()


@dataclass
class _Reader:
    values: dict[str, list[str]]
    source: str
    warnings: list[str] = field(default_factory=list)

    def error(self, flag: str, value: Any, expected: str) -> SpecError:
        return SpecError(flag, value, expected, source=self.source)

    def given(self, flag: str) -> bool:
        return flag in self.values

    def switch(self, flag: str) -> bool:
        return flag in self.values

    def text(self, flag: str, default: Any = None) -> Any:
        return self.values[flag][0] if flag in self.values else default

    def int(self, flag: str, default: Any = _REQUIRED, minimum: int = 1) -> Any:
        if flag not in self.values:
            if default is _REQUIRED:
                raise self.error(flag, None, "this flag: moesim needs it and Megatron-LM has no default for it")
            return default
        text = self.values[flag][0]
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", text.strip()) or int(text) < minimum:
            raise self.error(flag, text, f"an integer >= {minimum}")
        return int(text)

    def float(self, flag: str, text: str | None = None) -> float | None:
        text = self.text(flag) if text is None else text
        if text is None:
            return None
        try:
            number = float(text)
        except ValueError:
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")):
            raise self.error(flag, text, "a finite number")
        return number

    def choice(self, flag: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.text(flag, default)
        if value is not None and value not in choices:
            raise self.error(flag, value, f"one of {', '.join(choices)} (Megatron-LM's choices)")
        return value

    def contradiction(self, flag: str, other: str) -> SpecError:
        return self.error(flag, " ".join(self.values.get(flag, [])) or True,
                          f"not together with {other} (they contradict each other)")


def pattern_list(text: str, flag: str, length: int, source: str) -> list[int]:
    """A Megatron list expression of 0s and 1s such as `([0]*3+[1]*58)` (the characters Megatron's _eval_pattern
    allows: digits , [ ] ( ) + *), evaluated without eval() and never longer than `length` elements."""
    parser = _Pattern(text, flag, source, min(length, MAX_LAYERS))
    value = parser.expr()
    if parser.pos != len(parser.text) or not isinstance(value, list):
        raise parser.error()
    if len(value) != length or any(v not in (0, 1) for v in value):
        raise SpecError(flag, text, f"a list of {length} zeros and ones, one per layer (--num-layers)", source=source)
    return value


_DIGITS = re.compile(r"[0-9]{1,9}")


class _Pattern:
    def __init__(self, text: str, flag: str, source: str, limit: int):
        self.text, self.flag, self.source, self.limit = text.replace(" ", ""), flag, source, limit
        self.pos, self.depth = 0, 0

    def error(self) -> SpecError:
        return SpecError(self.flag, self.text, f"an integer, or a list expression of at most {self.limit} zeros and "
                         "ones built from [..], +, * and parentheses, e.g. ([0]*3+[1]*58)", source=self.source)

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def expr(self) -> Any:
        value = self.term()
        while self.peek() == "+":
            self.pos += 1
            right = self.term()
            if isinstance(value, list) != isinstance(right, list):
                raise self.error()
            value = value + right
            self.check(value)
        return value

    def term(self) -> Any:
        value = self.factor()
        while self.peek() == "*":
            self.pos += 1
            right = self.factor()
            count, seq = (right, value) if isinstance(value, list) else (value, right)
            if isinstance(count, list) or (isinstance(seq, list) and len(seq) * count > self.limit):
                raise self.error()
            value = seq * count
            self.check(value)
        return value

    def factor(self) -> Any:
        c = self.peek()
        if c == "(":
            self.depth += 1
            if self.depth > 64:
                raise self.error()
            self.pos += 1
            value = self.expr()
            if self.peek() != ")":
                raise self.error()
            self.pos += 1
            self.depth -= 1
            return value
        if c == "[":
            self.pos += 1
            items = []
            while self.peek() != "]":
                if items and self.peek() == ",":
                    self.pos += 1
                items.append(self.number())
                self.check(items)
            self.pos += 1
            return items
        return self.number()

    def number(self) -> int:
        digits = _DIGITS.match(self.text, self.pos)
        if digits is None:
            raise self.error()
        self.pos = digits.end()
        return int(digits.group())

    def check(self, value: Any) -> None:
        if (isinstance(value, list) and len(value) > self.limit) or (isinstance(value, int) and value > 10**9):
            raise self.error()


def moe_layer_pattern(pattern: list[int], flag: str, text: str, source: str) -> tuple[int, int]:
    """(first_k_dense, moe_every) of a per-layer MoE pattern, if moesim's rule (layer i is MoE when i >= k and
    (i - k) % every == 0) gives exactly that pattern."""
    ones = [i for i, v in enumerate(pattern) if v]
    if not ones:
        raise SpecError(flag, text, "a pattern with at least one MoE layer (a 1)", source=source)
    k = ones[0]
    every = ones[1] - k if len(ones) > 1 else max(1, len(pattern) - k)
    if pattern != [int(i >= k and (i - k) % every == 0) for i in range(len(pattern))]:
        raise SpecError(flag, text, "a pattern moesim can express: the first k layers dense, then every n-th layer "
                        "MoE from layer k on (model.first_k_dense, model.moe_every)", source=source)
    return k, every


# ------------------------------------------------------------------------------------------------ mapping

def import_megatron_args(path: Path, *, name: str, base_dir: Path, profile: str = DEFAULT_PROFILE,
                         nodes: int | None = None) -> MegatronImport:
    """Read a Megatron-LM command line or arguments file into a validated scenario document. `base_dir`: where the
    scenario will be written (a profile given as a path is written relative to it)."""
    return parse_megatron_args(read_args_text(path), str(path), name=name, base_dir=base_dir, profile=profile,
                               nodes=nodes)


def parse_megatron_args(text: str, source: str, *, name: str, base_dir: Path, profile: str = DEFAULT_PROFILE,
                        nodes: int | None = None) -> MegatronImport:
    launcher, tokens, skipped = split_command(tokenize(text, source), source)
    if not tokens:
        raise SpecError("", "no Megatron-LM flags", "a training command line (torchrun ... pretrain_gpt.py --flag "
                        "value ...) or an arguments file of --flag value lines", source=source)
    values, order, warnings = parse_flags(tokens, source)
    r = _Reader(values, source, skipped + warnings)
    _renames(r)
    cluster, gpus_per_node, where = _cluster(r, launcher, profile, nodes, base_dir)
    tp = r.int("--tensor-model-parallel-size", 1)
    doc: dict[str, Any] = {"name": name, "cluster": cluster, "model": _model(r, tp)}
    doc["layout"] = _layout(r, doc["model"]["num_layers"], cluster["nodes"] * gpus_per_node, where)
    doc["training"] = _training(r, doc["layout"]["dp"])
    doc["gate"], doc["comm"], doc["routing"] = _gate(r), _comm(r), _routing(r)
    hint = "" if r.given("--expert-tensor-parallel-size") or tp == 1 else \
        f" (--expert-tensor-parallel-size not given: Megatron-LM's default is the tp, {tp})"
    scenario = _validate(doc, name, base_dir, source, where, hint)
    preset = _preset_of(scenario)
    if preset is not None:  # written as the preset, and named after it
        doc["model"], scenario = {"preset": preset}, scenario.replace(model=MODEL_PRESETS[preset])
    r.warnings += [f"{line}; moesim simulates it as written" for line in megatron_refusals(scenario)]
    return MegatronImport(doc, scenario, tuple(r.warnings), tuple(order),
                          tuple(f for f in order if f not in MAPPED_FLAGS))


def _renames(r: _Reader) -> None:
    for old, new in _RENAMES.items():
        if old in r.values:
            if new in r.values and r.values[new] != r.values[old]:
                raise r.contradiction(old, new)
            r.values.setdefault(new, r.values[old])
            r.warnings.append(f"{old}: old name (refused or gone in Megatron-LM d98e8a6); read as {new} "
                              f"{' '.join(r.values[old])}")


def _cluster(r: _Reader, launcher: list[_Token], profile: str, nodes: int | None,
             base_dir: Path) -> tuple[dict, int, str]:
    """({profile, nodes}, GPUs per node, where the world size came from)."""
    path = resolve_profile(profile, Path.cwd())
    if not is_file(path):
        raise SpecError("--profile", profile, f"a profile name ({', '.join(available_profiles())}) or a path to a "
                                              "profile YAML file")
    gpn = load_profile(path).node.gpus_per_node
    named = not (profile.endswith((".yaml", ".yml")) or "/" in profile)
    ref = profile if named else os.path.relpath(path.resolve(), base_dir.resolve())
    nnodes, nproc, launched = launcher_world(launcher, r.source)
    if nodes is not None:
        if nodes < 1:
            raise SpecError("--nodes", nodes, "a number of nodes >= 1")
        if nnodes is not None and isinstance(nproc, int) and nnodes * nproc != nodes * gpn:
            r.warnings.append(f"{launched}: a world of {nnodes * nproc} GPUs; --nodes {nodes} ({nodes * gpn} GPUs "
                              f"of {profile}) counts")
        return {"profile": ref, "nodes": nodes}, gpn, f"--nodes {nodes} x {gpn} GPUs per node"
    if nnodes is None:
        raise SpecError("world size", None, "--nodes N on the moesim command line, or a torchrun launcher with "
                        "--nnodes and --nproc-per-node in the file: Megatron-LM takes the data-parallel size from "
                        "the world size", source=r.source)
    per = gpn if isinstance(nproc, str) else nproc
    if (nnodes * per) % gpn:
        raise SpecError(launched, nnodes * per, f"a world size that fills whole {profile} nodes of {gpn} GPUs (or "
                                                "pass --nodes and --profile to moesim import)", source=r.source)
    if per != gpn:
        r.warnings.append(f"{launched}: {per} processes per node; the scenario has {nnodes * per // gpn} {profile} "
                          f"nodes of {gpn} GPUs")
    return {"profile": ref, "nodes": nnodes * per // gpn}, gpn, launched


def _model(r: _Reader, tp: int) -> dict:
    layers, hidden = r.int("--num-layers"), r.int("--hidden-size")
    m: dict[str, Any] = {"name": "megatron-import", "num_layers": layers, "hidden_size": hidden,
                         "num_attention_heads": r.int("--num-attention-heads")}
    _attention(r, m)
    ffn = _activation(r, m)
    _experts(r, m, ffn)
    m["vocab_size"] = _vocab(r, tp)
    m["tie_word_embeddings"] = not r.switch("--untie-embeddings-and-output-weights")
    m["num_mtp_layers"] = r.int("--mtp-num-layers", 0, minimum=0)
    _window(r, m)
    if not r.switch("--disable-bias-linear"):
        r.warnings.append("--disable-bias-linear: not given, so Megatron-LM's linear layers keep biases (its "
                          "default); moesim counts none (Megatron-LM refuses MoE biases with expert tensor "
                          "parallelism > 1)")
    return m


def _attention(r: _Reader, m: dict) -> None:
    heads = m["num_attention_heads"]
    mla = ("--q-lora-rank", "--kv-lora-rank", "--qk-head-dim", "--qk-pos-emb-head-dim", "--v-head-dim")
    if r.switch("--multi-latent-attention"):
        if r.switch("--group-query-attention"):
            raise r.contradiction("--group-query-attention", "--multi-latent-attention")
        m.update(num_kv_heads=heads, q_lora_rank=r.int(mla[0], None), kv_lora_rank=r.int(mla[1], 32),
                 qk_nope_head_dim=r.int(mla[2], 128), qk_rope_head_dim=r.int(mla[3], 64), v_head_dim=r.int(mla[4], 128))
        if r.given("--kv-channels"):
            r.warnings.append("--kv-channels: ignored with --multi-latent-attention (its widths are --qk-head-dim, "
                              "--qk-pos-emb-head-dim and --v-head-dim)")
    else:
        r.warnings += [f"{f}: ignored without --multi-latent-attention" for f in mla if r.given(f)]
        if r.switch("--group-query-attention"):
            m["num_kv_heads"] = r.int("--num-query-groups", 1)
        else:
            m["num_kv_heads"] = heads
            if r.given("--num-query-groups"):
                r.warnings.append("--num-query-groups: ignored without --group-query-attention (Megatron-LM: MHA)")
        head_dim = r.int("--kv-channels", None)
        if head_dim is None and m["hidden_size"] % heads:
            raise r.error("--kv-channels", None, f"the head width: --hidden-size {m['hidden_size']} is not a multiple "
                          f"of --num-attention-heads {heads} (Megatron-LM asserts that without --kv-channels)")
        m["head_dim"] = head_dim or m["hidden_size"] // heads
    softmax = r.choice("--softmax-type", ("learnable", "vanilla", "off-by-one"), "vanilla")
    m["attention_sinks"] = softmax == "learnable"
    if softmax == "off-by-one":
        r.warnings.append("--softmax-type off-by-one: not modelled (a fixed offset, no parameters)")
    position = r.choice("--position-embedding-type", ("learned_absolute", "rope", "mrope", "relative", "none"),
                        "learned_absolute")
    if position not in ("rope", "none"):
        r.warnings.append(f"--position-embedding-type {position}: not modelled (moesim counts rotary embeddings: no "
                          "position-embedding parameters); Megatron-LM's default is learned_absolute")
    r.choice("--normalization", ("LayerNorm", "RMSNorm"), None)  # norms are negligible in moesim either way


def _activation(r: _Reader, m: dict) -> int:
    """Sets the activation; returns the FFN width (--ffn-hidden-size or Megatron-LM's default)."""
    chosen = [f for f in ("--swiglu", "--quick-geglu", "--squared-relu") if r.switch(f)]
    if len(chosen) > 1:
        raise r.contradiction(chosen[1], chosen[0])
    m["activation"] = {"--swiglu": "swiglu", "--quick-geglu": "geglu"}.get(chosen[0] if chosen else "", "gelu")
    if chosen == ["--squared-relu"]:
        r.warnings.append("--squared-relu: timed as a two-matrix FFN like gelu (moesim has no squared ReLU)")
    hidden = m["hidden_size"]
    return r.int("--ffn-hidden-size", int((4 * hidden * 2 / 3) / 64) * 64 if chosen == ["--swiglu"] else 4 * hidden)


def _experts(r: _Reader, m: dict, ffn: int) -> None:
    if not r.given("--num-experts"):
        raise r.error("--num-experts", None, "the routed experts per MoE layer: moesim simulates MoE models "
                                             "(without --num-experts Megatron-LM builds a dense model)")
    layers, expert_ffn = m["num_layers"], r.int("--moe-ffn-hidden-size", ffn)
    m.update(num_experts=r.int("--num-experts"), top_k=r.int("--moe-router-topk", 2), expert_ffn_size=expert_ffn)
    shared = r.int("--moe-shared-expert-intermediate-size", None)
    if shared is not None and shared % expert_ffn:
        raise r.error("--moe-shared-expert-intermediate-size", shared, f"a multiple of --moe-ffn-hidden-size "
                      f"({expert_ffn}): moesim's shared experts are each as wide as a routed expert")
    m["num_shared_experts"] = (shared or 0) // expert_ffn
    text = r.text("--moe-layer-freq", "1")
    if "[" in text:
        pattern = pattern_list(text, "--moe-layer-freq", layers, r.source)
        first, every = moe_layer_pattern(pattern, "--moe-layer-freq", text, r.source)
    else:
        first, every = 0, r.int("--moe-layer-freq", 1)
    m.update(first_k_dense=first, moe_every=every)
    has_dense = first > 0 or (every > 1 and layers - first > 1)
    explicit = r.given("--ffn-hidden-size") and ffn != expert_ffn
    m["dense_ffn_size"] = ffn if has_dense or explicit else 0
    if not r.switch("--moe-grouped-gemm"):
        r.warnings.append("--moe-grouped-gemm: not given, so Megatron-LM runs one GEMM per local expert; moesim "
                          "times each layer's experts as one grouped GEMM")


def _vocab(r: _Reader, tp: int) -> int:
    padded, vocab = r.int("--padded-vocab-size", None), r.int("--vocab-size", None)
    if padded is not None:
        if vocab is not None and padded < vocab:
            raise r.contradiction("--padded-vocab-size", f"--vocab-size {vocab} (larger)")
        return padded
    if vocab is None:
        raise r.error("--vocab-size", None, "the vocabulary size (--vocab-size or --padded-vocab-size): moesim reads "
                                            "no tokenizer files")
    multiple = r.int("--make-vocab-size-divisible-by", 128) * tp
    padded = -(-vocab // multiple) * multiple
    if padded != vocab:
        r.warnings.append(f"--vocab-size {vocab}: padded to {padded}, a multiple of --make-vocab-size-divisible-by "
                          f"x tp = {multiple}, as Megatron-LM pads it")
    return padded


def _window(r: _Reader, m: dict) -> None:
    size, skip = r.text("--window-size"), r.text("--window-attn-skip-freq")
    if size is None:
        if skip is not None:
            r.warnings.append("--window-attn-skip-freq: ignored without --window-size")
        return
    parts = size.strip("()").split(",")
    if len(parts) != 2 or not all(re.fullmatch(r"-?[0-9]{1,9}", p.strip()) for p in parts) \
            or int(parts[0]) < 0 or int(parts[1]) != 0:
        raise r.error("--window-size", size, "LEFT,0: a causal window of LEFT earlier keys (moesim's "
                                             "model.sliding_window is LEFT + 1, the query's own key included)")
    m["sliding_window"] = int(parts[0]) + 1
    if skip is not None and "[" in skip:
        pattern = pattern_list(skip, "--window-attn-skip-freq", m["num_layers"], r.source)
        full = [i for i, windowed in enumerate(pattern) if not windowed]
        every = full[0] + 1 if full else None
        if every is not None and (every < 2 or pattern != [int((i + 1) % every != 0) for i in range(len(pattern))]):
            raise r.error("--window-attn-skip-freq", skip, "a pattern moesim can express: full attention on every "
                          "n-th layer (n >= 2), the others windowed (model.full_attention_every)")
        m["full_attention_every"] = every
    elif skip is not None:
        m["full_attention_every"] = r.int("--window-attn-skip-freq", minimum=2)


def _layout(r: _Reader, layers: int, world: int, where: str) -> dict:
    tp, pp = r.int("--tensor-model-parallel-size", 1), r.int("--pipeline-model-parallel-size", 1)
    cp, ep = r.int("--context-parallel-size", 1), r.int("--expert-model-parallel-size", 1)
    etp = r.int("--expert-tensor-parallel-size", tp)  # Megatron-LM: None -> tp
    if r.switch("--moe-extended-tp"):
        if r.given("--expert-tensor-parallel-size"):
            raise r.contradiction("--moe-extended-tp", "--expert-tensor-parallel-size")
        r.warnings.append(f"--moe-extended-tp: old flag (replaced by --expert-tensor-parallel-size in core 0.10.0); "
                          f"read as --expert-tensor-parallel-size {tp * ep} --expert-model-parallel-size 1")
        etp, ep = tp * ep, 1
    for flag in ("--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split",
                 "--pipeline-model-parallel-layout"):
        if r.given(flag):
            raise r.error(flag, r.text(flag, True), "not given: moesim splits only transformer layers over the "
                          "stages; write the split as --decoder-first/last-pipeline-num-layers and "
                          "--num-virtual-stages-per-pipeline-rank")
    first = r.int("--decoder-first-pipeline-num-layers", None)
    last = r.int("--decoder-last-pipeline-num-layers", None)
    if world % (tp * cp * pp):
        raise r.error("--tensor-model-parallel-size", f"tp x cp x pp = {tp} x {cp} x {pp} = {tp * cp * pp}",
                      f"a divisor of the world size {world} ({where})")
    if tp > 1 and not r.switch("--sequence-parallel"):
        r.warnings.append("--sequence-parallel: not given with tp > 1; moesim always simulates sequence parallelism "
                          "with tensor parallelism (Megatron-LM warns about MoE without it)")
    layout = {"tp": tp, "cp": cp, "pp": pp, "dp": world // (tp * cp * pp), "ep": ep, "etp": etp,
              "vpp": _vpp(r, layers, pp, first, last),
              "order": "tp-cp-ep-pp-dp" if r.switch("--use-tp-pp-dp-mapping") else "tp-cp-ep-dp-pp"}
    layout.update({k: v for k, v in (("first_stage_layers", first), ("last_stage_layers", last)) if v is not None})
    return layout


def _vpp(r: _Reader, layers: int, pp: int, first: int | None, last: int | None) -> int:
    per_stage, stages = "--num-layers-per-virtual-pipeline-stage", "--num-virtual-stages-per-pipeline-rank"
    if r.given(per_stage) and r.given(stages):
        raise r.contradiction(per_stage, stages)
    if r.given(stages):
        return r.int(stages)
    if not r.given(per_stage):
        return 1
    if first is not None or last is not None:
        raise r.contradiction(per_stage, "--decoder-first/last-pipeline-num-layers (Megatron-LM: use "
                              "--num-virtual-stages-per-pipeline-rank with an uneven split)")
    size = r.int(per_stage)
    if layers % pp or (layers // pp) % size:
        raise r.error(per_stage, size, f"a divisor of the layers per pipeline stage (--num-layers {layers} / "
                                       f"--pipeline-model-parallel-size {pp})")
    return layers // pp // size


def _training(r: _Reader, dp: int) -> dict:
    micro, seq = r.int("--micro-batch-size"), r.int("--seq-length")
    max_positions = r.int("--max-position-embeddings", None)
    if max_positions is not None and max_positions < seq:
        raise r.contradiction("--max-position-embeddings", f"--seq-length {seq} (larger; Megatron-LM asserts "
                                                           "max-position-embeddings >= seq-length)")
    dtype, recipe = _precision(r)
    recompute, modules = _recompute(r)
    training = {"global_batch_size": r.int("--global-batch-size", micro * dp), "seq_len": seq,
                "micro_batch_size": micro, "dtype": dtype.value, "grad_dtype": _grad_dtype(r, dtype).value,
                "optimizer": {"name": "adam", "state_bytes_per_param": _optimizer_state(r, dtype),
                              "distributed": r.switch("--use-distributed-optimizer")},
                "recompute": recompute}
    if dtype is Dtype.FP8:
        training["fp8_recipe"] = recipe
    if modules is not None:
        training["recompute_modules"] = modules
    return training


def _precision(r: _Reader) -> tuple[Dtype, str]:
    bf16, fp16 = r.switch("--bf16"), r.switch("--fp16")
    if bf16 and fp16:
        raise r.contradiction("--fp16", "--bf16")
    if r.given("--fp4-format"):
        raise r.error("--fp4-format", r.text("--fp4-format"), "not given: moesim has no fp4 GEMM rates")
    fp8 = r.choice("--fp8-format", ("e4m3", "hybrid"), None)
    recipe = r.choice("--fp8-recipe", ("tensorwise", "delayed", "mxfp8", "blockwise", "custom"), "delayed")
    if recipe == "custom":
        raise r.error("--fp8-recipe", recipe, "tensorwise, delayed, mxfp8 or blockwise: moesim has no cost for a "
                                              "custom recipe")
    if fp8 is None:
        if r.given("--fp8-recipe"):
            r.warnings.append("--fp8-recipe: ignored without --fp8-format")
        return (Dtype.BF16 if bf16 else Dtype.FP16 if fp16 else Dtype.FP32), recipe
    if not (bf16 or fp16):
        r.warnings.append("--fp8-format without --bf16: Megatron-LM keeps fp32 weights; moesim's fp8 keeps bf16 "
                          "weights beside the fp8 copies")
    return Dtype.FP8, recipe


def _grad_dtype(r: _Reader, dtype: Dtype) -> Dtype:
    """Megatron-LM (validate_args @ 000c4ac): with --bf16, gradients accumulate and reduce in fp32 unless
    --grad-reduce-in-bf16 or --main-grads-dtype bf16; with --fp16, in fp16 unless
    --accumulate-allreduce-grads-in-fp32."""
    in_bf16, in_fp32 = r.switch("--grad-reduce-in-bf16"), r.switch("--accumulate-allreduce-grads-in-fp32")
    main = r.choice("--main-grads-dtype", ("fp32", "bf16"), "fp32")
    if in_fp32 and (in_bf16 or main == "bf16"):
        raise r.contradiction("--accumulate-allreduce-grads-in-fp32",
                              "--grad-reduce-in-bf16" if in_bf16 else "--main-grads-dtype bf16")
    if r.switch("--bf16"):
        return Dtype.BF16 if in_bf16 or main == "bf16" else Dtype.FP32
    if in_bf16:
        r.warnings.append("--grad-reduce-in-bf16: ignored without --bf16")
    return Dtype.FP16 if r.switch("--fp16") and not in_fp32 else Dtype.FP32


def _optimizer_state(r: _Reader, dtype: Dtype) -> float:
    """Adam's state per parameter: fp32 main weights (none when the weights are fp32 already) and two moments, or
    the precision-aware optimizer's dtypes."""
    optimizer = r.choice("--optimizer", ("adam", "sgd", "muon", "dist_muon"), "adam")
    if optimizer != "adam":
        raise r.error("--optimizer", optimizer, "adam: moesim models Adam's optimizer state only")
    size = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
    kinds = ("fp32", "fp16", "bf16", "fp8")
    flags = ("--main-params-dtype", "--exp-avg-dtype", "--exp-avg-sq-dtype")
    if r.switch("--use-precision-aware-optimizer"):
        main = r.choice(flags[0], ("fp32", "fp16"), "fp32")
        return float(size[main] + size[r.choice(flags[1], kinds, "fp32")] + size[r.choice(flags[2], kinds, "fp32")])
    r.warnings += [f"{f}: ignored without --use-precision-aware-optimizer" for f in flags if r.given(f)]
    return 8.0 if dtype is Dtype.FP32 else 12.0


def _recompute(r: _Reader) -> tuple[str, list[str] | None]:
    granularity = r.choice("--recompute-granularity", ("full", "selective"), None)
    method = r.choice("--recompute-method", ("uniform", "block"), None)
    count, modules = r.int("--recompute-num-layers", None), r.values.get("--recompute-modules")
    for flag, reading in (("--recompute-activations", "selective"), ("--checkpoint-activations", "full")):
        if r.switch(flag):
            if granularity not in (None, reading):
                raise r.contradiction(flag, f"--recompute-granularity {granularity}")
            granularity = reading
    if r.switch("--checkpoint-activations"):
        r.warnings.append("--checkpoint-activations: old flag (Megatron-LM exits on it); read as "
                          "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1")
        method, count = method or "uniform", count or 1
    if r.switch("--moe-layer-recompute") and granularity != "full":
        r.warnings.append("--moe-layer-recompute: deprecated; read as --recompute-granularity selective with "
                          "module moe added")
        granularity, modules = "selective", [*(modules or ["core_attn"]), *(["moe"] if "moe" not in (modules or [])
                                                                             else [])]
    if granularity == "full":
        if modules is not None:
            raise r.contradiction("--recompute-modules", "--recompute-granularity full")
        if method is None or count is None:
            raise r.error("--recompute-granularity", "full", "--recompute-method and --recompute-num-layers with it "
                                                             "(Megatron-LM refuses full recompute without them)")
        if (method, count) != ("uniform", 1):
            r.warnings.append(f"--recompute-method {method} --recompute-num-layers {count}: moesim recomputes every "
                              "layer from its own input (uniform, 1 layer per unit)")
        return Recompute.FULL.value, None
    if granularity == "selective":
        if method is not None or count is not None:
            raise r.contradiction("--recompute-method" if method else "--recompute-num-layers",
                                  "--recompute-granularity selective (Megatron-LM refuses a method with it)")
        known = [m.value for m in RecomputeModule]
        for module in modules or []:
            if module not in known:
                raise r.error("--recompute-modules", module, f"one of {', '.join(known)}")
        return Recompute.SELECTIVE.value, list(modules or ["core_attn"])
    r.warnings += [f"{f}: ignored without --recompute-granularity" for f in
                   ("--recompute-method", "--recompute-num-layers", "--recompute-modules") if r.given(f)]
    return Recompute.NONE.value, None


_LOAD_BALANCING = ("aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "quantile_balancing", "none")


def _gate(r: _Reader) -> dict:
    factor = r.float("--moe-expert-capacity-factor")
    if factor is not None and factor <= 0:
        raise r.error("--moe-expert-capacity-factor", r.text("--moe-expert-capacity-factor"), "a number > 0 (leave "
                      "the flag out for dropless routing)")
    types = r.values.get("--moe-router-load-balancing-type", ["aux_loss"])
    for kind in types:
        if kind not in _LOAD_BALANCING:
            raise r.error("--moe-router-load-balancing-type", kind, f"one of {', '.join(_LOAD_BALANCING)}")
    if factor is not None and {"sinkhorn", "quantile_balancing"} & set(types):
        raise r.contradiction("--moe-expert-capacity-factor", "--moe-router-load-balancing-type sinkhorn or "
                              "quantile_balancing (Megatron-LM allows a capacity factor only with the aux-loss types "
                              "or none)")
    return {"capacity_factor": factor,
            "drop_policy": r.choice("--moe-token-drop-policy", ("probs", "position"), "probs"),
            "pad_to_capacity": r.switch("--moe-pad-expert-input-to-capacity")}


def _comm(r: _Reader) -> dict:
    flag, backend_flag = "--moe-token-dispatcher-type", "--moe-flex-dispatcher-backend"
    dispatcher = r.choice(flag, ("allgather", "alltoall", "flex", "alltoall_seq"), "allgather")
    if dispatcher == "alltoall_seq":
        r.warnings.append(f"{flag} alltoall_seq: removed from Megatron-LM (last in core 0.12.x); read as alltoall")
        dispatcher = "alltoall"
    backend = r.choice(backend_flag, ("deepep", "hybridep", "ncclep"), None)
    if r.switch("--moe-enable-deepep"):
        if dispatcher != "flex" and r.given(flag):
            raise r.contradiction("--moe-enable-deepep", f"{flag} {dispatcher} (DeepEP needs flex)")
        if backend not in (None, "deepep"):
            raise r.contradiction("--moe-enable-deepep", f"{backend_flag} {backend}")
        r.warnings.append(f"--moe-enable-deepep: deprecated; read as {flag} flex {backend_flag} deepep")
        dispatcher = "flex"
    if backend is not None and dispatcher != "flex":
        raise r.contradiction(backend_flag, f"{flag} {dispatcher} (the backend is the flex dispatcher's)")
    if backend in ("hybridep", "ncclep"):
        r.warnings.append(f"{backend_flag} {backend}: moesim times the flex dispatcher as DeepEP")
    a2a = r.switch("--overlap-moe-expert-parallel-comm")
    if r.switch("--delay-wgrad-compute") and not a2a:
        r.warnings.append("--delay-wgrad-compute: not modelled without --overlap-moe-expert-parallel-comm")
    return {"dispatcher": dispatcher, "overlap_grad_reduce": r.switch("--overlap-grad-reduce"),
            "overlap_param_gather": r.switch("--overlap-param-gather"),
            "tp_comm_overlap": r.switch("--tp-comm-overlap"), "moe_a2a_overlap": a2a,
            "shared_expert_overlap": r.switch("--moe-shared-expert-overlap")}


def _routing(r: _Reader) -> dict:
    """A routing preset for what the load-balancing flags say; Megatron-LM's flags cannot say how skewed the
    trained router is, so this is a starting point, reported as such."""
    if r.switch("--moe-router-force-load-balancing"):
        preset, why = "balanced", "--moe-router-force-load-balancing routes at random"
    else:
        types = r.values.get("--moe-router-load-balancing-type", ["aux_loss"])
        coeffs = [r.float("--moe-aux-loss-coeff", c) for c in r.values.get("--moe-aux-loss-coeff", ["0.0"])]
        if len(coeffs) not in (1, len(types)):
            raise r.error("--moe-aux-loss-coeff", " ".join(r.values["--moe-aux-loss-coeff"]),
                          f"one coefficient, or one per --moe-router-load-balancing-type ({len(types)})")
        coeffs = coeffs * len(types) if len(coeffs) == 1 else coeffs
        balanced = any(t.endswith("aux_loss") and c > 0 for t, c in zip(types, coeffs)) \
            or {"sinkhorn", "quantile_balancing"} & set(types) or r.switch("--moe-router-enable-expert-bias")
        preset = "aux-loss" if balanced else "no-aux-collapse"
        why = "the router is balanced (an aux loss > 0, sinkhorn or expert bias)" if balanced else \
            "no load balancing: --moe-aux-loss-coeff is 0 (Megatron-LM's default) and no expert bias"
    r.warnings.append(f"routing: preset {preset}, as {why}; Megatron-LM's flags do not say how skewed the router "
                      "is, so edit routing: in the scenario to what you measured (moesim trace fit)")
    return {"preset": preset}


def _validate(doc: dict, name: str, base_dir: Path, source: str, where: str, etp_hint: str) -> Scenario:
    """The document validated as a scenario; an error names the flag behind the key it is about."""
    try:
        return parse_scenario(doc, name, base_dir)
    except SpecError as err:
        key = err.key
        while key and key not in _FLAG_OF_PATH and key not in ("layout", "cluster"):
            key = key.rpartition(".")[0]
        flag = where if key in ("layout", "cluster") else _FLAG_OF_PATH.get(key)
        expected = err.expected + (etp_hint if key in ("layout.ep", "layout.etp", "layout.order") else "")
        raise SpecError(f"{flag} ({err.key})" if flag else err.key, err.value, expected, source=source) from None


def _preset_of(scenario: Scenario) -> str | None:
    """The model preset whose shape the scenario's model has, if any."""
    def shape(model: Any) -> dict:
        return {k: v for k, v in model.model_dump().items() if k not in ("name", "source", "preset")}

    target = shape(scenario.model)
    return next((name for name, preset in MODEL_PRESETS.items() if shape(preset) == target), None)


def megatron_refusals(sc: Scenario) -> list[str]:
    """What Megatron-LM's argument checks refuse in this scenario although moesim simulates it (interfaces.md §2;
    validate_args @ 000c4ac), one line each naming the flags."""
    lay, tr, comm, model = sc.layout, sc.training, sc.comm, sc.model
    lines = []
    if comm.overlap_param_gather and not comm.overlap_grad_reduce:
        lines.append("--overlap-param-gather without --overlap-grad-reduce: Megatron-LM refuses it (validate_args)")
    why = [text for bad, text in (
        (comm.dispatcher is TokenDispatcher.ALLGATHER, "the allgather dispatcher"),
        (tr.recompute is Recompute.FULL or tr.recomputes(RecomputeModule.MOE), "full or moe recompute"),
        (comm.shared_expert_overlap, "--moe-shared-expert-overlap"),
        (model.num_mtp_layers > 1, "more than one MTP layer"),
        (lay.pp > 1 and lay.vpp == 1, "pipeline parallelism without virtual stages"),
        (tr.dtype is Dtype.FP32, "fp32 weights (it needs --bf16 or --fp16)")) if bad]
    if comm.moe_a2a_overlap and why:
        lines.append(f"--overlap-moe-expert-parallel-comm with {', '.join(why)}: Megatron-LM refuses it "
                     "(TransformerConfig)")
    if tr.recomputes(RecomputeModule.MOE_ACT) and tr.dtype not in (Dtype.BF16, Dtype.FP8):
        lines.append("--recompute-modules moe_act needs --moe-grouped-gemm, which Megatron-LM allows only with "
                     "--bf16")
    if lay.ep > 1 and tr.dtype is Dtype.FP16:
        lines.append("--expert-model-parallel-size > 1 with --fp16: Megatron-LM refuses expert parallelism in fp16 "
                     "(validate_args)")
    return lines
