"""The Megatron-LM command-line flags moesim writes (moesim.export.megatron) or reads (moesim.io.megatron_args), and
the ones it recognises on import without using them, each with the source its name was read from.

Every flag name here was read in one of two places (SOURCES):
  d98e8a6  NVIDIA/Megatron-LM d98e8a6 (2026-08-22), as ../shared/specs/interfaces.md §1 (flags, renames) and §2
           (validation rules) quote it: megatron/training/arguments.py and the TransformerConfig /
           ModelParallelConfig fields it generates flags from;
  000c4ac  NVIDIA/Megatron-LM megatron/training/arguments.py @ 000c4ac24f61159c138b0975def722c65245983c, read
           directly for the flags interfaces.md does not list (the precision, position-embedding, window and
           rank-order flags the exporter needs, and the flags recognised on import).
Flag names are matched whole (Megatron's parser has allow_abbrev=False). tests/export/test_megatron_export.py checks
that every exported flag, and every flag the importer maps, is listed here.

Roles:
  MAPPED        moesim writes or reads it (a scenario field, or a check against one);
  RENAMED       an old name the importer accepts (interfaces.md §1, "Renames and history"), with its reading;
  NOT_MODELLED  changes a real run (speed, numerics) but moesim has nothing it could set: reported and ignored;
  NO_EFFECT     data, logging, checkpoints, schedules, initialisation: no effect on a simulated step; reported
                and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = {
    "d98e8a6": "NVIDIA/Megatron-LM d98e8a6 (2026-08-22): megatron/training/arguments.py, "
               "megatron/core/transformer/transformer_config.py, megatron/core/model_parallel_config.py, as quoted "
               "by ../shared/specs/interfaces.md §1-2",
    "000c4ac": "NVIDIA/Megatron-LM megatron/training/arguments.py @ 000c4ac24f61159c138b0975def722c65245983c",
}
FLAG_NAMES_VERSION = "Megatron-LM d98e8a6"  # what messages name as the reference version

MAPPED, RENAMED, NOT_MODELLED, NO_EFFECT = "mapped", "renamed", "not modelled", "no effect"


@dataclass(frozen=True)
class Flag:
    name: str
    source: str  # a key of SOURCES
    role: str
    note: str = ""  # RENAMED: how the importer reads it; NOT_MODELLED / NO_EFFECT: what it is about


def _flags(names: str, source: str, role: str, note: str = "") -> dict[str, Flag]:
    return {name: Flag(name, source, role, note) for name in names.split()}


MEGATRON_FLAGS: dict[str, Flag] = {
    # interfaces.md §1 (d98e8a6)
    **_flags("--tensor-model-parallel-size --pipeline-model-parallel-size --context-parallel-size "
             "--expert-model-parallel-size --expert-tensor-parallel-size --num-layers-per-virtual-pipeline-stage "
             "--num-virtual-stages-per-pipeline-rank --decoder-first-pipeline-num-layers "
             "--decoder-last-pipeline-num-layers --pipeline-model-parallel-layout --sequence-parallel "
             "--micro-batch-size --global-batch-size --seq-length --num-layers --hidden-size --num-attention-heads "
             "--ffn-hidden-size --group-query-attention --num-query-groups --kv-channels --multi-latent-attention "
             "--q-lora-rank --kv-lora-rank --qk-head-dim --qk-pos-emb-head-dim --v-head-dim --swiglu "
             "--untie-embeddings-and-output-weights --disable-bias-linear --vocab-size --padded-vocab-size "
             "--make-vocab-size-divisible-by --num-experts --moe-router-topk --moe-ffn-hidden-size "
             "--moe-shared-expert-intermediate-size --moe-layer-freq --moe-router-load-balancing-type "
             "--moe-aux-loss-coeff --moe-expert-capacity-factor --moe-token-drop-policy --moe-token-dispatcher-type "
             "--moe-flex-dispatcher-backend --moe-grouped-gemm --moe-shared-expert-overlap "
             "--moe-pad-expert-input-to-capacity --moe-router-enable-expert-bias --overlap-moe-expert-parallel-comm "
             "--bf16 --fp8-format --fp8-recipe --recompute-granularity --recompute-method --recompute-num-layers "
             "--recompute-modules --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather "
             "--tp-comm-overlap --mtp-num-layers", "d98e8a6", MAPPED),
    # named in interfaces.md §2's validation rules (d98e8a6); definitions read in 000c4ac
    **_flags("--use-tp-pp-dp-mapping --max-position-embeddings --account-for-embedding-in-pipeline-split "
             "--account-for-loss-in-pipeline-split", "d98e8a6", MAPPED),
    # read in arguments.py @ 000c4ac
    **_flags("--fp16 --grad-reduce-in-bf16 --accumulate-allreduce-grads-in-fp32 --use-precision-aware-optimizer "
             "--main-grads-dtype --main-params-dtype --exp-avg-dtype --exp-avg-sq-dtype --optimizer "
             "--recompute-activations --delay-wgrad-compute --position-embedding-type --normalization "
             "--quick-geglu --squared-relu --window-size --window-attn-skip-freq --softmax-type "
             "--moe-router-force-load-balancing --fp4-format", "000c4ac", MAPPED),
    # renamed or removed (interfaces.md §1 "Renames and history"; the old definitions in 000c4ac)
    "--moe-extended-tp": Flag("--moe-extended-tp", "d98e8a6", RENAMED,
                              "replaced by --expert-tensor-parallel-size in core 0.10.0, gone in 0.16.0: each expert "
                              "split over the tp x ep ranks, read as --expert-tensor-parallel-size tp x ep and "
                              "--expert-model-parallel-size 1"),
    "--moe-enable-deepep": Flag("--moe-enable-deepep", "d98e8a6", RENAMED,
                                "deprecated (core 0.12.0): read as --moe-token-dispatcher-type flex "
                                "--moe-flex-dispatcher-backend deepep"),
    "--moe-layer-recompute": Flag("--moe-layer-recompute", "d98e8a6", RENAMED,
                                  "deprecated: read as --recompute-granularity selective with module moe added"),
    "--checkpoint-activations": Flag("--checkpoint-activations", "d98e8a6", RENAMED,
                                     "rejected by Megatron-LM since long ago: read as --recompute-granularity full "
                                     "--recompute-method uniform --recompute-num-layers 1"),
    "--batch-size": Flag("--batch-size", "d98e8a6", RENAMED, "rejected by Megatron-LM: read as --micro-batch-size"),
    "--model-parallel-size": Flag("--model-parallel-size", "d98e8a6", RENAMED,
                                  "rejected by Megatron-LM: read as --tensor-model-parallel-size"),
    "--virtual-pipeline-model-parallel-size": Flag(
        "--virtual-pipeline-model-parallel-size", "d98e8a6", RENAMED,
        "no flag at d98e8a6 (existed only in Feb 2021): read as --num-virtual-stages-per-pipeline-rank"),
    "--use-mcore-models": Flag("--use-mcore-models", "d98e8a6", RENAMED, "deprecated and ignored by Megatron-LM"),
    "--moe-deepep-num-sms": Flag("--moe-deepep-num-sms", "d98e8a6", RENAMED,
                                 "now --moe-flex-dispatcher-num-sms; SMs given to communication are not modelled"),
    "--moe-hybridep-num-sms": Flag("--moe-hybridep-num-sms", "d98e8a6", RENAMED,
                                   "now --moe-flex-dispatcher-num-sms; SMs given to communication are not modelled"),
    "--moe-router-padding-for-fp8": Flag("--moe-router-padding-for-fp8", "d98e8a6", RENAMED,
                                         "alias of --moe-router-padding-for-quantization, which is not modelled"),
    "--moe-use-legacy-grouped-gemm": Flag("--moe-use-legacy-grouped-gemm", "d98e8a6", RENAMED,
                                          "core 0.11.0-0.16.x only; the grouped GEMM kernel choice is not modelled"),
    # recognised, not modelled: they change a real run's speed or numerics, and moesim has no knob for them
    **_flags("--moe-router-score-function --moe-router-pre-softmax --moe-router-topk-scaling-factor "
             "--moe-router-padding-for-quantization --moe-flex-dispatcher-num-sms --moe-permute-fusion",
             "d98e8a6", NOT_MODELLED, "router numerics and fused kernels"),
    **_flags("--moe-router-num-groups --moe-router-group-topk", "d98e8a6", NOT_MODELLED,
             "group-limited routing (each token's experts on at most group-topk groups of devices or nodes): "
             "moesim's routing does not limit a token's destinations"),
    **_flags("--moe-router-dtype --moe-router-fusion --moe-z-loss-coeff --moe-input-jitter-eps "
             "--moe-apply-probs-on-input --qk-layernorm --qk-l2-norm --add-qkv-bias --attention-backend "
             "--use-flash-attn --cross-entropy-loss-fusion --cross-entropy-fusion-impl "
             "--no-gradient-accumulation-fusion --no-masked-softmax-fusion --no-bias-gelu-fusion "
             "--no-bias-swiglu-fusion --no-bias-dropout-fusion --no-rope-fusion --no-persist-layer-norm "
             "--transformer-impl --use-te-activation-func --no-rope-freq --mtp-loss-scaling-factor "
             "--cuda-graph-impl --cuda-graph-scope --enable-cuda-graph --external-cuda-graph "
             "--cpu-offloading-num-layers --optimizer-cpu-offload --optimizer-offload-fraction "
             "--use-megatron-fsdp --use-torch-fsdp2 --data-parallel-sharding-strategy "
             "--num-distributed-optimizer-instances --ddp-bucket-size --ddp-num-buckets "
             "--ddp-average-in-collective --ddp-pad-buckets-for-high-nccl-busbw --tp-comm-overlap-cfg "
             "--disable-tp-comm-overlap-ag --disable-tp-comm-overlap-rs --tp-comm-overlap-rs-dgrad "
             "--disable-tp-comm-bulk-dgrad --disable-tp-comm-bulk-wgrad --disable-tp-comm-split-ag "
             "--disable-tp-comm-split-rs --tp-comm-bootstrap-backend --cp-comm-type "
             "--hierarchical-context-parallel-sizes --no-overlap-p2p-communication "
             "--overlap-p2p-communication-warmup-flush --microbatch-group-size-per-virtual-pipeline-stage "
             "--defer-embedding-wgrad-compute --wgrad-deferral-limit --overlap-param-gather-with-optimizer-step "
             "--no-align-grad-reduce --no-align-param-gather --fp8-param-gather --first-last-layers-bf16 "
             "--num-layers-at-start-in-bf16 --num-layers-at-end-in-bf16 --fp8-margin --fp8-amax-history-len "
             "--fp8-amax-compute-algo --no-fp8-wgrad --distribute-saved-activations --manual-gc "
             "--manual-gc-interval --use-sharp --use-nccl-ub --rampup-batch-size --decrease-batch-size-if-needed "
             "--fp32-residual-connection --rotary-base --rotary-percent --rotary-interleaved --rope-type "
             "--use-rope-scaling --rope-scaling-factor --rotary-scaling-factor --mscale --mscale-all-dim "
             "--no-position-embedding --use-rotary-position-embeddings",
             "000c4ac", NOT_MODELLED, "kernels, fusions, offloading, sharding and numerics moesim does not model"),
    # recognised, no effect on a simulated step
    **_flags("--tokenizer-type", "d98e8a6", NO_EFFECT, "tokenizer"),
    **_flags("--data-path --split --train-data-path --valid-data-path --test-data-path --data-args-path "
             "--per-split-data-args-path --data-cache-path --no-mmap-bin-files --mock-data --num-workers "
             "--reset-position-ids --reset-attention-mask --eod-mask-loss --no-create-attention-mask-in-dataloader "
             "--num-dataset-builder-threads --dataloader-type --object-storage-cache-path "
             "--tokenizer-model --vocab-file --merge-file --vocab-extra-ids --tokenizer-metadata --tiktoken-pattern "
             "--tiktoken-num-special-tokens --legacy-tokenizer --trust-remote-code",
             "000c4ac", NO_EFFECT, "data and tokenizer"),
    **_flags("--lr --min-lr --lr-decay-style --lr-decay-iters --lr-decay-samples --lr-warmup-fraction "
             "--lr-warmup-iters --lr-warmup-samples --lr-warmup-init --lr-wsd-decay-style --lr-wsd-decay-iters "
             "--lr-wsd-decay-samples --decoupled-lr --decoupled-min-lr --override-opt_param-scheduler "
             "--use-checkpoint-opt_param-scheduler --attention-dropout --hidden-dropout --weight-decay "
             "--start-weight-decay --end-weight-decay --weight-decay-incr-style --clip-grad --adam-beta1 "
             "--adam-beta2 --adam-eps --sgd-momentum --seed --init-method-std --embedding-init-method-std "
             "--init-method-xavier-uniform --data-parallel-random-init --moe-router-bias-update-rate "
             "--loss-scale --initial-loss-scale --min-loss-scale --loss-scale-window --hysteresis "
             "--calculate-per-token-loss --norm-epsilon --apply-layernorm-1p --attention-softmax-in-fp32 "
             "--apply-query-key-layer-scaling --fp16-lm-cross-entropy",
             "000c4ac", NO_EFFECT, "optimisation hyperparameters and initialisation"),
    **_flags("--train-iters --train-samples --exit-interval --exit-duration-in-mins --exit-signal-handler "
             "--skip-train --eval-iters --eval-interval --full-validation --test-mode --save --load "
             "--save-interval --save-retain-interval --no-save-optim --no-save-rng --no-load-optim --no-load-rng "
             "--finetune --pretrained-checkpoint --ckpt-format --ckpt-step --use-checkpoint-args --async-save "
             "--ckpt-fully-parallel-load --ckpt-assume-constant-structure --dist-ckpt-strictness --use-dist-ckpt "
             "--auto-detect-ckpt-format --exit-on-missing-checkpoint --no-initialization "
             "--use-persistent-ckpt-worker --non-persistent-save-interval --non-persistent-ckpt-type "
             "--log-interval --log-params-norm --log-num-zeros-in-grad --log-throughput --log-progress "
             "--timing-log-level --timing-log-option --log-energy --tensorboard-dir --tensorboard-log-interval "
             "--tensorboard-queue-size --log-timers-to-tensorboard --log-validation-ppl-to-tensorboard "
             "--log-memory-to-tensorboard --log-world-size-to-tensorboard --no-log-loss-scale-to-tensorboard "
             "--wandb-project --wandb-entity --wandb-exp-name --wandb-save-dir --logging-level --log-straggler "
             "--moe-per-layer-logging --no-one-logger --one-logger-project --one-logger-run-name "
             "--config-logger-dir --profile --profile-step-start --profile-step-end --profile-ranks "
             "--use-pytorch-profiler --record-memory-history --memory-snapshot-path "
             "--no-check-for-nan-in-loss-and-grad --check-for-spiky-loss --check-for-large-grads "
             "--deterministic-mode --rerun-mode --distributed-backend --distributed-timeout-minutes --local-rank "
             "--use-cpu-initialization --enable-ft-package --calc-ft-timeouts --inprocess-restart "
             "--empty-unused-memory-level --train-sync-interval --use-legacy-models",
             "000c4ac", NO_EFFECT, "run length, evaluation, checkpoints, logging, profiling and start-up"),
}


def flag_line(flag: str) -> str:
    """What the importer says about a flag it does not map (one line, no file name): its role and why."""
    info = MEGATRON_FLAGS.get(flag)
    if info is None:
        return (f"unknown flag: not a {FLAG_NAMES_VERSION} flag moesim knows (moesim/export/megatron_flags.py; "
                "Megatron-LM matches whole names only); ignored")
    if info.role == NO_EFFECT:
        return f"ignored: no effect on a simulated step ({info.note})"
    if info.role == NOT_MODELLED:
        return f"ignored: not modelled by moesim ({info.note})"
    if info.role == RENAMED:
        return f"old name: {info.note}"
    return "ignored"
