"""``idglow train sft|dpo --config cfg.yaml [--set key=value ...]``: the two training stages.

Multi-GPU: ``accelerate launch -m idglow train sft --config cfg.yaml``.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the identity adapter (SFT, then DPO)")
    sub = p.add_subparsers(dest="train_command", metavar="STAGE")
    sub.required = True
    for stage, text in (("sft", "supervised fine-tuning on group photos (a `data build-sft` folder)"),
                        ("dpo", "group-level weighted-margin Flow-DPO on the preference export or database")):
        s = sub.add_parser(stage, help=text, description=f"{text}. Options come from the YAML config; "
                           "--set overrides single options.")
        s.add_argument("--config", metavar="YAML", help="config file (see configs/)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an option")
        s.add_argument("--faces", choices=["dlib", "insightface"], default="dlib",
                       help="DPO: face backend that embeds the reference photos")
        s.add_argument("--face-root", metavar="DIR", help="insightface: folder that holds models/<pack>/")
        s.add_argument("--data-dir", metavar="DIR", help="DPO from a database URL: the app's data folder")
        s.set_defaults(func=run, stage=stage)


def _load_model(config, face_analyzer=None):
    """(denoiser, vae, encode_prompt, face_analyzer) for ``config.model``."""
    import torch

    from idglow.adapter import IdGlowAdapter
    from idglow.errors import InputError
    from idglow.training.modeling import IdGlowDenoiser

    if config.model == "synthetic":
        raise InputError("model 'synthetic' is trained by the tests and benchmarks (see idglow.training."
                         "synthetic_runs), not from the command line")
    if config.model == "tiny":
        from idglow.testing import tiny_pipeline

        pipe = tiny_pipeline(seed=config.seed, face_analyzer=face_analyzer)
    else:
        from idglow.pipeline import IdGlowPipeline

        pipe = IdGlowPipeline.from_pretrained(config.model, face_analyzer=face_analyzer,
                                              torch_dtype=torch.float32)
    if config.adapter:
        from idglow.pipeline import check_adapter_folder

        pipe.adapter = IdGlowAdapter.from_pretrained(str(check_adapter_folder(config.adapter)))
    elif pipe.adapter is None:
        dim = face_analyzer.embedding_dim if face_analyzer is not None else 512
        pipe.adapter = IdGlowAdapter.from_transformer(pipe.transformer, id_dim=dim)
    if config.lora:
        pipe.load_lora_weights(config.lora)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    model = IdGlowDenoiser(pipe.transformer, pipe.adapter, guidance_scale=config.guidance_scale)

    def encode_prompt(prompts):
        device = model.transformer.device
        pipe.text_encoder.to(device)
        pipe.text_encoder_2.to(device)
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                                      max_sequence_length=min(config.max_sequence_length,
                                                                              pipe.tokenizer_2.model_max_length))
        return embeds, pooled, text_ids

    return model, pipe.vae, encode_prompt


def run(args: argparse.Namespace) -> int:
    from idglow.errors import InputError
    from idglow.training.config import DPOConfig, SFTConfig
    from idglow.training.trainer import DPOTrainer, SFTTrainer

    config_cls = SFTConfig if args.stage == "sft" else DPOConfig
    config = config_cls.from_yaml(args.config, args.set)
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
                                          missing_strength=config.missing_strength,
                                          data_dir=args.data_dir)
        model, vae, encode_prompt = _load_model(config, analyzer)
        trainer = DPOTrainer(config, model, dataset, vae=vae, encode_prompt=encode_prompt)
    out = trainer.train()
    path = trainer.save_model()
    if trainer.accelerator.is_main_process:
        last = out.log_history[-1]["loss"] if out.log_history else float("nan")
        print(f"trained {out.global_step} steps (last loss {last:.5f}); adapter written to {path / 'adapter'}")
    return 0
