"""``idglow train sft|dpo --config cfg.yaml [--set key=value ...]``: the two training stages.

Multi-GPU: ``accelerate launch -m idglow train sft --config cfg.yaml`` (on CPUs:
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N -m idglow train ...``). Nothing here touches
accelerate's process-wide state before the trainer's ``Accelerator`` exists: a ``PartialState()`` made first would
fix a launched run as one non-distributed process per rank.
"""

from __future__ import annotations

import argparse
import logging

from idglow.commands.common import TINY

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``idglow train`` and its stages (sft, dpo) to the command-line parser."""
    p = subparsers.add_parser("train", help="train the identity adapter (SFT, then DPO)")
    sub = p.add_subparsers(dest="train_command", metavar="STAGE")
    sub.required = True
    for stage, text in (("sft", "supervised fine-tuning on group photos (a `data build-sft` folder)"),
                        ("dpo", "group-level weighted-margin Flow-DPO on the preference export folder")):
        s = sub.add_parser(stage, help=text, description=f"{text[0].upper()}{text[1:]}. Options come from the YAML "
                           "config; --model, --adapter and --set override single options.")
        add_training_arguments(s, stage)
        s.set_defaults(func=run, stage=stage)


def add_training_arguments(s: argparse.ArgumentParser, stage: str) -> None:
    """The options of ``idglow train sft|dpo`` (and ``train-from-db``, stage ``dpo``)."""
    s.add_argument("--config", metavar="YAML", help=f"config file, e.g. configs/{stage}.yaml (default: the "
                   "config's own defaults, with --set for the rest)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option of the config, e.g. --set max_steps=100 (repeat)")
    s.add_argument("--model", metavar="DIR|tiny",
                   help="the model to train on: a FLUX folder in diffusers format or 'tiny' (the embedded demo "
                        "model); same as --set model=... (default: the config's)")
    s.add_argument("--adapter", metavar="DIR",
                   help="adapter folder to start from, e.g. an SFT run's adapter/ for DPO; same as --set "
                        "adapter=... (default: the config's)")
    if stage == "dpo":  # SFT reads the embeddings that build-sft stored
        s.add_argument("--faces", choices=["dlib", "insightface"], default="dlib",
                       help="face backend of the identity embeddings; references for which the export holds no "
                            "embedding of this backend are embedded again")
        s.add_argument("--face-root", metavar="DIR", help="insightface: folder that holds models/<pack>/")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, with --model and --adapter as ``model=`` / ``adapter=`` before them."""
    shortcuts = [f"{key}={value}" for key, value in (("model", args.model), ("adapter", args.adapter)) if value]
    return [*shortcuts, *args.set]


def _load_model(config, face_analyzer=None):
    """(denoiser, vae, encode_prompt) for ``config.model``: the frozen transformer, text encoders and VAE in the
    compute dtype of ``config.mixed_precision``, the adapter in float32; ``encode_prompt`` is a
    ``PromptEmbedder`` (each prompt embedded once when ``config.cache_prompt_embeds``), on the CPU until the
    trainer gives it its device."""
    import torch

    from idglow.adapter import IdGlowAdapter
    from idglow.errors import InputError
    from idglow.loading import load_flux_pipeline
    from idglow.training.caching import PromptEmbedder
    from idglow.training.modeling import IdGlowDenoiser
    from idglow.training.trainer import FROZEN_DTYPES

    if config.model == TINY:  # the tiny model is always built from one seed, whatever the run's seed, so that an
        seed = 0              # adapter trained on it fits the tiny model of `idglow generate --model tiny`
    else:
        seed = config.seed
    if config.model == "synthetic":
        raise InputError("model 'synthetic' is trained by the tests and benchmarks (see idglow.training."
                         "synthetic_runs), not from the command line")
    pipe = load_flux_pipeline(config.model, dtype=FROZEN_DTYPES[config.mixed_precision], adapter_dir=config.adapter,
                              adapter_dtype=torch.float32, face_analyzer=face_analyzer, seed=seed)
    if pipe.adapter is None:
        dim = face_analyzer.embedding_dim if face_analyzer is not None else 512
        pipe.adapter = IdGlowAdapter.from_transformer(pipe.transformer, id_dim=dim)
    if config.lora:
        pipe.load_lora_weights(config.lora)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    model = IdGlowDenoiser(pipe.transformer, pipe.adapter, guidance_scale=config.guidance_scale)
    encode_prompt = PromptEmbedder(pipe, "cpu", config.max_sequence_length,
                                   cache=config.cache_prompt_embeds)
    return model, pipe.vae, encode_prompt


def run(args: argparse.Namespace) -> int:
    """``idglow train sft|dpo``: run one training stage; returns the exit code."""
    from idglow.errors import InputError
    from idglow.training.config import DPOConfig, SFTConfig
    from idglow.training.trainer import DPOTrainer, SFTTrainer

    config_cls = SFTConfig if args.stage == "sft" else DPOConfig
    config = config_cls.from_yaml(args.config, config_overrides(args))
    if not config.train_data:
        raise InputError("train_data is not set (in the config or with --set train_data=...)")
    if args.stage == "sft":
        from idglow.training.files import SFTFolderDataset

        dataset = SFTFolderDataset(config.train_data, resolution=config.resolution, seed=config.seed)
        model, vae, encode_prompt = _load_model(config)
        trainer = SFTTrainer(config, model, dataset, vae=vae, encode_prompt=encode_prompt)
    else:
        from idglow.loading import ModelSettings, load_face_analyzer
        from idglow.training.files import PreferenceExportDataset

        analyzer = load_face_analyzer(ModelSettings(faces=args.faces, face_root=args.face_root))
        dataset = PreferenceExportDataset(config.train_data, analyzer, resolution=config.resolution,
                                          split=config.split, use_agreement_as_strength=config.use_agreement_as_strength,
                                          missing_strength=config.missing_strength)
        model, vae, encode_prompt = _load_model(config, analyzer)
        trainer = DPOTrainer(config, model, dataset, vae=vae, encode_prompt=encode_prompt)
    encode_prompt.device = trainer.device  # known once the trainer's Accelerator exists
    if config.cache_prompt_embeds:
        from idglow.training.caching import dataset_prompts

        encode_prompt.precompute(dataset_prompts(dataset))
    out = trainer.train()
    path = trainer.save_model()
    trainer.end_processes()
    if trainer.accelerator.is_main_process:
        last = out.log_history[-1]["loss"] if out.log_history else float("nan")
        print(f"trained {out.global_step} steps (last loss {last:.5f}); adapter written to {path / 'adapter'}")
    return 0
