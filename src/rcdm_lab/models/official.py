"""Official RCDM / guided-diffusion MODEL_FLAGS -> our UNet, and loading released checkpoints."""

from __future__ import annotations

import os
import pickle
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.models.unet import UNetModel, unet_out_channels
from rcdm_lab.state_dicts import compare_state_dicts

# guided-diffusion's model_and_diffusion_defaults() for the flags that shape the UNet (+ RCDM's ssl_dim).
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "ssl_dim": 2048,
}

# MODEL_FLAGS_128 of the official README: every released RCDM checkpoint (trunk features: 2048-d).
OFFICIAL_128_FLAGS: dict[str, Any] = {
    "attention_resolutions": "32,16,8",
    "class_cond": False,
    "diffusion_steps": 1000,
    "image_size": 128,
    "learn_sigma": True,
    "noise_schedule": "linear",
    "num_channels": 256,
    "num_heads": 4,
    "num_res_blocks": 2,
    "resblock_updown": True,
    "use_fp16": False,
    "use_scale_shift_norm": True,
    "ssl_dim": 2048,
}

# Flags of the official scripts that do not change the UNet: accepted so pasted command lines just work.
IGNORED_FLAGS = frozenset(
    {
        "class_cond", "feat_cond", "G_shared", "pretrained", "use_fp16", "use_checkpoint",
        "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart",
        "rescale_timesteps", "rescale_learned_sigmas", "use_ddim", "clip_denoised", "num_samples",
        "lr", "batch_size", "microbatch", "weight_decay", "ema_rate", "lr_anneal_steps", "log_interval",
        "save_interval", "resume_checkpoint", "fp16_scale_growth", "schedule_sampler",
        "data_dir", "out_dir", "model_path", "type_model", "use_head", "num_images", "image_path",
        "first_image_path", "second_image_path", "folder_nn_path", "image_target_path", "dist",
        "nodes", "ngpus", "use_volta32", "timeout", "partition", "job_dir", "comment",
    }
)  # fmt: skip

_DEFAULT_CHANNEL_MULT = {
    64: (1, 2, 3, 4),
    128: (1, 1, 2, 3, 4),
    256: (1, 1, 2, 2, 4, 4),
    512: (0.5, 1, 1, 2, 2, 4, 4),
}


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """guided-diffusion's channel multipliers for its supported image sizes."""
    if image_size not in _DEFAULT_CHANNEL_MULT:
        raise RCDMError(
            f"no default channel_mult for image_size={image_size} (known: "
            f"{', '.join(map(str, _DEFAULT_CHANNEL_MULT))}): pass channel_mult explicitly, e.g. '1,2,2,2'"
        )
    return _DEFAULT_CHANNEL_MULT[image_size]


def parse_flag_string(text: str) -> dict[str, Any]:
    """``"--num_channels 256 --learn_sigma True --feat_cond"`` -> {name: value-string or True}."""
    tokens = shlex.split(text)
    flags: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise RCDMError(f"cannot read {token!r} in the flag string: write flags as '--name value'")
        name = token[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value, i = tokens[i + 1], i + 2
        else:
            value, i = True, i + 1  # bare switch such as --feat_cond
        flags[name] = value
    return flags


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "t", "y", "1"):
        return True
    if text in ("no", "false", "f", "n", "0"):
        return False
    raise RCDMError(f"flag {name}={value!r} is not a boolean: use True or False")


def _to_number(name: str, value: Any, kind: type) -> Any:
    try:
        number = float(value)
        if kind is int and not number.is_integer():
            raise ValueError
        return kind(number)
    except (TypeError, ValueError) as err:
        raise RCDMError(f"flag {name}={value!r} is not a{'n integer' if kind is int else ' number'}") from err


def _to_numbers(name: str, value: Any) -> list[float]:
    items = str(value).split(",") if isinstance(value, str | int | float) else list(value)
    numbers = [_to_number(name, item, float) for item in items if str(item).strip()]
    return [int(n) if n.is_integer() else n for n in numbers]


def unet_kwargs_from_flags(flags: Mapping[str, Any] | str) -> dict[str, Any]:
    """Official MODEL_FLAGS (a mapping, or the pasted ``--name value`` string) -> UNetModel kwargs."""
    given = parse_flag_string(flags) if isinstance(flags, str) else {str(k): v for k, v in flags.items()}
    unknown = sorted(set(given) - set(OFFICIAL_DEFAULTS) - IGNORED_FLAGS)
    if unknown:
        raise RCDMError(
            f"unknown flag(s) {', '.join(unknown)}: the UNet understands "
            f"{', '.join(sorted(OFFICIAL_DEFAULTS))} (other official script flags are ignored)"
        )
    if "class_cond" in given and _to_bool("class_cond", given["class_cond"]):
        raise RCDMError("class_cond=True is not supported: RCDM conditions on representations; drop --class_cond")
    f = {**OFFICIAL_DEFAULTS, **{k: v for k, v in given.items() if k in OFFICIAL_DEFAULTS}}

    image_size = _to_number("image_size", f["image_size"], int)
    channel_mult = _to_numbers("channel_mult", f["channel_mult"]) or list(default_channel_mult(image_size))
    return {
        "image_size": image_size,
        "in_channels": 3,
        "model_channels": _to_number("num_channels", f["num_channels"], int),
        "out_channels": unet_out_channels(_to_bool("learn_sigma", f["learn_sigma"])),
        "num_res_blocks": _to_number("num_res_blocks", f["num_res_blocks"], int),
        "attention_resolutions": [int(r) for r in _to_numbers("attention_resolutions", f["attention_resolutions"])],
        "dropout": _to_number("dropout", f["dropout"], float),
        "channel_mult": channel_mult,
        "num_heads": _to_number("num_heads", f["num_heads"], int),
        "num_head_channels": _to_number("num_head_channels", f["num_head_channels"], int),
        "num_heads_upsample": _to_number("num_heads_upsample", f["num_heads_upsample"], int),
        "use_scale_shift_norm": _to_bool("use_scale_shift_norm", f["use_scale_shift_norm"]),
        "resblock_updown": _to_bool("resblock_updown", f["resblock_updown"]),
        "use_new_attention_order": _to_bool("use_new_attention_order", f["use_new_attention_order"]),
        "ssl_dim": _to_number("ssl_dim", f["ssl_dim"], int),
        "cond_mode": "emb",
    }


def _read_state_dict(source: Mapping[str, Tensor] | str | os.PathLike) -> dict[str, Tensor]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise RCDMError(f"no checkpoint at {path}: download the released RCDM .pt file or fix the path")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise RCDMError(f"{path} is not a plain tensor state dict ({err}): pass an official RCDM .pt file") from err
        state = loaded
    else:
        # Copy so the model never aliases (and later trains into) the caller's tensors.
        state = {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in source.items()}
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise RCDMError(
            "the checkpoint is not a state dict of tensors: pass the official RCDM model file "
            "(a training checkpoint's weights live under its 'state_dict' / 'model' key)"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _block_indices(keys: Sequence[str], prefix: str, marker: str = "") -> set[int]:
    return {int(k.split(".")[1]) for k in keys if k.startswith(prefix) and marker in k}


def _flag_hints(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], kwargs: Mapping[str, Any]) -> list[str]:
    """Guess which flags differ from the checkpoint, from the shapes that reveal them."""
    hints = []
    if "time_embed.0.weight" in state and state["time_embed.0.weight"].shape[1] != kwargs["model_channels"]:
        hints.append(f"num_channels={state['time_embed.0.weight'].shape[1]}")
    if "ssl_emb.weight" in state:
        if state["ssl_emb.weight"].shape[1] != kwargs["ssl_dim"]:
            hints.append(f"ssl_dim={state['ssl_emb.weight'].shape[1]}")
    else:
        hints.append("the checkpoint has no ssl_emb, so it is not a representation-conditioned RCDM model")
    if "out.2.weight" in state and state["out.2.weight"].shape[0] != kwargs["out_channels"]:
        hints.append(f"learn_sigma={state['out.2.weight'].shape[0] == unet_out_channels(True)}")
    emb_key, conv_key = "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.3.weight"
    if emb_key in state and conv_key in state and emb_key in expected:
        scale_shift = state[emb_key].shape[0] == 2 * state[conv_key].shape[0]
        if scale_shift != kwargs["use_scale_shift_norm"]:
            hints.append(f"use_scale_shift_norm={scale_shift}")
    for name in ("input_blocks", "output_blocks"):
        if _block_indices(list(state), name) != _block_indices(list(expected), name):
            hints.append("image_size / channel_mult / num_res_blocks (the number of UNet blocks differs)")
            break
    else:
        if _block_indices(list(state), "input_blocks", ".qkv.") != _block_indices(
            list(expected), "input_blocks", ".qkv."
        ):
            hints.append("attention_resolutions (attention sits at other levels)")
        elif any(".skip_connection." in k or ".op." in k or ".conv." in k for k in set(state) ^ set(expected)):
            hints.append("resblock_updown")
    return hints


def _mismatch_report(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], kwargs: Mapping[str, Any]) -> str:
    mismatch = compare_state_dicts(state, expected)
    if not mismatch:
        return ""
    hints = _flag_hints(state, expected, kwargs)
    return (
        "the checkpoint (found) does not fit the UNet built from these flags (expected):"
        + "".join(f"\n  {line}" for line in mismatch.listings())
        + (f"\n  likely cause: {'; '.join(hints)}" if hints else "")
        + "\nPass the MODEL_FLAGS (and ssl_dim) the checkpoint was trained with."
    )


def load_official_unet(
    state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike, flags: Mapping[str, Any] | str
) -> UNetModel:
    """Build the UNet for official ``flags``; load a released RCDM state dict strictly (float32, eval)."""
    kwargs = unet_kwargs_from_flags(flags)
    state = _read_state_dict(state_dict_or_path)
    # Built on meta then assigned the checkpoint's tensors: no 422 M-parameter random init to throw away.
    with torch.device("meta"):
        model = UNetModel(**kwargs)
    report = _mismatch_report(state, model.state_dict(), kwargs)
    if report:
        raise RCDMError(report)
    model.load_state_dict(state, strict=True, assign=True)
    return model.float().eval()
