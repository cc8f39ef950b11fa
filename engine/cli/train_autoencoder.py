"""`python -m engine train-autoencoder`: train the embedded model's tiny 8x autoencoder."""

from __future__ import annotations

import time
from pathlib import Path

from engine.api import EngineError
from engine.cli.training_run import add_run_arguments, prepare_run


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-autoencoder",
        help="Train the embedded 8x autoencoder (AutoencoderTiny) on an emoji dataset.")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (engine data)")
    parser.add_argument("--out", type=Path, required=True,
                        help="run folder: checkpoints/, metrics.jsonl, vae/ (the export)")
    parser.add_argument("--steps", type=int, default=12000, help="total optimisation steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--crop", type=int, default=64, help="training crop size (multiple of 8)")
    parser.add_argument("--channels", type=int, default=None,
                        help="channels of every block (default 32, or the run's on --resume)")
    parser.add_argument("--decoder-channels", type=int, default=None,
                        help="channels of every decoder block (default --channels); 16 decodes "
                             "a 128-px frame about 2x faster than 32")
    parser.add_argument("--frozen-encoder", type=Path, default=None,
                        help="train only a decoder against this autoencoder folder's encoder, "
                             "whose latent space and scaling_factor stay (teachers trained on "
                             "it keep working); a decoder as wide as its own starts from it")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--adversarial-weight", type=float, default=None,
                        help="weight of a patch discriminator's hinge loss added to the "
                             "reconstruction loss, for sharper detail (default 0: off; "
                             "the run's own on --resume)")
    parser.add_argument("--discriminator-lr", type=float, default=None,
                        help="the discriminator's learning rate (default 2e-4; the run's own "
                             "on --resume)")
    parser.add_argument("--eval-every", type=int, default=500, help="held-out PSNR interval")
    parser.add_argument("--save-every", type=int, default=250, help="checkpoint interval")
    add_run_arguments(parser, export_help="write vae/ from the last checkpoint and exit")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from engine.embedded.autoencoder import (
        AutoencoderTrainer,
        decode_ms,
        evaluate_reconstructions,
        reconstruction_grid,
    )
    from engine.embedded.checkpoint import MetricsLog, StopFlag, write_json
    from engine.embedded.dataset import load_dataset

    if args.crop % 8 or args.crop < 16:
        raise EngineError("--crop must be a multiple of 8 and at least 16.")
    checkpoints = prepare_run(args)
    architecture_from_run(args, checkpoints)
    if args.frozen_encoder and not (args.frozen_encoder / "config.json").is_file():
        raise EngineError(f"No autoencoder in {args.frozen_encoder} (config.json missing).")
    for flag, value in (("--channels", args.channels), ("--decoder-channels",
                                                        args.decoder_channels)):
        if value is not None and value < 1:
            raise EngineError(f"{flag} must be positive, not {value}.")
    if args.discriminator_lr is None:
        from engine.embedded.decoder_gan import DISCRIMINATOR_LR

        args.discriminator_lr = DISCRIMINATOR_LR
    if (args.adversarial_weight or 0) < 0 or args.discriminator_lr <= 0:
        raise EngineError("--adversarial-weight must be zero or positive and "
                          "--discriminator-lr positive.")
    data = load_dataset(args.data)
    trainer = AutoencoderTrainer(data, channels=args.channels or 32, lr=args.lr,
                                 total_steps=args.steps, batch=args.batch, crop=args.crop,
                                 device=args.device, decoder_channels=args.decoder_channels,
                                 frozen_encoder=args.frozen_encoder,
                                 adversarial_weight=args.adversarial_weight or 0.0,
                                 discriminator_lr=args.discriminator_lr)
    if checkpoints:
        trainer.resume(checkpoints[-1])
        print(f"resumed from {checkpoints[-1]} at step {trainer.step}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "config.json", {**trainer.config, "data": str(args.data)})
    metrics = MetricsLog(args.out)
    all_images = torch.from_numpy(data.images[~data.heldout])

    def finish(save: bool = True) -> None:
        if save:
            trainer.save(args.out)
        info = trainer.export(args.out / "vae", all_images)
        info["heldout_psnr"], info["heldout_sharpness"] = evaluate_reconstructions(
            trainer.ae, trainer.heldout)
        info["decode_ms_batch1"] = decode_ms(trainer.ae.to("cpu"))
        trainer.ae.to(trainer.device)
        write_json(args.out / "vae" / "training.json", info)
        grid = reconstruction_grid(trainer.ae, trainer.heldout)
        Image.fromarray(grid).save(args.out / "reconstructions.png")
        print(f"exported {args.out / 'vae'}: held-out PSNR {info['heldout_psnr']:.2f} dB, "
              f"sharpness {info['heldout_sharpness']:.2f}, "
              f"scaling_factor {info['scaling_factor']:.4f}, "
              f"decode {info['decode_ms_batch1']:.1f} ms")

    if args.export_only:
        finish(save=False)
        return 0
    bar = tqdm(total=args.steps, initial=trainer.step, desc="autoencoder", unit="step")
    started = time.perf_counter()
    first_step = trainer.step
    with StopFlag(args.max_minutes) as stop:
        while trainer.step < args.steps and not stop.requested:
            logs = trainer.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if trainer.step % 50 == 0:
                rate = (trainer.step - first_step) / (time.perf_counter() - started)
                record = {"step": trainer.step, **logs, "it_per_s": rate,
                          "eta_s": (args.steps - trainer.step) / max(rate, 1e-9)}
                if trainer.step % args.eval_every == 0:
                    record["heldout_psnr"], record["heldout_sharpness"] = \
                        evaluate_reconstructions(trainer.ae, trainer.heldout)
                    bar.write(f"step {trainer.step}: held-out PSNR {record['heldout_psnr']:.2f} "
                              f"dB, sharpness {record['heldout_sharpness']:.3f}")
                metrics.write(record)
            if trainer.step % args.save_every == 0:
                trainer.save(args.out)
    bar.close()
    finish()
    return 0


def architecture_from_run(args, checkpoints: list[Path]) -> None:
    """On --resume, channels, decoder channels, the frozen encoder, the adversarial weight and
    the discriminator's lr default to the run's own (config.json), so a resumed decoder-only
    run stays decoder-only."""
    import json

    config_path = args.out / "config.json"
    if not checkpoints or not config_path.is_file():
        return
    saved = json.loads(config_path.read_text())
    if args.channels is None:
        args.channels = saved.get("channels")
    if args.decoder_channels is None:
        args.decoder_channels = saved.get("decoder_channels")
    if args.adversarial_weight is None:
        args.adversarial_weight = saved.get("adversarial_weight", 0.0)
    if args.discriminator_lr is None:
        args.discriminator_lr = saved.get("discriminator_lr")
    if args.frozen_encoder is None and saved.get("frozen_encoder"):
        args.frozen_encoder = Path(saved["frozen_encoder"])
