"""`python -m engine train-teacher`: train the embedded text+sketch teacher UNet."""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.api import EngineError
from engine.cli.training_run import add_run_arguments, prepare_run


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-teacher",
        help="Train the embedded teacher UNet on AE latents of an emoji dataset (resumable).")
    parser.add_argument("--data", type=Path, required=True,
                        help="dataset folder (engine data emoji) or latent pack (engine data pack)")
    parser.add_argument("--out", type=Path, required=True,
                        help="run folder: cache/, checkpoints/, samples/, metrics.jsonl, model/")
    parser.add_argument("--vae", type=Path, default=None,
                        help="trained autoencoder folder (default: runs/ae/vae, or the run's own)")
    parser.add_argument("--steps", type=int, default=200000, help="stop at this total step")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=500, help="linear LR warm-up steps")
    parser.add_argument("--dedupe-steps", type=int, default=3000,
                        help="leave skin-tone variants out before this step")
    parser.add_argument("--caption-share", type=float, default=None,
                        help="share of examples captioned by the plain emoji name; the rest "
                             "draw one of its phrasings (default 0.3, or the run's own)")
    parser.add_argument("--include-heldout", action="store_true", default=None,
                        help="train on the held-out split too (a model to ship; eval's fd and "
                             "alignment then score training captions)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from this model folder's unet/ (e.g. assets/models/teacher) "
                             "instead of random weights; a new run only")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet (CUDA; minutes of compiling first)")
    parser.add_argument("--save-every", type=int, default=250, help="checkpoint interval")
    parser.add_argument("--sample-every", type=int, default=1000, help="sample grid interval")
    parser.add_argument("--export-every", type=int, default=2000,
                        help="refresh OUT/model (a loadable model folder) at this interval")
    add_run_arguments(parser, export_help="write OUT/model from the last checkpoint and exit")
    parser.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from engine.embedded.checkpoint import MetricsLog, StopFlag, write_json
    from engine.embedded.dataset import load_dataset
    from engine.embedded.export import export_model_folder, write_sample_grid
    from engine.embedded.latents import cached_or_built
    from engine.embedded.pack import check_pack_vae, is_pack, load_pack
    from engine.embedded.phrases import suggestions
    from engine.embedded.teacher import TeacherConfig, TeacherTrainer, parameter_count

    checkpoints = prepare_run(args)
    resuming = bool(checkpoints)
    config_path = args.out / "config.json"
    saved = json.loads(config_path.read_text()) if resuming and config_path.is_file() else {}
    vae_dir = args.vae or Path(saved.get("vae", "runs/ae/vae"))
    if not (vae_dir / "config.json").is_file():
        raise EngineError(f"No trained autoencoder in {vae_dir}; run train-autoencoder or "
                          "pass --vae.")
    pack_dir = None
    if is_pack(args.data):
        check_pack_vae(args.data, vae_dir)
        print("encoding the pack's captions ...", flush=True)
        cache, pack_dir = load_pack(args.data, args.device), args.data
    else:
        print("encoding latents and captions (cached in OUT/cache) ...", flush=True)
        cache = cached_or_built(args.out / "cache", args.data, load_dataset(args.data), vae_dir,
                                args.device)
    if args.init_from and resuming:
        raise EngineError("--init-from starts a new run; drop it with --resume.")
    if args.init_from and not (args.init_from / "unet" / "config.json").is_file():
        raise EngineError(f"No unet/ in {args.init_from}; --init-from takes a model folder.")
    share = args.caption_share if args.caption_share is not None else saved.get(
        "caption_share", TeacherConfig.caption_share)
    if not 0 <= share <= 1:
        raise EngineError(f"--caption-share must be within 0...1, not {share}.")
    config = TeacherConfig(batch=args.batch, lr=args.lr, warmup=args.warmup,
                           dedupe_steps=args.dedupe_steps, caption_share=share,
                           include_heldout=bool(args.include_heldout
                                                or saved.get("include_heldout", False)))
    trainer = TeacherTrainer(cache, config, device=args.device)
    if args.init_from:
        trainer.init_from(args.init_from / "unet")
        print(f"weights from {args.init_from / 'unet'}", flush=True)
    if args.compile:
        trainer.unet.compile()
    if resuming:
        trainer.resume(checkpoints[-1])
        print(f"resumed from {checkpoints[-1]} at step {trainer.step}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, {**config.__dict__,
                             "block_out_channels": list(config.block_out_channels),
                             "vae": str(vae_dir), "data": str(args.data), "device": args.device,
                             "init_from": str(args.init_from or saved.get("init_from") or ""),
                             "unet_parameters": parameter_count(trainer.unet)})

    def export() -> None:
        export_model_folder(trainer.ema, vae_dir, args.out / "model",
                            {"teacher_steps": trainer.step, "batch": config.batch}, pack_dir,
                            prompts=suggestions(trainer.cache.captions))

    if args.export_only:
        export()
        print(f"exported {args.out / 'model'} (EMA weights, step {trainer.step})")
        return 0
    metrics = MetricsLog(args.out)
    bar = tqdm(total=args.steps, initial=trainer.step, desc="teacher", unit="step")
    started, first_step = time.perf_counter(), trainer.step
    with StopFlag(args.max_minutes) as stop:
        while trainer.step < args.steps and not stop.requested:
            logs = trainer.train_step()
            bar.update(1)
            step = trainer.step
            if step % 50 == 0 or step == first_step + 1:  # the only host syncs on a GPU
                logs = {k: float(v) for k, v in logs.items()}
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                rate = (step - first_step) / (time.perf_counter() - started)
                metrics.write({"step": step, **logs, "it_per_s": rate,
                               "eta_s": (args.steps - step) / max(rate, 1e-9)})
            if step % args.save_every == 0:
                trainer.save(args.out)
            if step % args.sample_every == 0:
                path = write_sample_grid(trainer, vae_dir, args.out / "samples")
                bar.write(f"step {step}: samples in {path}")
            if step % args.export_every == 0:
                export()
    bar.close()
    trainer.save(args.out)
    export()
    print(f"stopped at step {trainer.step}; checkpoint and {args.out / 'model'} written")
    return 0
