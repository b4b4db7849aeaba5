"""Training throughput of the UNet + hybrid loss at a given config (no data loading: cached h is free).

    python benchmarks/train_step.py                      # the demo's model, batch 32, precision from the hardware
    python benchmarks/train_step.py --channels 64 --res-blocks 2 --resblock-updown --precision 32   # model=adm
"""

from __future__ import annotations

import argparse
import time

import torch

from rcdm_lab.diffusion import build_diffusion
from rcdm_lab.models import UNetModel
from rcdm_lab.precision import announce, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--res-blocks", type=int, default=1)
    parser.add_argument("--channel-mult", default="1,2,2")
    parser.add_argument("--attention", default="8")
    parser.add_argument("--resblock-updown", action=argparse.BooleanOptionalAction, default=False,
                        help="ADM's ResBlock down/upsampling (the demo turns it off for CPU speed)")
    parser.add_argument("--ssl-dim", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="auto (rcdm_lab.precision: bf16 only where native), 32, "
                        "bf16-mixed")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--channels-last", action="store_true", help="UNet weights and inputs in channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (compile time reported)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = announce(resolve_precision(args.precision, "cpu"))
    torch.manual_seed(0)
    unet = UNetModel(image_size=args.resolution, model_channels=args.channels, num_res_blocks=args.res_blocks,
                     channel_mult=[int(m) for m in args.channel_mult.split(",")],
                     attention_resolutions=[int(a) for a in args.attention.split(",") if a],
                     resblock_updown=args.resblock_updown, ssl_dim=args.ssl_dim, learn_null_cond=True)
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    model = torch.compile(unet) if args.compile else unet
    diffusion = build_diffusion()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x0 = torch.rand(args.batch, 3, args.resolution, args.resolution) * 2 - 1
    if args.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    h = torch.randn(args.batch, args.ssl_dim)

    def step() -> None:
        t = torch.randint(0, diffusion.num_timesteps, (args.batch,))
        noise = torch.randn_like(x0)
        x_t = diffusion.q_sample(x0, t, noise)
        with torch.autocast("cpu", dtype=precision.autocast_dtype, enabled=precision.autocast_dtype is not None):
            out = model(x_t, t, feat=h, drop_cond=torch.rand(args.batch) < 0.15)
        loss = diffusion.training_losses(out, x0, x_t, t, noise)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    first = time.perf_counter()
    step()
    first = time.perf_counter() - first
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"UNet {params:.2f} M params, {args.resolution}px, batch {args.batch}, precision {precision.value}, "
          f"threads {torch.get_num_threads()}, channels_last {args.channels_last}, compile {args.compile}: "
          f"{seconds * 1000:.0f} ms/step, {args.batch / seconds:.1f} img/s; first step {first:.1f} s")


if __name__ == "__main__":
    main()
