"""Published GPU memory measurements the lab's simulation is held against (docs/published-memory.md).

Each row names where the figure was published (repository + file, or paper + table), the settings it
was measured with, and the figure. `benchmarks/bench_simulation.py` puts the lab's prediction and the
error next to each. Nothing here is tuned per row: the lab simulates each row's settings as given.

Models that are not in the lab's catalog are described by the published config.json values they were
run with (only the sizes that decide memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GiB = 2**30

# bigcode/octocoder = bigcode/starcoder's architecture (config.json of bigcode/starcoder)
STARCODER = {"model_type": "gpt_bigcode", "n_embd": 6144, "n_head": 48, "n_inner": 24576, "n_layer": 40,
             "n_positions": 8192, "vocab_size": 49152, "multi_query": True, "activation_function": "gelu_pytorch_tanh",
             "layer_norm_epsilon": 1e-5, "scale_attn_weights": True, "torch_dtype": "bfloat16"}
# Qwen/Qwen-7B (remote code, "qwen"): a Llama-style block with q/k/v biases, i.e. transformers' qwen2
QWEN_7B = {"model_type": "qwen2", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 151936, "max_position_embeddings": 32768,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
# EleutherAI/gpt-neox-20b config.json
GPT_NEOX_20B = {"model_type": "gpt_neox", "hidden_size": 6144, "intermediate_size": 24576, "num_hidden_layers": 44,
                "num_attention_heads": 64, "vocab_size": 50432, "max_position_embeddings": 2048, "rotary_pct": 0.25,
                "use_parallel_residual": True, "tie_word_embeddings": False, "torch_dtype": "float16"}

# meta-llama/Llama-3.2-3B config.json (tied embeddings, llama3 rope scaling)
LLAMA_32_3B = {"model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
               "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
               "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
               "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                "original_max_position_embeddings": 8192},
               "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001,
               "torch_dtype": "bfloat16"}

# meta-llama/Llama-2-70b-hf config.json
LLAMA_2_70B = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
               "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
               "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
               "tie_word_embeddings": False, "torch_dtype": "float16"}
# 01-ai/Yi-34B config.json (a Llama block)
YI_34B = {"model_type": "llama", "hidden_size": 7168, "intermediate_size": 20480, "num_hidden_layers": 60,
          "num_attention_heads": 56, "num_key_value_heads": 8, "vocab_size": 64000, "max_position_embeddings": 4096,
          "rms_norm_eps": 1e-5, "rope_theta": 5000000.0, "hidden_act": "silu", "tie_word_embeddings": False,
          "torch_dtype": "bfloat16"}

TRANSFORMERS_DOC = ("huggingface/transformers docs/source/en/llm_tutorial_optimization.md",
                    "https://github.com/huggingface/transformers/blob/main/docs/source/en/llm_tutorial_optimization.md")
QWEN_README = ("QwenLM/Qwen README.md, 'Profiling of Memory and Speed'",
               "https://github.com/QwenLM/Qwen/blob/main/README.md")
UNSLOTH_README = ("unslothai/unsloth README.md, Llama 3.1 (8B) context-length table ('Hugging Face + FA2')",
                  "https://github.com/unslothai/unsloth/blob/main/README.md")
PEFT_METAMATHQA = ("huggingface/peft method_comparison/MetaMathQA (run.py, utils.py, results/*.json)",
                   "https://github.com/huggingface/peft/tree/main/method_comparison/MetaMathQA")
ANSWERAI_BENCH = ("AnswerDotAI/fsdp_qlora benchmarks_03_2024.md (train.py of March 2024)",
                  "https://github.com/AnswerDotAI/fsdp_qlora/blob/main/benchmarks_03_2024.md")
PEFT_FSDP_DOC = ("huggingface/peft docs/source/accelerate/fsdp.md, 'Use PEFT QLoRA and FSDP' (run_peft_qlora_fsdp.sh)",
                 "https://github.com/huggingface/peft/blob/main/docs/source/accelerate/fsdp.md")
HF_QLORA_BLOG = ("huggingface/blog 4bit-transformers-bitsandbytes.md (and its fine-tuning Colab notebook)",
                 "https://huggingface.co/blog/4bit-transformers-bitsandbytes")


# Answer.AI's train.py (March 2024) with the benchmark's template command: pure bf16 (no autocast), peft LoRA r=64,
# alpha 16, dropout 0.1 on q/k/v/gate/up/down (its "all"), adapters in the base's bf16 (peft then moved them to the
# base layer's dtype; 4-bit weights stored as bf16), no prepare_model_for_kbit_training, torch AdamW, re-entrant
# checkpointing of every decoder layer, SDPA, transformers' loss on the full logits; FSDP1 FULL_SHARD,
# use_orig_params=False, BACKWARD_PRE (the default), limit_all_gathers.
ANSWERAI_SETTINGS = {"precision": "bf16", "dtype": "bf16", "gradient_checkpointing": True, "optimizer": "adamw_torch",
                     "r": 64, "alpha": 16,
                     "targets": ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"),
                     "attn": "sdpa", "adapter_dtype": "bf16", "dropout": 0.1, "autocast": False, "loss": "logits",
                     "upcast_for_kbit": False}
ANSWERAI_STACK = "Answer.AI's own FSDP loop (train.py): pure bf16, transformers' loss on the full logits"


@dataclass(frozen=True)
class Published:
    """One published figure. kind: peak (bytes at max_memory_allocated or as reported), fits (a run that ran),
    max_seq_len (the longest sequence a card took)."""

    source: tuple[str, str]
    what: str  # the row's label
    model: str | dict  # a catalog name, or a config dict
    kind: str  # training | inference | fits | max_seq_len
    settings: dict  # TrainingSettings / InferenceSettings fields
    published: float  # bytes, or a token count (max_seq_len); fits: 1.0
    unit: str = "GiB"
    measure: str = "allocated"  # training peaks: allocated (max_memory_allocated) or reserved (max_memory_reserved)
    gpu_bytes: int | None = None  # fits / max_seq_len: the card's memory
    stack: str = ""  # how the published run differs from the lab's stack, if it does
    notes: str = ""
    extra: dict = field(default_factory=dict)  # settings of the published run's own stack, where they differ
    # several GPUs: the per-GPU figure of a run over `gpus` GPUs (lab.estimate.parallel.per_gpu_peak's arguments)
    gpus: int = 1
    sharding: str = ""  # ddp | fsdp
    fsdp: dict = field(default_factory=dict)  # strategy, offload, fsdp_version


ROWS: list[Published] = [
    # ---- inference: transformers' own tutorial, torch.cuda.max_memory_allocated() after pipeline(max_new_tokens=60)
    Published(
        TRANSFORMERS_DOC,
        "octocoder 15.5B, bf16, short prompt + 60 tokens",
        STARCODER,
        "inference",
        {"precision": "bf16", "batch_size": 1, "prompt_tokens": 20, "new_tokens": 60},
        29.0260648727417 * GiB,
        notes="prompt ≈ 20 tokens ('Question: Please write a function in Python that transforms bytes to Giga bytes.')",
    ),
    Published(
        TRANSFORMERS_DOC,
        "octocoder 15.5B, load_in_8bit (rest fp16)",
        STARCODER,
        "inference",
        {"precision": "int8", "dtype": "fp16", "batch_size": 1, "prompt_tokens": 20, "new_tokens": 60},
        15.219234466552734 * GiB,
    ),
    Published(
        TRANSFORMERS_DOC,
        "octocoder 15.5B, load_in_4bit (fp4, rest fp16)",
        STARCODER,
        "inference",
        {"precision": "fp4", "dtype": "fp16", "batch_size": 1, "prompt_tokens": 20, "new_tokens": 60},
        9.543574333190918 * GiB,
    ),
    # ---- training: Qwen-7B LoRA, batch 1, A100, flash attention 2, gradient checkpointing, bf16
    *[
        Published(
            QWEN_README,
            f"Qwen-7B LoRA bf16, r=64, seq {n}",
            QWEN_7B,
            "training",
            {
                "method": "lora",
                "precision": "bf16",
                "batch_size": 1,
                "max_length": n,
                "gradient_checkpointing": True,
                "optimizer": "adamw_torch",
                "r": 64,
                "alpha": 16,
                "targets": "all-linear",
                "attn": "sdpa",
            },
            gb * GiB,
            unit="G (as reported)",
            stack="remote-code Qwen with transformers 4.32: full fp32 logits for the loss (the lab's TRL computes "
            "log-probabilities in chunks); flash-attn 2 (the lab: SDPA's flash kernel)",
            extra={"loss": "logits"},
        )
        for n, gb in ((256, 20.1), (512, 20.4), (1024, 21.5), (2048, 23.8), (4096, 29.7), (8192, 36.6))
    ],
    # ---- training: peft's own MetaMathQA benchmark, Llama-3.2-3B bf16 on an L40S (transformers 5.13.1, peft
    # 0.19.2.dev0, torch 2.13). train_info.accelerator_memory_max = torch.cuda.max_memory_reserved() at the end of
    # the run minus the reserve after init (utils.py log_results), in bytes: a reserved figure, compared with the
    # lab's peak × (1 + the GPU verdict's fragmentation allowance). Plain loop: bf16 weights, use_amp=false (no
    # autocast), peft's fp32 adapters, lora_dropout 0, no checkpointing, torch AdamW, batch 4, transformers' loss on
    # the full logits; max_seq_length 768 truncates every row (data.py): the longest batch is taken as 4 × 768.
    *[
        Published(
            PEFT_METAMATHQA,
            f"Llama-3.2-3B {label}, batch 4 × 768 (longest), no checkpointing",
            LLAMA_32_3B,
            "training",
            {
                "method": "lora",
                "precision": "bf16",
                "batch_size": 4,
                "max_length": 768,
                "gradient_checkpointing": False,
                "optimizer": "adamw_torch",
                "attn": "sdpa",
                "adapter_dtype": "fp32",
                "dropout": 0.0,
                **lora,
            },
            float(peak),
            unit="B",
            measure="reserved",
            stack="a plain PyTorch loop: transformers' loss on the full logits, no autocast (bf16 weights, fp32 "
            "adapters: peft casts each adapted layer's input to fp32)",
            notes=f"results/lora--llama-3.2-3B-{name}.json, train_info.accelerator_memory_max",
            extra={"loss": "logits", "autocast": False},
        )
        for name, label, lora, peak in (
            (
                "rank32",
                "LoRA r=32 on q_proj, v_proj",
                {"r": 32, "alpha": 64, "targets": ("q_proj", "v_proj")},
                22_292_725_760,
            ),
            (
                "rank64",
                "LoRA r=64 on q_proj, v_proj",
                {"r": 64, "alpha": 128, "targets": ("q_proj", "v_proj")},
                22_552_772_608,
            ),
            (
                "rank64-rslora",
                "rsLoRA r=64 on q_proj, v_proj",
                {"r": 64, "alpha": 64, "targets": ("q_proj", "v_proj")},
                22_561_161_216,
            ),
            (
                "rank32-dora",
                "DoRA r=32 on q_proj, v_proj",
                {"r": 32, "alpha": 64, "targets": ("q_proj", "v_proj"), "use_dora": True},
                24_532_484_096,
            ),
            (
                "rank10-target-mlp",
                "LoRA r=10 on gate_proj, up_proj, down_proj",
                {"r": 10, "alpha": 20, "targets": ("gate_proj", "up_proj", "down_proj")},
                24_698_159_104,
            ),
        )
    ],
    Published(
        PEFT_METAMATHQA,
        "Llama-3.2-3B full fine-tuning, batch 4 × 768 (longest), no checkpointing",
        LLAMA_32_3B,
        "training",
        {
            "method": "full",
            "precision": "bf16",
            "batch_size": 4,
            "max_length": 768,
            "gradient_checkpointing": False,
            "optimizer": "adamw_torch",
            "attn": "sdpa",
        },
        38_868_615_168.0,
        unit="B",
        measure="reserved",
        stack="a plain PyTorch loop: transformers' loss on the full logits, no autocast, bf16 weights, "
        "gradients and AdamW states",
        notes="results/full-finetuning--llama-3.2-3B-lr_0.00001.json, train_info.accelerator_memory_max "
        "(the same data and longest batch as the LoRA rows: a check of that assumption)",
        extra={"loss": "logits", "autocast": False},
    ),
    # ---- fit results
    Published(
        HF_QLORA_BLOG,
        "GPT-NeoX-20B QLoRA on a free Colab T4 (it ran)",
        GPT_NEOX_20B,
        "fits",
        {
            "method": "qlora",
            "precision": "nf4-dq",
            "dtype": "fp16",
            "batch_size": 1,
            "max_length": 256,
            "gradient_checkpointing": True,
            "optimizer": "paged_adamw_8bit",
            "r": 8,
            "alpha": 32,
            "targets": "query_key_value",
            "adapter_dtype": "fp32",
        },
        1.0,
        unit="fits",
        gpu_bytes=15_360 * 2**20,
        notes="notebook settings: r=8 on query_key_value, batch 1, fp16, paged_adamw_8bit, checkpointing; "
        "english_quotes rows are short: 256 tokens is an upper bound",
    ),
    *[
        Published(
            UNSLOTH_README,
            f"Llama-3.1-8B QLoRA r=32, longest sequence on {gb} GB",
            "Llama-3.1-8B",
            "max_seq_len",
            {
                "method": "qlora",
                "precision": "nf4",
                "batch_size": 1,
                "gradient_checkpointing": True,
                "optimizer": "adamw_8bit",
                "r": 32,
                "targets": "all-linear",
                "adapter_dtype": "fp32",
            },
            float(tokens),
            unit="tokens",
            gpu_bytes=gb * GiB,
            stack="transformers of mid-2024: full fp32 logits (128,256 × seq × 4 B, several copies) for the loss; "
            "the lab's TRL 1.16 never builds them",
            extra={"loss": "logits"},
        )
        for gb, tokens in ((8, 0), (12, 932), (16, 2551), (24, 5789), (40, 12264), (48, 15502), (80, 28454))
    ],
    # ---- several GPUs: per-GPU peaks of FSDP runs. measure: allocated (max_memory_allocated), reserved
    # (max_memory_reserved: the lab's per-GPU peak × (1 + the FSDP allowance, lab.estimate.gpus)), or "in use" (as
    # nvidia-smi shows it: that plus the CUDA context).
    *[
        Published(
            ANSWERAI_BENCH,
            f"Llama-2-7B {method}, FSDP on 2 × RTX 3090, batch {batch} × {seq}",
            "Llama-2-7B",
            "training",
            {**ANSWERAI_SETTINGS, "method": method.lower(), "batch_size": batch, "max_length": seq,
             **({"precision": "nf4-dq"} if method == "QLoRA" else {})},
            gib * GiB,
            measure=measure,
            gpus=2,
            sharding="fsdp",
            fsdp={"strategy": "full_shard", "offload": False},
            stack=ANSWERAI_STACK,
            notes=note,
        )
        for method, batch, seq, gib, measure, note in (
            ("LoRA", 1, 512, 8.28, "allocated", "'the peak allocated memory is 8.28 GiB vs 9.16 GiB'"),
            ("LoRA", 1, 2048, 9.16, "allocated", "the same sentence"),
            ("LoRA", 4, 2048, 16.14, "reserved", "'Peak Memory' table (batch size)"),
            ("LoRA", 6, 2048, 21.35, "reserved", "'Peak Memory' table (batch size)"),
            ("QLoRA", 1, 512, 4.98, "reserved", "'Peak Memory' table; 3.72 GiB already reserved after wrapping"),
            ("QLoRA", 1, 2048, 5.21, "reserved", "'Peak Memory' table"),
            ("QLoRA", 4, 2048, 11.22, "reserved", "'Peak Memory' table (batch size)"),
            ("QLoRA", 10, 2048, 20.97, "reserved", "'Peak Memory' table (batch size)"),
        )
    ],
    *[
        Published(
            ANSWERAI_BENCH,
            f"{name} QLoRA, FSDP on 2 × RTX 3090, batch {batch} × 2048, CPU offload {'on' if offload else 'off'}",
            model,
            "training",
            {**ANSWERAI_SETTINGS, "method": "qlora", "precision": "nf4-dq", "batch_size": batch, "max_length": 2048},
            gib * GiB,
            measure="reserved",
            gpus=2,
            sharding="fsdp",
            fsdp={"strategy": "full_shard", "offload": offload},
            stack=ANSWERAI_STACK,
        )
        for name, model, batch, offload, gib in (
            ("Yi-34B", YI_34B, 2, False, 23.05),
            ("Yi-34B", YI_34B, 4, True, 22.98),
            ("Llama-2-70B", LLAMA_2_70B, 2, True, 14.92),
        )
    ],
    *[
        Published(
            PEFT_FSDP_DOC,
            f"Llama-2-70B QLoRA, FSDP on 2 GPUs, batch 2 × 2048 (packed), CPU offload {'on' if offload else 'off'}",
            LLAMA_2_70B,
            "training",
            {"method": "qlora", "precision": "nf4-dq", "dtype": "bf16", "batch_size": 2, "max_length": 2048,
             "gradient_checkpointing": True, "optimizer": "adamw_torch", "r": 8, "alpha": 16, "targets": "all-linear",
             "dropout": 0.1, "attn": "sdpa", "upcast_for_kbit": False, "adapter_dtype": "fp32"},
            gb * GiB,
            unit="GB (as written; taken as GiB)",
            measure="in use",
            gpus=2,
            sharding="fsdp",
            fsdp={"strategy": "full_shard", "offload": offload},
            stack="TRL's SFTTrainer of 2024: transformers' loss on the full logits; flash-attention 2 (the lab: SDPA's "
            "flash kernel)",
            notes="'the memory consumed per GPU is 19.6 GB ... When disabling CPU offloading, the GPU memory usage is "
            "35.6 GB/ GPU'",
            extra={"loss": "logits"},
        )
        for offload, gb in ((True, 19.6), (False, 35.6))
    ],
]
