"""The demo's faithfulness figure of one checkpoint over several sampling seeds, with its EMA or its raw weights.

One demo run prints one number per guidance from 16 conditionings x 8 samples: its sampling noise alone is about
+-0.04. Averaging seeds tells configurations apart.

    python experiments/demo/faithfulness_seeds.py outputs/demo/checkpoints/last.ckpt --seeds 0,1,2 --weights ema,raw
"""

from __future__ import annotations

import argparse

from rcdm_lab.checkpoint import read_checkpoint
from rcdm_lab.metrics.faithfulness import nearest_conditioning_accuracy
from rcdm_lab.trained_run import TrainedRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weights", default="ema", help="ema, raw or ema,raw")
    parser.add_argument("--precision", default="32", help="sampling precision (32: comparable across machines)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    run = TrainedRun.load(args.ckpt)
    pipeline, items = run.pipeline, run.val_items(16)
    states = {"ema": {k: v.clone() for k, v in pipeline.unet.state_dict().items()},
              "raw": {k.removeprefix("unet."): v for k, v in read_checkpoint(args.ckpt).state_dict.items()
                      if k.startswith("unet.")}}
    for weights in args.weights.split(","):
        pipeline.unet.load_state_dict(states[weights])
        line = [f"{args.ckpt} {weights} ddim{args.steps}:"]
        for guidance in (1.0, 8.0):
            scores = []
            for seed in seeds:
                samples = pipeline.sample(items["h"], 8, sampler="ddim", steps=args.steps, guidance=guidance, seed=seed,
                                          precision=args.precision)
                scores.append(nearest_conditioning_accuracy(pipeline.encode((samples + 1) / 2), items["h"], 8))
            line.append(f"guidance {guidance:g}: mean {sum(scores) / len(scores):.3f} "
                        f"({', '.join(f'{s:.3f}' for s in scores)})")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
