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
    config = TeacherConfig(batch=args.batch, lr=args.lr, warmup=args.warmup,
                           dedupe_steps=args.dedupe_steps)
    trainer = TeacherTrainer(cache, config, device=args.device)
    if resuming:
        trainer.resume(checkpoints[-1])
        print(f"resumed from {checkpoints[-1]} at step {trainer.step}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, {**config.__dict__,
                             "block_out_channels": list(config.block_out_channels),
                             "vae": str(vae_dir), "data": str(args.data), "device": args.device,
                             "unet_parameters": parameter_count(trainer.unet)})

    def export() -> None:
        export_model_folder(trainer.ema, vae_dir, args.out / "model",
                            {"teacher_steps": trainer.step, "batch": config.batch}, pack_dir,
                            prompts=trainer.cache.captions)

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
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            step = trainer.step
            if step % 50 == 0:
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
